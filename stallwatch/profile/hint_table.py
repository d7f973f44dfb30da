"""The fix table: what each blocking call is, and what to do instead (``hints.py`` decides
which entry a sampled stack shows, if any), and where the libraries' files lie.

Data and one path rule; no decision is made here.
"""

from __future__ import annotations

import functools
import os
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Hint:
    """A fix for a kind of blocking call, as shown beside the line."""

    kind: str
    """``sqlite3``, ``file-io``, ``http``, ``network``, ``sleep``, ``subprocess``,
    ``hashing`` or ``cpu``: stable names for tools."""
    call: str
    """What the call was recognised as."""
    advice: str

    def __str__(self) -> str:
        return f"{self.call}: {self.advice}"

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "call": self.call, "advice": self.advice, "text": str(self)}


# The fixes' recurring phrases, each written once.
_THREAD = "`await asyncio.to_thread(...)`"
_EXECUTOR = "`loop.run_in_executor(...)`"
_POOL = "`loop.run_in_executor(ProcessPoolExecutor(), ...)`"

# Calls that wait: their async twin, or a thread, frees the loop.
SLEEP = Hint("sleep", "time.sleep", "`await asyncio.sleep(...)`")
SUBPROCESS = Hint("subprocess", "subprocess", "`await asyncio.create_subprocess_exec(...)`")
HTTP = Hint("http", "blocking HTTP client", "use `httpx.AsyncClient`")
SQLITE = Hint("sqlite3", "sqlite3 query", f"{_THREAD} or {_EXECUTOR} it, or use aiosqlite")
FILE_IO = Hint("file-io", "file I/O", f"{_THREAD} it, or use `anyio.Path`")
NETWORK = Hint(
    "network",
    "blocking socket call",
    "use asyncio streams (`await asyncio.open_connection(...)`) or `await loop.getaddrinfo(...)`",
)
# Work that runs on a CPU: a thread helps only where the GIL is let go.
HASHING = Hint(
    "hashing", "password hashing (releases the GIL)", f"{_THREAD}: a thread runs it beside the loop"
)
HASHING_MAYBE = Hint(
    "hashing",
    "password hashing",
    "a thread helps only where the hash releases the GIL (bcrypt, argon2, hashlib's "
    f"pbkdf2_hmac and scrypt do); otherwise a process pool, {_POOL}",
)
CPU = Hint(
    "cpu",
    "CPU work that keeps the GIL",
    f"a thread will not help (it waits for the same GIL); a process pool will, {_POOL}",
)

# -- 1. the library the line called into ---------------------------------------------------------

_PATHLIB_IO = frozenset(
    [
        "read_text",
        "read_bytes",
        "write_text",
        "write_bytes",
        "open",
        "stat",
        "lstat",
        "exists",
        "is_file",
        "is_dir",
        "is_symlink",
        "is_mount",
        "iterdir",
        "glob",
        "rglob",
        "walk",
        "mkdir",
        "rmdir",
        "unlink",
        "rename",
        "replace",
        "touch",
        "resolve",
        "samefile",
        "chmod",
        "lchmod",
        "owner",
        "group",
        "readlink",
        "symlink_to",
        "hardlink_to",
    ]
)
_OS_PATH_IO = frozenset(
    [
        "exists",
        "lexists",
        "isfile",
        "isdir",
        "islink",
        "ismount",
        "getsize",
        "getmtime",
        "getatime",
        "getctime",
        "samefile",
        "sameopenfile",
        "realpath",
    ]
)
_OS_IO = frozenset(["walk", "fwalk", "makedirs", "removedirs", "renames"])

MODULES: tuple[tuple[str, Hint | Callable[[str], Hint | None]], ...] = (
    # (module path prefix, the hint or a function of the called function's name)
    ("sqlite3/", SQLITE),
    ("requests/", HTTP),
    ("urllib3/", HTTP),
    ("urllib/request.py", HTTP),
    ("http/client.py", HTTP),
    ("httplib2/", HTTP),
    ("socket.py", NETWORK),
    ("smtplib.py", NETWORK),
    ("ftplib.py", NETWORK),
    ("subprocess.py", SUBPROCESS),
    ("os.py", lambda f: SUBPROCESS if f == "popen" else FILE_IO if f in _OS_IO else None),
    ("pathlib.py", lambda f: FILE_IO if f in _PATHLIB_IO else None),
    ("posixpath.py", lambda f: FILE_IO if f in _OS_PATH_IO else None),
    ("ntpath.py", lambda f: FILE_IO if f in _OS_PATH_IO else None),
    ("genericpath.py", lambda f: FILE_IO if f in _OS_PATH_IO else None),
    ("shutil.py", FILE_IO),
    ("glob.py", FILE_IO),
    ("tempfile.py", FILE_IO),
    ("fileinput.py", FILE_IO),
    ("bcrypt/", HASHING),
    ("argon2/", HASHING),
    ("passlib/", HASHING_MAYBE),
    ("json/", CPU),
    ("re/", CPU),
    ("re.py", CPU),
    ("sre_compile.py", CPU),
    ("sre_parse.py", CPU),
    ("copy.py", lambda f: CPU if f in ("deepcopy", "_deepcopy_dict", "_deepcopy_list") else None),
    ("difflib.py", CPU),
    ("xml/etree/", CPU),
)

_SITE_MARKERS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")


@functools.cache
def _stdlib() -> tuple[str, ...]:
    """The standard library's folders, longest first; asked of ``sysconfig`` on first use,
    not at import (importing stallwatch loads nothing but prometheus-client)."""
    paths = sysconfig.get_paths()
    return tuple(
        sorted(
            {
                os.path.join(os.path.realpath(paths[key]), "")
                for key in ("stdlib", "platstdlib")
                if key in paths
            },
            key=len,
            reverse=True,
        )
    )


def library_module(filename: str, stdlib: Sequence[str] | None = None) -> str | None:
    """A library file's path inside its library folder, ``/``-separated (``requests/api.py``,
    ``urllib/request.py``, ``subprocess.py``), or None for anything else."""
    for marker in _SITE_MARKERS:
        _, found, rest = filename.partition(marker)
        if found:
            return rest.replace(os.sep, "/")
    for root in _stdlib() if stdlib is None else stdlib:
        if filename.startswith(root):
            return filename[len(root) :].replace(os.sep, "/")
    return None
