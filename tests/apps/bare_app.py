"""A bare ASGI 3 callable, no framework, wrapped as ``app = StallwatchMiddleware(bare)``.

It routes by hand and names each route the way Litestar does, in ``scope["path_template"]``,
which is what stallwatch reads when there is no Starlette router. It handles lifespan so it
runs with uvicorn's ``--lifespan on`` and ``off`` alike: with ``off`` the monitor must start
on the first request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

from stallwatch import StallwatchMiddleware

from . import common

SETTINGS = common.settings()
STATE = common.State()
DB = common.Database(SETTINGS.state_dir / "app.sqlite")
BLOCKERS = common.blockers(DB)


async def respond(send: Any, body: object, status: int = 200) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def query(scope: MutableMapping[str, Any]) -> dict[str, str]:
    pairs = (p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    return dict(pairs)


async def bare(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                common.mark_shutdown(SETTINGS)
                await send({"type": "lifespan.shutdown.complete"})
                return
    parts = scope["path"].strip("/").split("/")
    params = query(scope)
    if scope["path"] == "/":
        scope["path_template"] = "/"
        await respond(send, {"ok": True})
    elif scope["path"] == "/state":
        scope["path_template"] = "/state"
        await respond(send, {"waiting": STATE.waiting, "probe": common.probe()})
    elif scope["path"] == "/stalls":
        scope["path_template"] = "/stalls"
        await respond(send, common.stalls())
    elif len(parts) == 2 and parts[0] == "items":
        scope["path_template"] = "/items/{item_id}"
        await common.wait_item(STATE, float(params.get("delay", "0")))
        await respond(send, {"item_id": parts[1]})
    elif len(parts) == 2 and parts[0] == "block" and parts[1] in BLOCKERS:
        scope["path_template"] = "/block/{kind}"
        await respond(send, {"blocked": BLOCKERS[parts[1]](float(params["seconds"]))})
    elif scope["path"] == "/boom":
        scope["path_template"] = "/boom"
        await asyncio.sleep(0)
        raise RuntimeError("boom from the bare app")
    else:
        await respond(send, {"detail": "Not Found"}, 404)


app = StallwatchMiddleware(
    bare,
    registry=SETTINGS.registry,
    stall_threshold=SETTINGS.stall_threshold,
    metrics_path="/metrics",
    metrics_port=SETTINGS.metrics_port,
)
