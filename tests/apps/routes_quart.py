"""A Quart app whose routes stallwatch names by their URL rules, with no user code."""

from __future__ import annotations

from quart import Quart

from stallwatch import StallwatchMiddleware

quart_app = Quart(__name__)


@quart_app.route("/")
async def root() -> str:
    return "ok"


@quart_app.route("/items/<int:item_id>")
async def read_item(item_id: int) -> str:
    return str(item_id)


@quart_app.route("/dir/")
async def directory() -> str:
    return "dir"


@quart_app.route("/only-post", methods=["POST"])
async def only_post() -> str:
    return "posted"


app = StallwatchMiddleware(quart_app, metrics_path="/metrics")
