"""Fixtures of the fault suite; the helpers are in tests/support/fault_support.py.

Every test reports its counts on one line, ``FAULT-COUNTS {json}``: printed at teardown (``-rA``
shows it), kept as a junit property, and appended to the file named by
``CALLREC_TEST_FAULT_REPORT`` when set (docs/reliability.md quotes such a run).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

REPORT_ENV = "CALLREC_TEST_FAULT_REPORT"


@pytest.fixture(autouse=True)
def _quiet_moto_access_log() -> Iterator[None]:
    """moto's server logs every S3 request through werkzeug: hundreds of lines that would bury the
    counts in ``-rA`` output."""
    logger = logging.getLogger("werkzeug")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


# --- counts -----------------------------------------------------------------------------------


@pytest.fixture
def counts(request: pytest.FixtureRequest, record_property: Any) -> Iterator[dict[str, Any]]:
    """What the test saw (sent, acknowledged, stored, duplicates, orphans, peak RSS, ...), reported
    when it ends, passed or failed."""
    seen: dict[str, Any] = {}
    yield seen
    line = json.dumps({"test": request.node.name, **seen}, sort_keys=False)
    record_property("fault_counts", line)
    print(f"FAULT-COUNTS {line}")
    target = os.environ.get(REPORT_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(line + "\n")


# --- an S3 endpoint of the test's own, to stop and start ----------------------------------------


class OwnMoto:
    """moto's threaded server on a loopback port of its own: stopping it takes this test's bucket
    away and leaves the session's moto (other tests) alone. moto keeps its state in the process,
    so a server started again on the same port serves the same buckets."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, self.port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{self.port}"
        self.running = True

    def stop(self) -> None:
        self._server.stop()
        self.running = False

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.running = True


@pytest.fixture
def own_moto(moto_endpoint: str) -> Iterator[OwnMoto]:
    """(Depends on the session's moto only for the AWS test credentials it sets.)"""
    server = OwnMoto()
    try:
        yield server
    finally:
        if server.running:
            server.stop()


# --- a PostgreSQL of the test's own, to stop and start ------------------------------------------


class OwnPostgres:
    """A PostgreSQL server (pgserver's binaries) in the test's own directory: stopping it takes
    this test's database away and leaves the session's server (other tests) alone. Restarted on
    the same socket directory, it answers at the same URL."""

    def __init__(self, pgdata: Path) -> None:
        import pgserver

        self.pgdata = pgdata
        self._server = pgserver.get_server(str(pgdata), cleanup_mode=None)
        self.url = self._server.get_uri()
        self._socket_dir = parse_qs(urlsplit(self.url).query)["host"][0]
        self.running = True

    def _pg_ctl(self, *args: str) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(list(args), pgdata=self.pgdata, user=self._server.system_user, timeout=60)

    def stop(self) -> None:
        """Fast shutdown: sessions are terminated (what an operator's restart or a failover does)."""
        self._pg_ctl("-w", "-m", "fast", "stop")
        self.running = False

    def start(self) -> None:
        self._pg_ctl(
            "-w", "-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l", str(self.pgdata / "log"), "start"
        )
        self.running = True


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[OwnPostgres]:
    server = OwnPostgres(tmp_path / "own-pg")
    try:
        yield server
    finally:
        if server.running:
            server.stop()
