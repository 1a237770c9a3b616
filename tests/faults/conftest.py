"""Fixtures of the fault suite; the helpers are in tests/support/fault_support.py.

Every test reports its counts on one line, ``FAULT-COUNTS {json}``: printed at teardown (``-rA``
shows it), kept as a junit property, and appended to the file named by
``CALLREC_TEST_FAULT_REPORT`` when set (docs/reliability.md quotes such a run).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

REPORT_ENV = "CALLREC_TEST_FAULT_REPORT"


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
