"""Datasette under stallwatch, named by the ``route_resolver`` that docs/routes.md shows.

Datasette routes with its own regular expressions and leaves nothing in the scope, so the
resolver matches the same shapes, in Datasette's order, and returns a template for each.
"""

from __future__ import annotations

import re
import sqlite3
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from datasette.app import Datasette

from stallwatch import StallwatchMiddleware

# -- the resolver of docs/routes.md ------------------------------------------------------------
DATASETTE_ROUTES = [
    (re.compile(r"/(\.jsono?)?$"), "/"),
    (re.compile(r"/favicon\.ico$"), "/favicon.ico"),
    (re.compile(r"/-/static/"), "/-/static/{path}"),
    (re.compile(r"/-/static-plugins/[^/]+/"), "/-/static-plugins/{plugin}/{path}"),
    (re.compile(r"/-/[^/]+$"), "/-/{page}"),  # Datasette's own fixed pages
    (re.compile(r"/[^/.]+\.db$"), "/{database}.db"),
    (re.compile(r"/[^/.]+(\.\w+)?$"), "/{database}"),
    (re.compile(r"/[^/.]+/[^/.]+(\.\w+)?$"), "/{database}/{table}"),
    (re.compile(r"/[^/.]+/[^/]+?/[^/]+?(\.\w+)?$"), "/{database}/{table}/{pks}"),
]


def datasette_routes(scope: MutableMapping[str, Any]) -> str | None:
    path = str(scope["path"])
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    for regex, template in DATASETTE_ROUTES:
        if regex.match(path):
            return template
    return None


# -- end of the resolver -----------------------------------------------------------------------

DB = Path(tempfile.mkdtemp(prefix="stallwatch-datasette-")) / "shop.db"
with sqlite3.connect(DB) as connection:
    connection.execute("create table items (id integer primary key, name text)")
    connection.execute("insert into items (name) values ('apple'), ('pear')")

datasette = Datasette([str(DB)])
app = StallwatchMiddleware(
    datasette.app(), route_resolver=datasette_routes, metrics_path="/metrics"
)
