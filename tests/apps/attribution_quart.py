"""Quart for the attribution tests: Quart runs every handler in a task of its own, so every
stall of a Quart app is work a request handed to another task."""

from __future__ import annotations

from quart import Quart, request

from stallwatch import StallwatchMiddleware

from . import common

SETTINGS = common.settings()
STATE = common.State()

quart_app = Quart(__name__)


@quart_app.route("/shape/direct")
async def direct() -> dict[str, float]:
    return {"blocked": common.block_sleep(float(request.args["seconds"]))}


@quart_app.route("/items/<int:item_id>")
async def item(item_id: int) -> dict[str, int]:
    await common.wait_item(STATE, float(request.args.get("delay", "0")))
    return {"item_id": item_id}


@quart_app.route("/state")
async def state() -> dict[str, object]:
    return {"waiting": STATE.waiting, "fired": [], "probe": common.probe()}


@quart_app.route("/stalls")
async def stalls() -> list[dict[str, object]]:
    return common.stalls()


app = StallwatchMiddleware(
    quart_app,
    registry=SETTINGS.registry,
    stall_threshold=SETTINGS.stall_threshold,
    metrics_path="/metrics",
)
