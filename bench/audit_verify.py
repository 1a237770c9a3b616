"""Audit chain verification: the full walk (``callrec audit verify``; the auditor's page before it
kept a checkpoint) against the walk of only what was added since the last check (the page now,
callrec.portal.chain), on chains of growing length, measured in the same run. Also the cost of
writing an entry (``callrec.db.audit.record``) before the chain was authenticated (hash only) and
after (hash and HMAC-SHA256 under the audit key).

    /tmp/venv/bin/python bench/audit_verify.py [--quick] [--json]

An embedded PostgreSQL (pgserver) in a temporary directory that is removed afterwards, one
database, loopback only, a local keyring in the same directory. Entries are written through
``callrec.db.audit.record`` (the real chain: hash, MAC, head row, lock), 1,000 per transaction,
like a busy tenant's listings and plays: first ``APPEND_SAMPLE`` entries through a plain connection
(the chain of a database not yet opened by this version), then, through a pool opened as callrec
opens it (audit keys unwrapped, checkpoint written), everything else.
For each length N the full walk is timed three times (median), then 100 entries are added (a few
minutes of a busy portal) and the walk from the checkpoint is timed three times (median).
Bounded: 200,000 entries at most (``--quick``: 50,000), and the whole run stops after 15 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from machine import loadavg, machine_info, machine_lines

from callrec.config import config_from_mapping
from callrec.db import audit
from callrec.db.migrate import migrate
from callrec.db.pool import create_pool

PACKAGES = ("asyncpg",)
RUN_LIMIT_S = 15 * 60
APPEND_SAMPLE = 10_000


async def append(pool: asyncpg.Pool, n: int) -> None:
    async with pool.acquire() as conn:
        for start in range(0, n, 1000):
            async with conn.transaction():
                for i in range(min(1000, n - start)):
                    await audit.record(
                        conn,
                        tenant="acme",
                        actor="staff:00000000-0000-0000-0000-000000000001",
                        action=audit.AuditAction.RECORDING_VIEWED,
                        recording_id=None,
                        details={"via": "portal", "n": start + i},
                    )


async def append_us(pool: asyncpg.Pool, n: int) -> float:
    """Microseconds per entry to append ``n`` entries."""
    started = time.perf_counter()
    await append(pool, n)
    return (time.perf_counter() - started) / n * 1e6


async def timed(pool: asyncpg.Pool, **kwargs: Any) -> tuple[float, audit.VerifyResult]:
    times, result = [], None
    for _ in range(3):
        async with pool.acquire() as conn:
            started = time.perf_counter()
            result = await audit.verify(conn, **kwargs)
            times.append(time.perf_counter() - started)
    assert result is not None and result.ok, result
    return statistics.median(times), result


async def run(lengths: list[int]) -> dict[str, Any]:
    import pgserver

    deadline = time.monotonic() + RUN_LIMIT_S
    with tempfile.TemporaryDirectory(prefix="callrec-bench-audit-") as tmp:
        server = pgserver.get_server(tmp, cleanup_mode="stop")
        try:
            url = server.get_uri()
            info = await machine_info(url, Path(tmp), packages=PACKAGES)
            plain = await asyncpg.create_pool(url, min_size=1, max_size=2)
            try:
                async with plain.acquire() as conn:
                    await migrate(conn)
                print(f"writing {APPEND_SAMPLE} entries without the audit key ...", file=sys.stderr)
                hash_only_us = await append_us(plain, APPEND_SAMPLE)
            finally:
                await plain.close()
            config = config_from_mapping({"data_dir": str(Path(tmp) / "data"), "database": {"url": url}})
            pool = await create_pool(config)
            try:
                print(f"writing {APPEND_SAMPLE} entries with the audit key ...", file=sys.stderr)
                mac_us = await append_us(pool, APPEND_SAMPLE)
                rows, have = [], 2 * APPEND_SAMPLE
                for n in lengths:
                    if time.monotonic() > deadline:
                        print(f"stopped at the time limit before {n} entries", file=sys.stderr)
                        break
                    print(f"writing entries up to {n} ...", file=sys.stderr)
                    await append(pool, n - have)
                    full_s, full = await timed(pool)
                    await append(pool, 100)
                    have = n + 100
                    new_s, new = await timed(
                        pool, after_seq=full.last_seq, prev_hash=full.last_hash, prev_mac=full.last_mac
                    )
                    rows.append(
                        {
                            "entries": full.entries,
                            "full_walk_s": full_s,
                            "us_per_entry": full_s / full.entries * 1e6,
                            "since_checkpoint_entries": new.entries,
                            "since_checkpoint_ms": new_s * 1000,
                            "ratio": full_s / new_s,
                        }
                    )
            finally:
                await pool.close()
        finally:
            server.cleanup()
    info["loadavg_at_end"] = loadavg()
    return {
        "machine": info,
        "append_us_per_entry": {"hash_only": hash_only_us, "hash_and_mac": mac_us},
        "results": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="up to 50,000 entries")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    lengths = [30_000, 50_000] if args.quick else [30_000, 50_000, 200_000]
    report = asyncio.run(run(lengths))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return
    append = report["append_us_per_entry"]
    print(
        f"append (record, 1,000 a transaction): {append['hash_only']:.0f} µs an entry with the hash only, "
        f"{append['hash_and_mac']:.0f} µs with hash and MAC"
    )
    print()
    print("| entries | full walk | per entry | walk of the 100 added since | full / since |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in report["results"]:
        print(
            f"| {r['entries']:,} | {r['full_walk_s']:.2f} s | {r['us_per_entry']:.1f} µs |"
            f" {r['since_checkpoint_ms']:.1f} ms | {r['ratio']:,.0f}x |"
        )
    print()
    for line in machine_lines(report["machine"], packages=PACKAGES):
        print(line)


if __name__ == "__main__":
    main()
