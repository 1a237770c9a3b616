"""Peak memory and time of callrec.audio.probe_file on a one-hour call.

Writes a one-hour stereo 8 kHz 16-bit WAV (~115 MB) to a temporary directory, optionally also as
mu-law WAV and MP3, then probes each file in a fresh Python process and reports that process's peak
RSS (ru_maxrss) next to the file size. The service's budget is a peak under 3x the file size for
the 16-bit WAV. ``--naive`` adds pydub's own ``AudioSegment.from_file`` for comparison.

    python bench/audio_rss.py [--minutes 60] [--formats wav,mulaw,mp3] [--naive]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import wave
from array import array
from pathlib import Path

from callrec.audio import configure_ffmpeg

# Runs in the child; ru_maxrss is in KiB on Linux. RUSAGE_CHILDREN is the largest process the child
# started: ffmpeg, or the `ffmpeg -version` imageio-ffmpeg runs to check its binary.
_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
mode, path = sys.argv[1], Path(sys.argv[2])
from callrec.audio import configure_ffmpeg, probe_file
from pydub import AudioSegment
configure_ffmpeg()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if mode == "probe":
    result = repr(probe_file(path))
else:
    result = f"AudioSegment of {len(AudioSegment.from_file(path))} ms"
seconds = time.perf_counter() - start
print(json.dumps({
    "result": result,
    "seconds": seconds,
    "rss_before_kib": before,
    "rss_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "ffmpeg_peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
}))
"""


def write_long_wav(path: Path, minutes: int) -> None:
    """A stereo 8 kHz 16-bit WAV (a tone left, noise right), written one minute at a time."""
    rng = random.Random(7)
    minute = array("h")
    for i in range(8000 * 60):
        minute.append(int(8000 * math.sin(2 * math.pi * 440 * i / 8000)))
        minute.append(rng.randint(-2000, 2000))
    if sys.byteorder != "little":
        minute.byteswap()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(8000)
        for _ in range(minutes):
            out.writeframes(minute)


def transcode(ffmpeg: str, source: Path, target: Path, *codec: str) -> None:
    subprocess.run(  # noqa: S603 - fixed argument list, no shell
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-i", str(source), *codec, str(target)],
        check=True,
    )


def measure(mode: str, path: Path) -> dict[str, object] | str:
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", _CHILD, mode, str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return done.stderr.strip().splitlines()[-1]
    result: dict[str, object] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--formats", default="wav,mulaw,mp3")
    parser.add_argument("--naive", action="store_true", help="also measure pydub's AudioSegment.from_file")
    args = parser.parse_args()
    formats = [f for f in args.formats.split(",") if f]

    with tempfile.TemporaryDirectory(prefix="callrec-bench-") as tmp:
        wav = Path(tmp) / "call.wav"
        write_long_wav(wav, args.minutes)
        files = {"wav": wav}
        ffmpeg = configure_ffmpeg()
        if ffmpeg is None:
            formats = ["wav"]
        else:
            if "mulaw" in formats:
                files["mulaw"] = Path(tmp) / "call-mulaw.wav"
                transcode(ffmpeg, wav, files["mulaw"], "-c:a", "pcm_mulaw")
            if "mp3" in formats:
                files["mp3"] = Path(tmp) / "call.mp3"
                transcode(ffmpeg, wav, files["mp3"], "-c:a", "libmp3lame", "-b:a", "32k")

        runs = [("probe", name) for name in formats if name in files]
        if args.naive:
            runs += [("pydub-from_file", name) for name in formats if name in files]
        print(f"{args.minutes} min stereo 8 kHz; ffmpeg: {ffmpeg or 'none'}")
        header = (
            f"{'what':<22}{'file MB':>9}{'probe s':>9}{'RSS before':>12}{'RSS peak':>10}{'peak/file':>11}"
        )
        print(header + f"{'child RSS':>11}")
        for mode, name in runs:
            path = files[name]
            size = path.stat().st_size
            m = measure("probe" if mode == "probe" else "naive", path)
            if isinstance(m, str):
                print(f"{mode + ' ' + name:<22}{size / 1e6:>9.1f}   failed: {m}")
                continue
            peak = int(str(m["rss_peak_kib"])) * 1024
            print(
                f"{mode + ' ' + name:<22}{size / 1e6:>9.1f}{float(str(m['seconds'])):>9.2f}"
                f"{int(str(m['rss_before_kib'])) / 1024:>10.1f}MB{peak / 2**20:>8.1f}MB{peak / size:>10.2f}x"
                f"{int(str(m['ffmpeg_peak_kib'])) / 1024:>9.1f}MB   {m['result']}"
            )


if __name__ == "__main__":
    main()
