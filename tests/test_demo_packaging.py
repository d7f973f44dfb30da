"""What ``pip install stallwatch`` puts in a user's environment, checked on a real wheel.

The wheel is built from a copy of the sources (as ``pip wheel`` does for a user), installed
with ``--no-deps`` into a fresh venv that borrows the test venv's third-party packages, and
run from a directory outside the checkout, so nothing here can come from the checkout:
the demo must be ``stallwatch.demo``, never a top-level ``demo_app``, and both console
scripts must start it.
"""

from __future__ import annotations

import ast
import email.message
import email.parser
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, free_port, running

CORE_IMPORTS = {"prometheus_client"}
"""Third-party packages stallwatch itself imports: its declared dependencies."""
DEMO_IMPORTS = {"fastapi", "pydantic", "uvicorn", "aiohttp"}
"""...and those the demo imports, from the ``demo`` extra (pydantic comes with FastAPI)."""
OPTIONAL = {"uvloop", "pytest", "opentelemetry"}
"""Imported only where present: uvloop behind ``ImportError`` guards, pytest by the pytest
plugin, which only pytest loads, OpenTelemetry (the ``otel`` extra) only when asked for."""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("stallwatch", "demo_app"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [built] = out.glob("stallwatch-*.whl")
    return built


def names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def test_the_wheel_has_no_top_level_demo_app_and_ships_the_demo_as_stallwatch_demo(
    wheel: Path,
) -> None:
    files = names(wheel)
    top = {name.split("/")[0] for name in files}

    assert top == {"stallwatch", "stallwatch-0.1.0.dist-info"}
    demo = {Path(n).name for n in files if n.startswith("stallwatch/demo/")}
    assert {p.name for p in (ROOT / "demo_app").glob("*.py")} <= demo
    assert "front.html" in demo


def test_the_wheel_holds_every_module_of_the_package(wheel: Path) -> None:
    # The packages are listed by hand in pyproject.toml (a mapped folder defeats `find`):
    # a new subpackage of stallwatch/ that is not listed there fails here.
    files = set(names(wheel))
    expected = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "stallwatch").rglob("*")
        if path.suffix in (".py", ".html", ".typed") and "__pycache__" not in path.parts
    }

    assert expected - files == set()


def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        [name] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(z.read(name).decode())


def imported(wheel: Path, prefix: str, exclude: str | None = None) -> set[str]:
    """Top-level names of what the modules under ``prefix`` import, the standard library and
    stallwatch itself left out, relative imports too."""
    found: set[str] = set()
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if not name.startswith(prefix) or not name.endswith(".py"):
                continue
            if exclude is not None and name.startswith(exclude):
                continue
            for node in ast.walk(ast.parse(z.read(name))):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"stallwatch", "__future__"}


def requirement_names(wheel: Path, marker: str | None) -> set[str]:
    """Distribution names the wheel requires: always (``marker`` None) or for an extra."""
    found = set()
    for line in metadata(wheel).get_all("Requires-Dist") or []:
        requirement, _, condition = line.partition(";")
        if (marker is None and not condition) or (marker and marker in condition):
            found.add(re.split(r"[\s<>=!~\[]", requirement.strip(), maxsplit=1)[0])
    return found


def test_the_package_requires_prometheus_client_alone(wheel: Path) -> None:
    assert requirement_names(wheel, None) == {"prometheus-client"}
    assert {"fastapi", "uvicorn", "aiohttp"} <= requirement_names(wheel, 'extra == "demo"')


def test_the_demo_imports_only_what_its_extra_brings(wheel: Path) -> None:
    assert imported(wheel, "stallwatch/demo/") - OPTIONAL <= DEMO_IMPORTS | CORE_IMPORTS


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel alone; FastAPI and the rest are borrowed from the test
    venv through a ``.pth`` line, which adds that folder but runs none of its ``.pth`` files,
    so the checkout's editable install stays out."""
    env = tmp_path_factory.mktemp("venv")
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    borrowed = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    Path(purelib, "borrowed.pth").write_text("\n".join(dict.fromkeys(borrowed)) + "\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return env


def outside(env: Path, *command: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(env / "bin" / command[0]), *command[1:]],
        capture_output=True,
        text=True,
        cwd=env,
        env=clean,
        timeout=60,
    )


def test_importing_stallwatch_loads_no_third_party_package_but_its_dependency(
    installed: Path,
) -> None:
    # Framework support (stallwatch.routes.starlette, ...) loads only for an app of that
    # framework, so the framework is there by then; nothing else may come in on import.
    done = outside(
        installed,
        "python",
        "-c",
        "import sys, stallwatch, stallwatch.cli, stallwatch.multiprocess; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))",
    )

    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split()) - set(sys.stdlib_module_names)
    assert loaded - {"stallwatch", "__future__", "__main__"} == CORE_IMPORTS


def test_the_installed_wheel_imports_stallwatch_demo_from_itself_and_no_demo_app(
    installed: Path,
) -> None:
    done = outside(
        installed,
        "python",
        "-c",
        "import importlib.util, stallwatch.demo.__main__ as m, stallwatch; "
        "print(stallwatch.__file__); print(m.PACKAGE); "
        "print(importlib.util.find_spec('demo_app'))",
    )

    assert done.returncode == 0, done.stderr
    where, package, demo_app = done.stdout.split()
    assert Path(where).is_relative_to(installed)
    assert package == "stallwatch.demo"
    assert demo_app == "None"


@pytest.fixture
def served(installed: Path) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        str(installed / "bin" / "stallwatch-demo"),
        "--port",
        str(port),
        "--seed-rows",
        "500",
    ]
    with running(command, base + "/demo/mode", env={"PYTHONPATH": ""}):
        yield base


def test_stallwatch_demo_serves_the_demo_from_the_installed_wheel(served: str) -> None:
    front = httpx.get(served + "/", timeout=10).text

    assert "-m stallwatch.demo.load --url" in front
    assert httpx.get(served + "/cache/key-7", timeout=10).json()["value"] == "value-7"
    assert httpx.get(served + "/demo/info", timeout=10).json()["seed_rows"] == 500


def test_both_console_scripts_reach_the_demo_and_its_load_generator(installed: Path) -> None:
    demo = outside(installed, "stallwatch-demo", "--help")
    via_cli = outside(installed, "stallwatch", "demo", "--help")
    load = outside(installed, "stallwatch-demo", "load", "--help")

    assert demo.returncode == 0, demo.stderr
    assert "--executor-threads" in demo.stdout
    assert via_cli.returncode == 0, via_cli.stderr
    assert "--seed-rows" in via_cli.stdout
    assert load.returncode == 0, load.stderr
    assert "--arrivals" in load.stdout
    assert "python -m stallwatch.demo.load" in load.stdout
