"""What to do about a line that holds the loop, where the sampled stack shows what the call is.

``hint_for(frames, top)`` looks at what the application's innermost line (``top``) called:

1. the first library frame inside it, when the call went into Python code of a library the
   table knows (``sqlite3``, ``requests``, ``subprocess``, ``pathlib``, ``passlib``, ``json``...);
2. else, when the line itself was running (a C call: ``time.sleep``, a SQLite query,
   ``open``), the calls written on that line, their names resolved through the module's
   imports (``from time import sleep as nap`` makes ``nap(...)`` ``time.sleep``).

No hint when neither says for sure what the call is: a wrong hint costs more than none. The
one inference: a DB-API call (``.execute(``, ``.fetchone(``...) on a line whose module
imports ``sqlite3`` and no other database driver is taken for a SQLite query.

Pure functions of the frames and the source text; the source is read through ``linecache``
and each module's imports are parsed once (``IMPORTS_CACHE`` modules at most).
"""

from __future__ import annotations

import ast
import linecache
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from ..events import Frame, StallEvent
from .hint_table import (
    CPU,
    FILE_IO,
    HASHING,
    HTTP,
    MODULES,
    SLEEP,
    SQLITE,
    SUBPROCESS,
    Hint,
    library_module,
)

__all__ = ["Hint", "Imports", "event_hint", "hint_for", "library_module", "parse_imports"]


def _httpx(inner: Sequence[Frame]) -> Hint | None:
    # httpx has both clients in the same files: only the synchronous one blocks.
    for frame in inner:
        module = library_module(frame.filename) or ""
        if module == "httpx/_api.py" or module.startswith("httpcore/_sync/"):
            return HTTP
    return None


def _from_library(first: Frame, inner: Sequence[Frame]) -> Hint | None:
    module = library_module(first.filename)
    if module is None:
        return None
    if module.startswith("httpx/"):
        return _httpx(inner)
    for prefix, hint in MODULES:
        if module == prefix or (prefix.endswith("/") and module.startswith(prefix)):
            return hint if isinstance(hint, Hint) else hint(first.function)
    return None


# -- 2. the calls written on the line ------------------------------------------------------------

_CALLS: Mapping[str, Hint] = {
    "time.sleep": SLEEP,
    "sqlite3.connect": SQLITE,
    "os.system": SUBPROCESS,
    "os.popen": SUBPROCESS,
    "os.wait": SUBPROCESS,
    "os.waitpid": SUBPROCESS,
    "subprocess.run": SUBPROCESS,
    "subprocess.call": SUBPROCESS,
    "subprocess.check_call": SUBPROCESS,
    "subprocess.check_output": SUBPROCESS,
    "builtins.open": FILE_IO,
    "io.open": FILE_IO,
    "hashlib.pbkdf2_hmac": HASHING,
    "hashlib.scrypt": HASHING,
    "bcrypt.hashpw": HASHING,
    "bcrypt.checkpw": HASHING,
    "bcrypt.kdf": HASHING,
    "pickle.dumps": CPU,
    "pickle.loads": CPU,
    "json.dumps": CPU,
    "json.loads": CPU,
    **{
        f"os.{name}": FILE_IO
        for name in [
            "read",
            "write",
            "pread",
            "pwrite",
            "open",
            "stat",
            "lstat",
            "fstat",
            "listdir",
            "scandir",
            "fsync",
            "fdatasync",
            "remove",
            "unlink",
            "rename",
            "replace",
            "mkdir",
            "rmdir",
            "sendfile",
            "truncate",
            "ftruncate",
        ]
    },
}

DB_CALLS = frozenset(
    [
        "execute",
        "executemany",
        "executescript",
        "fetchone",
        "fetchall",
        "fetchmany",
        "commit",
        "rollback",
        "backup",
    ]
)
"""DB-API calls: a SQLite query when the module's only database driver is ``sqlite3``."""

OTHER_DRIVERS = frozenset(
    [
        "psycopg",
        "psycopg2",
        "pymysql",
        "MySQLdb",
        "mysql",
        "cx_Oracle",
        "oracledb",
        "pyodbc",
        "duckdb",
        "sqlalchemy",
        "aiosqlite",
        "asyncpg",
        "aiomysql",
        "aiopg",
        "databases",
        "peewee",
        "pony",
        "tortoise",
        "sqlmodel",
        "apsw",
        "pysqlite3",
        "sqlcipher3",
        "pymssql",
        "ibm_db",
        "snowflake",
        "clickhouse_driver",
        "cassandra",
    ]
)

_STRING = re.compile(r"""(['"])(?:\\.|(?!\1).)*\1""")
_CALL = re.compile(r"(?<![\w.])([A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)*)\s*\(")
_METHOD = re.compile(r"\.\s*([A-Za-z_]\w*)\s*\(")


@dataclass(frozen=True, slots=True)
class Imports:
    """A module's imports: local name -> what it stands for (``nap`` -> ``time.sleep``)."""

    names: Mapping[str, str]
    modules: frozenset[str]
    """Top-level packages imported anywhere in the module."""


NO_IMPORTS = Imports({}, frozenset())


def parse_imports(source: str) -> Imports:
    """The imports of a module's source, wherever they stand in it (functions included)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return NO_IMPORTS
    names: dict[str, str] = {}
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                modules.add(alias.name.split(".")[0])
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module.split(".")[0])
            for alias in node.names:
                if alias.name != "*":
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return Imports(names, frozenset(modules))


IMPORTS_CACHE = 512
"""Modules whose imports are remembered (parsed once each)."""


@lru_cache(maxsize=IMPORTS_CACHE)
def module_imports(filename: str) -> Imports:
    """The imports of the module in ``filename``, read through ``linecache``."""
    return parse_imports("".join(linecache.getlines(filename)))


def _qualified(dotted: str, imports: Imports) -> str:
    parts = [p.strip() for p in dotted.split(".")]
    head = imports.names.get(parts[0])
    if head is None:
        return "builtins." + dotted if len(parts) == 1 else ".".join(parts)
    return ".".join([head, *parts[1:]])


def _from_line(line: str, imports: Imports) -> Hint | None:
    code = _STRING.sub("''", line).split("#", 1)[0]  # strings first: a '#' in one is no comment
    for match in _CALL.finditer(code):
        hint = _CALLS.get(_qualified(match.group(1), imports))
        if hint is not None:
            return hint
    if (
        "sqlite3" in imports.modules
        and not imports.modules & OTHER_DRIVERS
        and not re.search(r"\bawait\b", code)
        and any(m.group(1) in DB_CALLS for m in _METHOD.finditer(code))
    ):
        return SQLITE
    return None


# -- the table's one entry point ---------------------------------------------------------------


def hint_for(
    frames: Sequence[Frame],
    top: Frame | None,
    *,
    line: Callable[[str, int], str] = linecache.getline,
    imports: Callable[[str], Imports] = module_imports,
) -> Hint | None:
    """The hint for a sampled stack (outermost frame first) whose innermost frame of the
    application's code is ``top``; None when stallwatch is not sure what the call is."""
    if top is None:
        return None
    index = next((i for i in range(len(frames) - 1, -1, -1) if frames[i] == top), None)
    if index is None:
        return None
    inner = frames[index + 1 :]
    if inner:
        return _from_library(inner[0], inner)
    text = line(top.filename, top.lineno)
    if not text.strip():
        return None
    return _from_line(text, imports(top.filename))


def event_hint(event: StallEvent) -> Hint | None:
    """The hint for a stall: from its most frequent stack, whose top frame names its line."""
    if not event.stacks or event.top_frame is None:
        return None
    return hint_for(event.stacks[0].frames, event.top_frame)
