"""The fault-injection hook itself: inert unless the process starts with it, exact when it is on,
and reachable only through constant point names in the code."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import callrec
from callrec import faults

PACKAGE = Path(callrec.__file__).resolve().parent
PROGRAM = (
    "from callrec import faults\nfor n in (1, 2, 3):\n    faults.point('store')\n    print(n, flush=True)\n"
)


def run(env_extra: dict[str, str], program: str = PROGRAM) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_unset_the_points_do_nothing() -> None:
    done = run({})
    assert done.returncode == 0 and done.stdout.split() == ["1", "2", "3"]


def test_a_point_kills_the_process_the_nth_time_it_is_reached() -> None:
    first = run({faults.KILL_AT_ENV: "store"})
    assert first.returncode == -signal.SIGKILL and first.stdout.split() == []
    second = run({faults.KILL_AT_ENV: "decode,store:2"})
    assert second.returncode == -signal.SIGKILL and second.stdout.split() == ["1"]


def test_with_a_once_directory_each_point_kills_once_across_processes(tmp_path: Path) -> None:
    env = {faults.KILL_AT_ENV: "store", faults.ONCE_DIR_ENV: str(tmp_path)}
    assert run(env).returncode == -signal.SIGKILL
    assert (tmp_path / "store").is_file()
    again = run(env)  # restarted with the same environment: it has died here already
    assert again.returncode == 0 and again.stdout.split() == ["1", "2", "3"]


def test_an_unknown_point_stops_the_process_at_start() -> None:
    done = run({faults.KILL_AT_ENV: "stroe"})
    assert done.returncode == 1 and "unknown fault point 'stroe'" in done.stderr


def test_the_environment_is_read_once_at_start() -> None:
    """Set after start (as nothing in a request could do anyway), the variable changes nothing."""
    os.environ[faults.KILL_AT_ENV] = "store"
    try:
        faults.point("store")  # still alive
    finally:
        del os.environ[faults.KILL_AT_ENV]


def test_every_call_names_a_known_point_with_a_constant() -> None:
    """Nothing computed (from a request or anything else) can name a point, and every point that
    the suite may name is called somewhere."""
    called: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "point"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "faults"
            ):
                assert len(node.args) == 1 and not node.keywords, f"{path}:{node.lineno}"
                arg = node.args[0]
                assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), f"{path}:{node.lineno}"
                assert arg.value in faults.POINTS, f"{path}:{node.lineno}: {arg.value}"
                called.add(arg.value)
    assert called == faults.POINTS
