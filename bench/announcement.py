"""Score distributions and cost of announcement verification: the tables in docs/announcement-verification.md.

Runs the cases of tests/consent/test_announcement.py over several seeds (each seed draws new offsets,
greetings and noise), then stress cases beyond what the tests require (Opus, GSM, 0 dB SNR, jitter
slips, clock drift), and prints Markdown tables: per condition the verified count and the min / median /
max score, next to the whole-prompt NCC the part check refines; then the cost of one check.

    python bench/announcement.py [--seeds 5] [--keep DIR] [--parts] [--no-timing]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from callrec.audio import configure_ffmpeg
from callrec.consent import announcement
from callrec.consent.announcement import THRESHOLD, Prompt, verify_announcement

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "audio"
PROMPT_FILES = {"en": "announcement-en-gb-v1.wav", "nb": "announcement-nb-v1.wav"}


def load_cases() -> ModuleType:
    """The test module, for its case builders: the table describes exactly the audio the tests use."""
    path = ROOT / "tests" / "consent" / "test_announcement.py"
    spec = importlib.util.spec_from_file_location("announcement_cases", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def whole_prompt_ncc(path: Path, prompt: Prompt, search_ms: int) -> float:
    """The best whole-prompt NCC over mix and channels: step 3 of the method without step 4."""
    template = prompt._template
    last = prompt._lead + search_ms * prompt.sample_rate // 1000
    audio = announcement._decode_opening(path, frames=last + len(template))
    if audio.shape[1] < len(template):
        return 0.0
    filtered = announcement._band_limit(audio, prompt.sample_rate)
    signals = [filtered[0]] if len(filtered) == 1 else [filtered.mean(axis=0), *filtered]
    return max(float(np.abs(announcement._ncc(s, template)).max()) for s in signals)


def stress_cases(t: Any) -> list[Any]:
    """Beyond the required conditions: where the method starts to give way."""
    Case, ringback, silence, with_noise = t.Case, t.ringback, t.silence, t.with_noise
    mid = 3237  # ms: the middle of the English prompt

    def speed(segment: Any, rate: int) -> Any:
        # Played at ``rate`` Hz, recorded at 8 kHz: a clock off by rate / 8000 - 1.
        return segment._spawn(segment.raw_data, overrides={"frame_rate": rate}).set_frame_rate(8000)

    found = [
        Case(
            "opus-12k",
            "Ogg Opus 12 kbit/s",
            lambda s, r: ringback(5000, "eu") + s.call_with,
            codec="opus-12k",
            expect_ms=5000,
        ),
        Case(
            "opus-6k",
            "Ogg Opus 6 kbit/s",
            lambda s, r: ringback(5000, "eu") + s.call_with,
            codec="opus-6k",
            expect_ms=5000,
        ),
        Case(
            "gsm",
            "GSM 06.10 WAV",
            lambda s, r: ringback(5000, "eu") + s.call_with,
            codec="gsm",
            expect_ms=5000,
        ),
        Case(
            "white-0db",
            "white noise 0 dB SNR, mu-law",
            lambda s, r: with_noise(ringback(5000, "eu") + s.call_with, "white", 0, s.en, r),
            codec="mulaw",
            expect_ms=5000,
        ),
        Case(
            "pink-0db",
            "pink noise 0 dB SNR, mu-law",
            lambda s, r: with_noise(ringback(5000, "eu") + s.call_with, "pink", 0, s.en, r),
            codec="mulaw",
            expect_ms=5000,
        ),
        Case(
            "slip-insert",
            "jitter slip: +20 ms mid-prompt",
            lambda s, r: ringback(3000, "us") + s.call_with[:mid] + silence(20) + s.call_with[mid:],
            expect_ms=3000,
        ),
        Case(
            "slip-drop",
            "jitter slip: -20 ms mid-prompt",
            lambda s, r: ringback(3000, "us") + s.call_with[:mid] + s.call_with[mid + 20 :],
            expect_ms=3000,
        ),
        Case(
            "slips-3",
            "three slips of 10-20 ms",
            lambda s, r: (
                ringback(3000, "us")
                + s.call_with[:1600]
                + silence(10)
                + s.call_with[1600:mid]
                + s.call_with[mid + 20 : 4800]
                + silence(20)
                + s.call_with[4800:]
            ),
            expect_ms=3000,
        ),
        Case(
            "drift-0.05",
            "clock drift 0.05 %",
            lambda s, r: ringback(3000, "us") + speed(s.call_with, 8004),
            expect_ms=3000,
        ),
        Case(
            "drift-0.2",
            "clock drift 0.2 %",
            lambda s, r: ringback(3000, "us") + speed(s.call_with, 8016),
            expect_ms=3000,
        ),
        Case(
            "last-10-missing",
            "prompt without its last 10 %",
            lambda s, r: ringback(3000, "eu") + s.en[: int(len(s.en) * 0.9)] + s.after_prompt(),
            expect_ms=3000,
        ),
        Case(
            "after-window-by-5ms",
            "prompt starts 5 ms after the window",
            lambda s, r: ringback(10_005, "eu") + s.call_with,
            search_ms=10_000,
        ),
    ]
    return found


def run(
    cases: list[Any],
    t: Any,
    prompts: dict[str, Prompt],
    sources: Any,
    directory: Path,
    seed: int,
    rows: dict[str, dict[str, list[float]]],
) -> None:
    for case in cases:
        path = case.make(sources, directory, seed)
        check = verify_announcement(path, prompts[case.claim], search_ms=case.search_ms)
        row = rows[("+ " if case.positive else "- ") + case.condition]
        row["score"].append(check.score)
        row["ncc"].append(whole_prompt_ncc(path, prompts[case.claim], case.search_ms))
        row["verified"].append(float(check.verified))
        if case.positive and check.offset_ms is not None:
            row["error"].append(abs(check.offset_ms - case.expect_ms))
        path.unlink()


def table(rows: dict[str, dict[str, list[float]]]) -> None:
    print(
        "| condition | n | verified | score min / median / max | whole-prompt NCC min / max | offset error |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        s, ncc, errors = row["score"], row["ncc"], row["error"]
        print(
            f"| {name} | {len(s)} | {int(sum(row['verified']))} | "
            f"{min(s):.3f} / {statistics.median(s):.3f} / {max(s):.3f} | {min(ncc):.3f} / {max(ncc):.3f} | "
            + (f"{max(errors):.0f} ms |" if errors else "- |")
        )


def timing(t: Any, prompts: dict[str, Prompt], sources: Any, directory: Path) -> None:
    opening = t.stereo(
        t.ringback(50_000, "eu") + sources.call_with, t.ringback(50_000, "eu") + sources.call_without
    )
    rest = t.stereo(sources.agent, sources.caller)
    call = (opening + rest * 40)[:600_000]
    files = {
        "mono 8 kHz PCM WAV": t.export(call.split_to_mono()[0], "pcm", directory / "mono.wav"),
        "stereo 8 kHz PCM WAV": t.export(call, "pcm", directory / "stereo.wav"),
        "mono mu-law WAV (ffmpeg)": t.export(call.split_to_mono()[0], "mulaw", directory / "mono-mulaw.wav"),
        "stereo 8 kHz MP3 (ffmpeg)": t.export(call, "mp3-16k", directory / "stereo.mp3"),
        "stereo 44.1 kHz MP3 (ffmpeg, resampled)": t.export(call, "mp3-44k", directory / "stereo-44k.mp3"),
    }
    print("\n| 10-minute call, prompt at 50 s, 60 s search | wall, median of 5 | CPU of the calling thread |")
    print("| --- | --- | --- |")
    for name, path in files.items():
        verify_announcement(path, prompts["en"])
        walls, cpus = [], []
        for _ in range(5):
            wall, cpu = time.perf_counter(), time.thread_time()
            assert verify_announcement(path, prompts["en"]).verified
            walls.append(time.perf_counter() - wall)
            cpus.append(time.thread_time() - cpu)
        print(
            f"| {name} | {statistics.median(walls) * 1000:.0f} ms | {statistics.median(cpus) * 1000:.0f} ms |"
        )


def parts_sweep(t: Any, sources: Any, directory: Path) -> None:
    """The score of a few telling cases for 1, 4, 6 and 8 parts: why the method uses four."""
    names = ("worst-mp3", "first-", "last-half", "nb-recording-en-claimed-pcm", "no-announcement-pcm")
    chosen = [c for c in t.cases(0) if c.name.startswith(names)]
    chosen += [c for c in stress_cases(t) if c.name in ("opus-6k", "white-0db", "slips-3", "drift-0.05")]
    paths = {c.name: c.make(sources, directory, 0) for c in chosen}
    print("\n| parts | " + " | ".join(("+ " if c.positive else "- ") + c.name for c in chosen) + " |")
    print("| --- " * (len(chosen) + 1) + "|")
    saved = announcement.PARTS
    try:
        for parts in (1, 4, 6, 8):
            announcement.PARTS = parts  # read when a Prompt is built
            prompts = {k: Prompt.from_file(FIXTURES / f) for k, f in PROMPT_FILES.items()}
            scores = [
                verify_announcement(paths[c.name], prompts[c.claim], search_ms=c.search_ms).score
                for c in chosen
            ]
            print(f"| {parts} | " + " | ".join(f"{v:.2f}" for v in scores) + " |")
    finally:
        announcement.PARTS = saved


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="write the audio here instead of a temporary directory")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--parts", action="store_true", help="also compare 1, 4, 6 and 8 parts")
    args = parser.parse_args()
    if configure_ffmpeg() is None:
        sys.exit("no ffmpeg")
    t = load_cases()
    sources = t.Sources.load(FIXTURES)
    prompts = {k: Prompt.from_file(FIXTURES / f) for k, f in PROMPT_FILES.items()}
    with tempfile.TemporaryDirectory(prefix="bench-announcement-") as scratch:
        directory = args.keep or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for seed in range(args.seeds):
            run(t.cases(seed), t, prompts, sources, directory, seed, rows)
        print(f"THRESHOLD = {THRESHOLD}; {args.seeds} seeds\n")
        table(rows)
        positives = [v for k, r in rows.items() if k.startswith("+") for v in r["score"]]
        negatives = [v for k, r in rows.items() if k.startswith("-") for v in r["score"]]
        print(
            f"\nall positives: n={len(positives)} min {min(positives):.3f};"
            f" all negatives: n={len(negatives)} max {max(negatives):.3f}\n"
        )
        stress: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for seed in range(min(args.seeds, 3)):
            run(stress_cases(t), t, prompts, sources, directory, seed, stress)
        table(stress)
        if args.parts:
            parts_sweep(t, sources, directory)
        if not args.no_timing:
            timing(t, prompts, sources, directory)


if __name__ == "__main__":
    main()
