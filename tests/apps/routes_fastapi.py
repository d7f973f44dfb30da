"""One FastAPI ``APIRouter`` included twice into a sub-application mounted under two prefixes
(one of them parameterised), and included once more at the top, for the route-naming tests."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from stallwatch import StallwatchMiddleware

items = APIRouter()


@items.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


api = FastAPI()
api.include_router(items, prefix="/v1")
api.include_router(items, prefix="/v2")

app = FastAPI()


@app.get("/")
async def root() -> dict[str, bool]:
    return {"ok": True}


app.include_router(items, prefix="/direct")
app.mount("/api", api)
app.mount("/tenants/{tenant}", api)
app.mount("/static", StaticFiles(directory=Path(__file__).parent))
app.add_middleware(StallwatchMiddleware, metrics_path="/metrics")
