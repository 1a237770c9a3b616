"""Peak memory of PCI redaction (callrec.consent.redaction.redact_file) on a long stereo call.

Writes, with ffmpeg, a 6-hour stereo 48 kHz FLAC (a tone on each channel, ~580 MB, 4.1 GB once
decoded) and a 10-minute one to a temporary directory, then redacts three spans of each in a fresh
Python process per run and reports, in MiB:

- the Python process's peak RSS (ru_maxrss of that process);
- ffmpeg's peak RSS, sampled from /proc/<pid>/status (VmHWM, a high-water mark, so the last sample
  before ffmpeg exits is its peak) every 50 ms by a thread in that process; and ru_maxrss of the
  process's children as a cross-check, which Linux starts at the parent's RSS when it forks, so it
  is never below the Python process's RSS at that moment.

The baseline is the redaction callrec had before issue 9: ffmpeg decodes to a WAV file, pydub loads
all of it and splices silence in, the WAV is exported. It holds the whole recording in memory several
times over (a 6-hour stereo 48 kHz call would need well over 12 GiB), so it runs on the 10-minute
file only, next to the new path on the same file. Each measurement runs ``--rounds`` times (3);
the table gives the median and the spread (min-max).

    python bench/redaction_memory.py [--hours 6] [--rounds 3] [--skip-long]

Run time: ~4 min to write the 6-hour file on 2 vCPUs, then ~1.5 min per 6-hour round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import callrec_revision, cpu_model, loadavg, meminfo_kib

from callrec.audio import configure_ffmpeg

# Runs in a fresh interpreter per measurement; ru_maxrss is in KiB on Linux.
_CHILD = r"""
import json, os, resource, sys, threading, time
from pathlib import Path
mode, src, dst = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
from callrec import audio
from callrec.consent.redaction import Span, redact_file
audio.configure_ffmpeg()
info = audio.probe_file(src, max_duration_ms=24 * 3600 * 1000)
spans = [Span(60_000, 75_000), Span(info.duration_ms // 2, info.duration_ms // 2 + 30_000),
         Span(info.duration_ms - 10_000, info.duration_ms)]

peaks = {}
stop = threading.Event()

def watch():
    # Children of every thread of this process (ffmpeg is started from the main thread).
    while not stop.is_set():
        for task in Path("/proc/self/task").iterdir():
            try:
                pids = (task / "children").read_text().split()
            except OSError:
                continue
            for pid in pids:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        peaks[pid] = max(peaks.get(pid, 0), int(line.split()[1]))
        stop.wait(0.05)

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
watcher = threading.Thread(target=watch, daemon=True)
watcher.start()
start = time.perf_counter()
if mode == "new":
    redact_file(src, dst, spans, info=info, max_duration_ms=24 * 3600 * 1000, max_bytes=1 << 40)
else:
    # callrec's redaction before issue 9 (consent/redaction.py at 166eaa6), inlined.
    import tempfile, subprocess
    from pydub import AudioSegment
    with tempfile.TemporaryDirectory(dir=dst.parent) as work:
        wav = Path(work) / "decoded.wav"
        subprocess.run([audio.AudioSegment.converter, "-v", "error", "-i", str(src), "-map", "0:a:0",
                        "-c:a", "pcm_s16le", "-f", "wav", str(wav)], check=True)
        segment = AudioSegment.from_wav(str(wav))
        for span in spans:
            end = min(span.end_ms, len(segment))
            silence = AudioSegment.silent(duration=end - span.start_ms, frame_rate=segment.frame_rate)
            silence = silence.set_channels(segment.channels).set_sample_width(segment.sample_width)
            segment = segment[: span.start_ms] + silence + segment[end:]
        segment.export(str(dst), format="wav")
seconds = time.perf_counter() - start
stop.set()
watcher.join()
print(json.dumps({
    "seconds": seconds,
    "python_before_kib": before,
    "python_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "ffmpeg_hwm_kib": max(peaks.values(), default=0),
    "children_maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    "output_bytes": dst.stat().st_size,
    "duration_ms": info.duration_ms,
}))
"""


def write_call(ffmpeg: str, path: Path, seconds: int) -> None:
    """Stereo 48 kHz FLAC, 440 Hz left and 1013 Hz right."""
    left, right = (["-f", "lavfi", "-i", f"sine=f={f}:r=48000:d={seconds}"] for f in (440, 1013))
    merge = ["-filter_complex", "[0][1]amerge=inputs=2", "-c:a", "flac"]
    subprocess.run(  # noqa: S603 - fixed argument list, no shell
        [ffmpeg, "-v", "error", "-y", *left, *right, *merge, str(path)],
        check=True,
    )


def measure(mode: str, src: Path, dst: Path) -> dict[str, float]:
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", _CHILD, mode, str(src), str(dst)], capture_output=True, text=True, check=False
    )
    dst.unlink(missing_ok=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} on {src.name} failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout)
    return result


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-long", action="store_true", help="only the 10-minute file")
    args = parser.parse_args()
    ffmpeg = configure_ffmpeg()
    if ffmpeg is None:
        raise SystemExit("no ffmpeg")
    load_start = loadavg()

    with tempfile.TemporaryDirectory(prefix="callrec-bench-") as tmp:
        files = {"10 min": Path(tmp) / "ten-minutes.flac"}
        if not args.skip_long:
            files[f"{args.hours:g} h"] = Path(tmp) / "long.flac"
        for name, path in files.items():
            seconds = 600 if name == "10 min" else int(args.hours * 3600)
            started = time.perf_counter()
            write_call(ffmpeg, path, seconds)
            print(
                f"wrote {name} stereo 48 kHz FLAC, {path.stat().st_size / 2**20:.0f} MiB,"
                f" in {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
            )
        runs = [("old (pydub)", "old", "10 min"), ("new (ffmpeg)", "new", "10 min")]
        if not args.skip_long:
            runs.append(("new (ffmpeg)", "new", f"{args.hours:g} h"))
        results = {}
        for label, mode, name in runs:
            rounds = []
            for i in range(args.rounds):
                rounds.append(measure(mode, files[name], Path(tmp) / "out"))
                print(f"{label} {name} round {i + 1}: {rounds[-1]}", file=sys.stderr)
            results[(label, name)] = rounds

    print(f"callrec: {callrec_revision()}")
    print(
        f"machine: {len(os.sched_getaffinity(0))} CPUs ({cpu_model()}),"
        f" {meminfo_kib('MemTotal') / 2**20:.1f} GiB, ffmpeg {ffmpeg}"
    )
    print(f"load average (1/5/15 min) at start {load_start}, at end {loadavg()}")
    print(f"median (min-max) of {args.rounds} rounds; RSS in MiB")
    print(
        f"{'redaction':<14}{'file':>8}{'Python peak':>22}{'ffmpeg peak (VmHWM)':>24}"
        f"{'children ru_maxrss':>24}{'seconds':>22}{'output MiB':>12}"
    )
    for (label, name), rounds in results.items():

        def col(key: str, rounds: list[dict[str, float]] = rounds) -> list[float]:
            return [r[key] / 1024 for r in rounds]

        print(
            f"{label:<14}{name:>8}{spread(col('python_peak_kib')):>22}{spread(col('ffmpeg_hwm_kib')):>24}"
            f"{spread(col('children_maxrss_kib')):>24}{spread([r['seconds'] for r in rounds]):>22}"
            f"{rounds[0]['output_bytes'] / 2**20:>12.1f}"
        )


if __name__ == "__main__":
    main()
