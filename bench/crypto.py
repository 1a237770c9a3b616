"""Throughput of recording encryption (callrec.crypto.envelope) against a plain file copy.

File to file in a temporary directory, for several chunk sizes, in one run so that the
copy baseline sees the same machine state. Run by hand:

    python bench/crypto.py [--size-mib 256] [--repeat 3] [--dir /tmp] [--fsync]

Each cell is the best of ``--repeat`` runs with the median in brackets, in MB/s
(10^6 bytes per second of plaintext). The output file is deleted before each run and the
clock stops after it is closed (and fsynced with ``--fsync``); without ``--fsync`` the
data ends in the page cache, which is what the CPU cost of the crypto is measured against.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import tink

from callrec.crypto.envelope import decrypt_stream, encrypt_stream, new_recording_key

CHUNKS = (64 << 10, 1 << 20, 8 << 20)
TENANT, RECORDING = "bench", "rec-bench"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


Job = Callable[[BinaryIO, BinaryIO], object]


def _timed(run: Job, src: Path, dst: Path, *, fsync: bool) -> tuple[float, float]:
    """Wall and CPU seconds of ``run(open src, open dst)``, close (and fsync) included."""
    dst.unlink(missing_ok=True)
    wall, cpu = time.perf_counter(), _cpu()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        run(fin, fout)
        if fsync:
            fout.flush()
            os.fsync(fout.fileno())
    return time.perf_counter() - wall, _cpu() - cpu


def _copy(chunk: int) -> Job:
    def run(fin: BinaryIO, fout: BinaryIO) -> None:
        while data := fin.read(chunk):
            fout.write(data)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the temporary files go (default: tempfile's)")
    parser.add_argument("--fsync", action="store_true", help="fsync each output file inside the timing")
    args = parser.parse_args()

    size = args.size_mib << 20
    steal, started = _steal_ticks(), time.perf_counter()
    handle = new_recording_key()
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="callrec-bench-") as tmp:
        work = Path(tmp)
        plain, ct, out = work / "plain.bin", work / "ct.bin", work / "out.bin"
        with open(plain, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))

        def encrypt(chunk: int) -> Job:
            def run(fin: BinaryIO, fout: BinaryIO) -> None:
                encrypt_stream(fin, fout, handle, tenant=TENANT, recording_id=RECORDING, chunk_size=chunk)

            return run

        def decrypt(chunk: int, *, read1: bool) -> Job:
            def run(fin: BinaryIO, fout: BinaryIO) -> None:
                # decrypt_stream closes its source; fin is closed again by _timed, harmlessly
                with decrypt_stream(fin, handle, tenant=TENANT, recording_id=RECORDING) as reader:
                    read = reader.read1 if read1 else reader.read  # type: ignore[attr-defined]
                    while data := read(chunk):
                        fout.write(data)

            return run

        rows: list[tuple[str, Callable[[int], Job], str]] = [
            ("copy read/write", _copy, "plain"),
            ("encrypt_stream", encrypt, "plain"),
            ("decrypt read()", lambda c: decrypt(c, read1=False), "ct"),
            ("decrypt read1()", lambda c: decrypt(c, read1=True), "ct"),
        ]
        _timed(encrypt(1 << 20), plain, ct, fsync=False)
        for _ in range(args.repeat):  # interleaved, so that drift hits every row alike
            for chunk in CHUNKS:
                for name, make, source in rows:
                    src = plain if source == "plain" else ct
                    dst = ct if name == "encrypt_stream" else out
                    timing = _timed(make(chunk), src, dst, fsync=args.fsync)
                    results.setdefault((name, chunk), []).append(timing)
                    if name.startswith("decrypt") and not filecmp.cmp(plain, out, shallow=False):
                        sys.exit(f"{name} at chunk {chunk}: decrypted output differs from the input")
        copyfile = []
        for _ in range(args.repeat):
            out.unlink(missing_ok=True)
            wall = time.perf_counter()
            shutil.copyfile(plain, out)
            copyfile.append(time.perf_counter() - wall)

        threads = _two_threads(plain, work, handle, repeat=args.repeat)

    mb = size / 1e6
    print(f"{args.size_mib} MiB file to file in {args.dir or tempfile.gettempdir()}, {os.cpu_count()} CPUs, "
          f"best (median) of {args.repeat}, MB/s{', fsync' if args.fsync else ''}; cpu = CPU ms at 1 MiB")
    header = f"{'operation':18}" + "".join(f"{_label(c):>16}" for c in CHUNKS) + f"{'cpu':>8}"
    print(header)
    print("-" * len(header))
    for name, _, _ in rows:
        cells = ""
        for chunk in CHUNKS:
            walls = [w for w, _ in results[(name, chunk)]]
            cells += f"{mb / min(walls):>8.0f} ({mb / statistics.median(walls):>5.0f})"
        cpu = statistics.median(c for _, c in results[(name, 1 << 20)]) * 1000
        print(f"{name:18}{cells}{cpu:>8.0f}")
    print(f"{'copyfile (kernel)':18}{mb / min(copyfile):>8.0f} ({mb / statistics.median(copyfile):>5.0f})")
    sequential, parallel = threads
    ticks = os.sysconf("SC_CLK_TCK") * (time.perf_counter() - started) * (os.cpu_count() or 1)
    print(f"cpu stolen by the hypervisor during the run: {100 * (_steal_ticks() - steal) / ticks:.1f}%")
    print(
        f"two recordings, 1 MiB chunks: one after the other {sequential:.0f} MB/s, "
        f"in two threads {parallel:.0f} MB/s"
    )


def _two_threads(plain: Path, work: Path, handle: tink.KeysetHandle, *, repeat: int) -> tuple[float, float]:
    """Best aggregate encryption throughput of two recordings in sequence and in two
    threads: shows whether Tink releases the GIL (callrec runs crypto in a thread pool)."""
    def job(i: int) -> None:
        with open(plain, "rb") as fin, open(work / f"t{i}.bin", "wb") as fout:
            encrypt_stream(fin, fout, handle, tenant=TENANT, recording_id=f"{RECORDING}-{i}")

    total = 2 * plain.stat().st_size / 1e6
    sequential = parallel = 0.0
    for _ in range(repeat):
        for i in range(2):
            (work / f"t{i}.bin").unlink(missing_ok=True)
        wall = time.perf_counter()
        job(0)
        job(1)
        sequential = max(sequential, total / (time.perf_counter() - wall))
        for i in range(2):
            (work / f"t{i}.bin").unlink()
        workers = [threading.Thread(target=job, args=(i,)) for i in range(2)]
        wall = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        parallel = max(parallel, total / (time.perf_counter() - wall))
    return sequential, parallel


def _steal_ticks() -> int:
    """CPU time stolen by the hypervisor so far (Linux /proc/stat), to judge noise."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8])
    except (OSError, IndexError, ValueError):
        return 0


def _label(chunk: int) -> str:
    return f"{chunk >> 20} MiB" if chunk >= 1 << 20 else f"{chunk >> 10} KiB"


if __name__ == "__main__":
    main()
