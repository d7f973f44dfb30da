"""Which files are the application's, so that a stall or a profile sample names a line of it.

Apart from ``sampling`` (which reads stacks) because the rule is a policy of its own, with
its own option: ``in_app_include`` is checked here for ``options.MonitorOptions`` too. The
rule is by path: a file under the standard library, any ``site-packages`` or
``dist-packages`` folder, or stallwatch's own package folder (found from this module's
place in it, one floor down in ``stall/``) is a library's, anything else the app's.

``AppFiles`` owns the decisions: one per filename, kept in ``decided``, a dict that the
watchdog thread (naming a stall's or a sample's line) and the loop thread (the task
factory's ``started_by``) both read and fill. Each key always gets the same value whichever
thread writes it, so no lock is needed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from collections.abc import Sequence

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The stallwatch package folder (this module lives one floor down, in ``stall/``)."""

_SELF_TEST = os.path.join(
    os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "__main__.py"
)
"""``python -m stallwatch`` blocks the loop from inside the package, on purpose."""


def library_roots() -> tuple[str, ...]:
    """Folders whose files are not the application's: the standard library, every
    ``site-packages`` or ``dist-packages`` folder on ``sys.path``, and stallwatch itself."""
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    roots.add(_PACKAGE)
    return tuple(sorted({_folder(r) for r in roots}))


def resolve_in_app(entries: object) -> tuple[str, ...]:
    """Validates the ``in_app_include`` option and resolves it to real paths.

    An entry is an importable package or module (``"datasette"``, ``"myco.api"``), found
    without importing it where Python allows (a dotted name imports its parents), or an
    existing folder or file. Folders come back with a trailing separator, files without;
    resolving a resolved tuple gives it back unchanged.
    """
    if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence):
        raise TypeError(
            f"in_app_include must be a tuple of package names or folders, got {entries!r}"
        )
    resolved: dict[str, None] = {}
    for entry in entries:
        if not isinstance(entry, str):
            raise TypeError(f"in_app_include entries must be str, got {entry!r}")
        for path in _resolve_entry(entry):
            resolved[path] = None
    return tuple(resolved)


def _resolve_entry(entry: str) -> list[str]:
    problem = "is neither an importable package nor an existing folder"
    if entry and os.sep not in entry and all(part.isidentifier() for part in entry.split(".")):
        try:
            spec = importlib.util.find_spec(entry)
        except Exception as exc:  # a parent package failed to import, or has no spec
            spec = None
            problem = f"could not be looked up ({exc!r}) and is not an existing folder"
        if spec is not None:
            if spec.submodule_search_locations:
                return [_folder(p) for p in spec.submodule_search_locations]
            if spec.origin and os.path.isfile(spec.origin):
                return [os.path.realpath(spec.origin)]
            problem = "is a module without files (built-in or frozen)"
    path = os.path.realpath(os.path.expanduser(entry)) if entry else ""
    if path and os.path.isdir(path):
        return [_folder(path)]
    if path and os.path.isfile(path):
        return [path]
    raise ValueError(f"in_app_include: {entry!r} {problem}")


def _folder(path: str) -> str:
    return os.path.join(os.path.realpath(path), "")


class AppFiles:
    """Tells the application's files from the rest, each file decided once.

    A file is the application's unless it lies under a library root (see ``library_roots``);
    ``in_app_include`` (see ``resolve_in_app``) names packages or folders that are the
    application's even there. When both a root and an entry contain a file, the deeper of the
    two decides: ``in_app_include=("/srv/app",)`` keeps ``/srv/app/.venv/.../site-packages``
    a library, and ``("datasette",)`` makes Datasette's folder in site-packages the app.
    """

    def __init__(self, in_app_include: tuple[str, ...] = ()) -> None:
        self.in_app_include = resolve_in_app(in_app_include)
        self._roots = library_roots()
        self._app_folders = tuple(p for p in self.in_app_include if p.endswith(os.sep))
        self._app_files = frozenset(p for p in self.in_app_include if not p.endswith(os.sep))
        self.decided: dict[str, bool] = {}
        """Filename to whether it is the app's: read directly on hot paths, filled by
        ``is_app``."""

    def is_app(self, filename: str) -> bool:
        """Whether a frame from this file is the application's code (decided once per file)."""
        known = self.decided.get(filename)
        if known is None:
            known = self.decided[filename] = self._decide(filename)
        return known

    def _decide(self, filename: str) -> bool:
        if filename.startswith("<"):  # <frozen ...>, <string>, the cut marker
            return False
        real = os.path.realpath(filename)
        if real in self._app_files or real == _SELF_TEST:
            return True
        app = max((len(p) for p in self._app_folders if real.startswith(p)), default=-1)
        library = max((len(p) for p in self._roots if real.startswith(p)), default=-1)
        return app >= library
