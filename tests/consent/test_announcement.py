"""callrec.consent.announcement against real audio, degraded here the way telephone networks degrade it.

Every case is built with pydub (and the ffmpeg callrec.audio configures) from the shared fixtures:
G.711 mu-law and A-law, 8 kHz MP3 at 16 and 8 kbit/s, white and pink noise at 10 and 5 dB SNR, the
prompt after 3-12 s of ring-back (CEPT 425 Hz and North American 440+480 Hz cadences) or after a spoken
greeting, stereo with the prompt on one channel only and the other party talking over it; and the
negatives: no announcement, the other language's announcement, silence, noise, ring-back, the prompt
cut short, the prompt only after the search window.

``cases(seed)`` is also what ``bench/announcement.py`` runs over many seeds to produce the score table in
docs/announcement-verification.md; the tests run seed 0 and check that :data:`THRESHOLD` separates
the positives from the negatives with a margin.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
import tracemalloc
import warnings
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from callrec.audio import AudioError, configure_ffmpeg
from callrec.consent.announcement import (
    ANALYSIS_RATE,
    THRESHOLD,
    AnnouncementCheck,
    Prompt,
    PromptError,
    verify_announcement,
)

with warnings.catch_warnings():  # pydub warns on import when PATH has no ffmpeg; see callrec.audio
    warnings.simplefilter("ignore", RuntimeWarning)
    import pydub.utils
    from pydub import AudioSegment
    from pydub.generators import Sine

RATE = 8000
OFFSET_TOLERANCE_MS = 50
# How far every positive must score above THRESHOLD, and every negative below it.
MARGIN = 0.2
DOC = Path(__file__).resolve().parents[2] / "docs" / "announcement-verification.md"


# --- the sources ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    en: AudioSegment  # the English prompt, as registered
    nb: AudioSegment  # the Norwegian prompt
    call_with: AudioSegment  # the English prompt at 0 s, then agent and caller
    call_without: AudioSegment  # another call, no announcement
    agent: AudioSegment  # the stereo fixture's left channel after its announcement
    caller: AudioSegment  # its right channel after the announcement

    @classmethod
    def load(cls, fixtures: Path) -> Sources:
        def read(name: str) -> AudioSegment:
            return AudioSegment.from_wav(fixtures / name)

        en = read("announcement-en-gb-v1.wav")
        # The stereo fixture carries the announcement on both channels; each channel's speech after it
        # stands in for the agent and the caller of calls where only one side hears the prompt.
        left, right = read("call-stereo-agent-left-caller-right.wav").split_to_mono()
        return cls(
            en=en,
            nb=read("announcement-nb-v1.wav"),
            call_with=read("call-with-announcement.wav"),
            call_without=read("call-without-announcement.wav"),
            agent=left[len(en) :],
            caller=right[len(en) :],
        )

    def prompt(self, claim: str) -> AudioSegment:
        return self.en if claim == "en" else self.nb

    def after_prompt(self) -> AudioSegment:
        """The conversation that follows the announcement in call-with-announcement.wav."""
        return self.call_with[len(self.en) :]


# --- degradations, all made with pydub and ffmpeg -------------------------------------------------


def ringback(ms: int, kind: str) -> AudioSegment:
    """Ring-back tone: CEPT/ETSI TR 101 041 425 Hz 1 s on 4 s off, or North American 440+480 Hz 2 on 4 off."""
    if kind == "eu":
        tone, on, period = Sine(425, sample_rate=RATE).to_audio_segment(1000, volume=-16), 1000, 5000
    else:
        low = Sine(440, sample_rate=RATE).to_audio_segment(2000, volume=-22)
        tone, on, period = (
            low.overlay(Sine(480, sample_rate=RATE).to_audio_segment(2000, volume=-22)),
            2000,
            6000,
        )
    cycle = tone + AudioSegment.silent(period - on, frame_rate=RATE)
    return (cycle * (ms // period + 1))[:ms].set_sample_width(2)


def noise(ms: int, kind: str, dbfs: float, rng: np.random.Generator) -> AudioSegment:
    """White or pink (1/f power, shaped in the frequency domain) noise at ``dbfs`` RMS."""
    n = ms * RATE // 1000
    samples = rng.standard_normal(n)
    if kind == "pink":
        spectrum = np.fft.rfft(samples)
        freqs = np.arange(len(spectrum), dtype=np.float64)
        freqs[0] = 1.0
        samples = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    samples *= 32768 * 10 ** (dbfs / 20) / np.sqrt(np.mean(samples**2))
    pcm = np.clip(np.round(samples), -32768, 32767).astype("<i2")
    return AudioSegment(data=pcm.tobytes(), sample_width=2, frame_rate=RATE, channels=1)


def with_noise(
    segment: AudioSegment, kind: str, snr_db: float, reference: AudioSegment, rng: np.random.Generator
) -> AudioSegment:
    """Add noise at ``snr_db`` below the prompt's RMS level (its pauses included, so a harsh measure)."""
    level = reference.dBFS - snr_db
    if segment.channels == 1:
        return segment.overlay(noise(len(segment), kind, level, rng))
    channels = [c.overlay(noise(len(segment), kind, level, rng)) for c in segment.split_to_mono()]
    return AudioSegment.from_mono_audiosegments(*channels)


def silence(ms: int) -> AudioSegment:
    return AudioSegment.silent(ms, frame_rate=RATE).set_sample_width(2)


def stereo(left: AudioSegment, right: AudioSegment) -> AudioSegment:
    """Two mono segments side by side, the shorter padded with silence to the same frame count."""
    frames = max(int(left.frame_count()), int(right.frame_count()))

    def padded(mono: AudioSegment) -> AudioSegment:
        return mono._spawn(mono.raw_data + b"\0\0" * (frames - int(mono.frame_count())))

    return AudioSegment.from_mono_audiosegments(padded(left), padded(right))


# Export settings: what reaches callrec from a PBX (WAV), Twilio and carriers (G.711 WAV, MP3).
CODECS: dict[str, tuple[str, dict[str, object]]] = {
    "pcm": ("wav", {}),
    "mulaw": ("wav", {"codec": "pcm_mulaw"}),
    "alaw": ("wav", {"codec": "pcm_alaw"}),
    "mp3-16k": ("mp3", {"bitrate": "16k", "parameters": ["-ar", "8000"]}),
    "mp3-8k": ("mp3", {"bitrate": "8k", "parameters": ["-ar", "8000"]}),
    "mp3-44k": ("mp3", {"bitrate": "64k", "parameters": ["-ar", "44100"]}),
    "wav-16k": ("wav", {"parameters": ["-ar", "16000"]}),
    "opus-12k": ("ogg", {"codec": "libopus", "bitrate": "12k"}),
    "opus-6k": ("ogg", {"codec": "libopus", "bitrate": "6k"}),
    "gsm": ("wav", {"codec": "gsm_ms", "parameters": ["-ac", "1"]}),
}


def export(segment: AudioSegment, codec: str, path: Path) -> Path:
    fmt, options = CODECS[codec]
    segment.export(path, format=fmt, **options)
    return path


# --- the cases -----------------------------------------------------------------------------------

Builder = Callable[[Sources, np.random.Generator], AudioSegment]


@dataclass(frozen=True)
class Case:
    name: str
    condition: str  # the row of the score table it counts towards
    build: Builder
    codec: str = "pcm"
    claim: str = "en"
    expect_ms: int | None = None  # where the prompt starts; None: must not verify
    search_ms: int = 60_000

    @property
    def positive(self) -> bool:
        return self.expect_ms is not None

    def make(self, sources: Sources, directory: Path, seed: int) -> Path:
        rng = np.random.default_rng([seed, *self.name.encode()])
        return export(
            self.build(sources, rng), self.codec, directory / f"{self.name}.{CODECS[self.codec][0]}"
        )


def after_ringback(ms: int, kind: str, call: str = "call_with") -> Builder:
    return lambda s, r: ringback(ms, kind) + getattr(s, call)


def after_greeting(ms: int, *, start: int = 2000) -> Builder:
    """The call after ``ms`` of speech from the other fixture call: an agent's or a caller's greeting."""
    return lambda s, r: s.call_without[start : start + ms] + s.call_with


def noisy(build: Builder, kind: str, snr_db: float) -> Builder:
    return lambda s, r: with_noise(build(s, r), kind, snr_db, s.en, r)


def prompt_on_one_side(ms: int, side: str) -> Builder:
    """The agent's side plays the prompt after ``ms``; the caller hears ring-back, then talks over it."""

    def build(s: Sources, r: np.random.Generator) -> AudioSegment:
        agent = silence(ms) + s.en + s.agent
        talk_over = s.call_without[5000 : 5000 + len(s.en)] - 6
        caller = ringback(ms, "us") + talk_over + s.caller
        return stereo(agent, caller) if side == "left" else stereo(caller, agent)

    return build


def norwegian_after_ringback(ms: int) -> Builder:
    return lambda s, r: ringback(ms, "eu") + s.nb + s.after_prompt()


def first_share_of_prompt(share: float) -> Builder:
    return lambda s, r: ringback(3000, "eu") + s.en[: int(len(s.en) * share)] + s.after_prompt()


def noise_only(kind: str) -> Builder:
    return lambda s, r: noise(30_000, kind, -30, r)


def ringback_only(kind: str) -> Builder:
    return lambda s, r: ringback(45_000, kind)


def cases(seed: int) -> list[Case]:
    """The positive and negative cases; offsets, noise and greetings vary with ``seed``."""
    rng = np.random.default_rng(seed)

    def offset() -> int:
        return int(rng.integers(3000, 12001))

    def greeting_ms() -> int:
        return int(rng.integers(2500, 5001))

    found: list[Case] = []

    def case(
        name: str,
        condition: str,
        build: Builder,
        *,
        codec: str = "pcm",
        claim: str = "en",
        expect_ms: int | None = None,
        search_ms: int = 60_000,
    ) -> None:
        found.append(Case(name, condition, build, codec, claim, expect_ms, search_ms))

    # Positives.
    for codec in ("pcm", "mulaw", "alaw", "mp3-16k", "mp3-8k"):
        case(f"clean-{codec}", f"fixture call, {codec}", lambda s, r: s.call_with, codec=codec, expect_ms=0)
    for kind in ("eu", "us"):
        for codec in ("pcm", "mulaw", "mp3-8k"):
            ms = offset()
            case(
                f"ringback-{kind}-{ms}ms-{codec}",
                f"after {kind.upper()} ring-back, {codec}",
                after_ringback(ms, kind),
                codec=codec,
                expect_ms=ms,
            )
    for codec in ("pcm", "mulaw", "mp3-8k"):
        ms = greeting_ms()
        case(
            f"greeting-{ms}ms-{codec}",
            f"after a spoken greeting, {codec}",
            after_greeting(ms),
            codec=codec,
            expect_ms=ms,
        )
    for kind in ("white", "pink"):
        for snr in (10, 5):
            for codec in ("pcm", "mulaw", "mp3-8k"):
                ms = offset()
                case(
                    f"noise-{kind}-{snr}db-{ms}ms-{codec}",
                    f"{kind} noise {snr} dB SNR, {codec}",
                    noisy(after_ringback(ms, "eu"), kind, snr),
                    codec=codec,
                    expect_ms=ms,
                )
    for side in ("left", "right"):
        for codec in ("pcm", "mulaw", "mp3-16k"):
            ms = offset()
            case(
                f"stereo-{side}-only-{ms}ms-{codec}",
                f"stereo, prompt on the {side} only, {codec}",
                prompt_on_one_side(ms, side),
                codec=codec,
                expect_ms=ms,
            )
    ms = offset()
    case(
        f"worst-mulaw-pink5-ringback-{ms}ms",
        "mu-law + pink 5 dB + ring-back",
        noisy(after_ringback(ms, "us"), "pink", 5),
        codec="mulaw",
        expect_ms=ms,
    )
    ms = greeting_ms()
    case(
        f"worst-mp3-white5-greeting-{ms}ms",
        "MP3 8k + white 5 dB + greeting",
        noisy(after_greeting(ms, start=0), "white", 5),
        codec="mp3-8k",
        expect_ms=ms,
    )
    case(
        "resampled-mp3-44k-stereo",
        "44.1 kHz stereo MP3 (resampled)",
        lambda s, r: stereo(ringback(4000, "eu") + s.call_with, silence(4000) + s.call_without),
        codec="mp3-44k",
        expect_ms=4000,
    )
    case(
        "resampled-wav-16k", "16 kHz WAV (resampled)", lambda s, r: s.call_with, codec="wav-16k", expect_ms=0
    )
    case(
        "quiet-inverted",
        "-24 dB and polarity inverted",
        lambda s, r: s.call_with.apply_gain(-24).invert_phase(),
        codec="mulaw",
        expect_ms=0,
    )
    case(
        "window-edge-control",
        "prompt at 14 s, 20 s window",
        after_ringback(14_000, "eu"),
        expect_ms=14_000,
        search_ms=20_000,
    )

    # Negatives.
    for codec in ("pcm", "mulaw", "mp3-8k"):
        case(
            f"no-announcement-{codec}", "call without announcement", lambda s, r: s.call_without, codec=codec
        )
    case(
        "no-announcement-pink5",
        "call without announcement",
        noisy(after_ringback(offset(), "eu", "call_without"), "pink", 5),
        codec="mulaw",
    )
    for codec in ("pcm", "mulaw", "mp3-8k"):
        case(
            f"nb-recording-en-claimed-{codec}",
            "Norwegian played, English claimed",
            norwegian_after_ringback(offset()),
            codec=codec,
        )
        case(
            f"en-recording-nb-claimed-{codec}",
            "English played, Norwegian claimed",
            lambda s, r: s.call_with,
            codec=codec,
            claim="nb",
        )
    case(
        "en-stereo-nb-claimed",
        "English played, Norwegian claimed",
        lambda s, r: stereo(s.en + s.agent, s.en + s.caller),
        claim="nb",
    )
    case("silence", "silence", lambda s, r: silence(30_000))
    case("silence-mulaw", "silence", lambda s, r: silence(30_000), codec="mulaw")
    for kind in ("white", "pink"):
        case(f"noise-only-{kind}", "noise only", noise_only(kind), codec="mulaw")
    for kind in ("eu", "us"):
        case(f"ringback-only-{kind}", "ring-back only", ringback_only(kind))
    case(
        "ringback-greeting-no-prompt",
        "ring-back + greeting, no prompt",
        after_ringback(offset(), "us", "call_without"),
        codec="mp3-8k",
    )
    case(
        "stereo-no-announcement",
        "stereo call without announcement",
        lambda s, r: stereo(silence(3000) + s.agent, ringback(3000, "us") + s.caller),
        codec="mulaw",
    )
    case(
        "after-window-20s",
        "prompt only after the search window",
        after_ringback(14_000, "eu"),
        search_ms=10_000,
    )
    case(
        "after-window-default",
        "prompt only after the search window",
        after_ringback(62_000, "us"),
        codec="mulaw",
    )
    for share in (0.5, 0.75):
        case(f"first-{share:.0%}-of-prompt", "prompt cut short", first_share_of_prompt(share))
    case(
        "last-half-of-prompt",
        "prompt cut short",
        lambda s, r: s.en[len(s.en) // 2 :] + s.after_prompt(),
    )
    return found


# --- fixtures ------------------------------------------------------------------------------------

CASES = {c.name: c for c in cases(0)}


@pytest.fixture(scope="module", autouse=True)
def ffmpeg_without_ffprobe(monkeypatch_module: pytest.MonkeyPatch) -> None:
    if configure_ffmpeg() is None:
        pytest.skip("no ffmpeg to make degraded audio with")

    def no_ffprobe(*args: object, **kwargs: object) -> object:
        raise AssertionError("ffprobe must not be needed")

    # pydub's export only needs ffmpeg; verification must not fall back on ffprobe either.
    monkeypatch_module.setattr(pydub.utils, "mediainfo_json", no_ffprobe)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def sources(audio_fixtures: Path) -> Sources:
    return Sources.load(audio_fixtures)


@pytest.fixture(scope="module")
def prompts(audio_fixtures: Path) -> dict[str, Prompt]:
    return {
        "en": Prompt.from_file(audio_fixtures / "announcement-en-gb-v1.wav"),
        "nb": Prompt.from_file(audio_fixtures / "announcement-nb-v1.wav"),
    }


@pytest.fixture(scope="module")
def results(
    sources: Sources, prompts: dict[str, Prompt], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], AnnouncementCheck]:
    """Build and check each case once; the distribution test reuses every result."""
    directory = tmp_path_factory.mktemp("announcement-cases")
    done: dict[str, AnnouncementCheck] = {}

    def result(name: str) -> AnnouncementCheck:
        if name not in done:
            case = CASES[name]
            path = case.make(sources, directory, seed=0)
            done[name] = verify_announcement(path, prompts[case.claim], search_ms=case.search_ms)
        return done[name]

    return result


# --- the cases -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.positive])
def test_positive(results: Callable[[str], AnnouncementCheck], name: str) -> None:
    check = results(name)
    expect_ms = CASES[name].expect_ms
    assert check.verified, check
    assert check.offset_ms is not None and expect_ms is not None
    assert abs(check.offset_ms - expect_ms) <= OFFSET_TOLERANCE_MS, check
    assert THRESHOLD <= check.score <= 1.0


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if not c.positive])
def test_negative(results: Callable[[str], AnnouncementCheck], name: str) -> None:
    check = results(name)
    assert not check.verified, check
    assert check.offset_ms is None
    assert 0.0 <= check.score < THRESHOLD


def test_threshold_separates_positives_and_negatives_with_margin(
    results: Callable[[str], AnnouncementCheck],
) -> None:
    positives = [results(n).score for n, c in CASES.items() if c.positive]
    negatives = [results(n).score for n, c in CASES.items() if not c.positive]
    assert min(positives) >= THRESHOLD + MARGIN, sorted(positives)[:3]
    assert max(negatives) <= THRESHOLD - MARGIN, sorted(negatives)[-3:]


def test_documented_threshold_is_the_one_in_the_code() -> None:
    found = re.search(r"THRESHOLD = ([0-9.]+)", DOC.read_text())
    assert found is not None and float(found.group(1)) == THRESHOLD


# --- the API -------------------------------------------------------------------------------------


def test_prompt_facts(prompts: dict[str, Prompt]) -> None:
    assert prompts["en"].sample_rate == ANALYSIS_RATE
    assert prompts["en"].duration_ms == 6475
    assert prompts["nb"].duration_ms == 4786


def test_identical_copy_scores_one(audio_fixtures: Path, prompts: dict[str, Prompt]) -> None:
    check = verify_announcement(audio_fixtures / "call-with-announcement.wav", prompts["en"])
    assert check.verified and check.offset_ms == 0
    assert check.score == pytest.approx(1.0)


@pytest.mark.parametrize("codec", ["wav-16k", "mp3-44k"])
def test_prompt_at_another_rate(
    sources: Sources, audio_fixtures: Path, tmp_path: Path, codec: str, prompts: dict[str, Prompt]
) -> None:
    prompt = Prompt.from_file(export(sources.en, codec, tmp_path / "prompt"))
    assert prompt.sample_rate == ANALYSIS_RATE
    assert abs(prompt.duration_ms - prompts["en"].duration_ms) <= 60  # MP3 frames round it up
    recording = export(ringback(5000, "eu") + sources.call_with, "mulaw", tmp_path / "call.wav")
    check = verify_announcement(recording, prompt)
    assert check.verified and check.offset_ms is not None
    assert abs(check.offset_ms - 5000) <= OFFSET_TOLERANCE_MS
    assert not verify_announcement(audio_fixtures / "call-without-announcement.wav", prompt).verified


def test_leading_silence_of_the_prompt_is_not_part_of_the_match(sources: Sources, tmp_path: Path) -> None:
    """A prompt exported with a second of silence either side still reports where its file starts."""
    padded = Prompt.from_file(export(silence(1000) + sources.en + silence(1000), "pcm", tmp_path / "p.wav"))
    assert padded.duration_ms == 8475
    recording = export(ringback(6000, "us") + sources.call_with, "pcm", tmp_path / "call.wav")
    check = verify_announcement(recording, padded)
    assert check.verified and check.offset_ms is not None
    assert abs(check.offset_ms - 5000) <= OFFSET_TOLERANCE_MS  # the prompt file's silence began 1 s earlier


def test_loudness_does_not_move_the_score(
    sources: Sources, prompts: dict[str, Prompt], tmp_path: Path
) -> None:
    rng = np.random.default_rng(7)
    call = with_noise(ringback(4000, "eu") + sources.call_with, "white", 5, sources.en, rng)
    loud = verify_announcement(export(call, "pcm", tmp_path / "loud.wav"), prompts["en"])
    quiet = verify_announcement(export(call.apply_gain(-20), "pcm", tmp_path / "quiet.wav"), prompts["en"])
    assert loud.verified and quiet.verified
    assert quiet.score == pytest.approx(loud.score, abs=0.01)


def test_search_window_includes_its_last_millisecond(
    sources: Sources, prompts: dict[str, Prompt], tmp_path: Path
) -> None:
    recording = export(ringback(10_000, "eu") + sources.call_with, "pcm", tmp_path / "call.wav")
    assert verify_announcement(recording, prompts["en"], search_ms=10_000).offset_ms == 10_000
    assert not verify_announcement(recording, prompts["en"], search_ms=9_900).verified


def test_threshold_argument(audio_fixtures: Path, prompts: dict[str, Prompt]) -> None:
    recording = audio_fixtures / "call-without-announcement.wav"
    assert verify_announcement(recording, prompts["en"], threshold=0.0).verified
    assert not verify_announcement(
        audio_fixtures / "call-with-announcement.wav", prompts["en"], threshold=1.01
    ).verified


def test_recording_shorter_than_the_prompt(
    sources: Sources, prompts: dict[str, Prompt], tmp_path: Path
) -> None:
    recording = export(sources.call_with[:3000], "pcm", tmp_path / "short.wav")
    assert verify_announcement(recording, prompts["en"]) == AnnouncementCheck(False, None, 0.0)


@pytest.mark.parametrize("search_ms", [-1, 5 * 60_000 + 1])
def test_search_ms_out_of_range(audio_fixtures: Path, prompts: dict[str, Prompt], search_ms: int) -> None:
    with pytest.raises(ValueError, match="search_ms"):
        verify_announcement(audio_fixtures / "call-with-announcement.wav", prompts["en"], search_ms=search_ms)


def test_undecodable_recording(prompts: dict[str, Prompt], tmp_path: Path) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all\n" * 100)
    with pytest.raises(AudioError) as raised:
        verify_announcement(junk, prompts["en"])
    assert raised.value.code == "undecodable"
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError) as raised:
        verify_announcement(empty, prompts["en"])
    assert raised.value.code == "empty"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda s: silence(5000), "ms of sound"),
        (lambda s: silence(2000) + s.en[1000:1600] + silence(2000), "ms of sound"),
        (lambda s: ringback(61_000, "eu"), "over the limit"),
    ],
)
def test_unusable_prompts(
    sources: Sources, tmp_path: Path, make: Callable[[Sources], AudioSegment], message: str
) -> None:
    path = export(make(sources), "pcm", tmp_path / "prompt.wav")
    with pytest.raises(PromptError, match=message):
        Prompt.from_file(path)


# --- cost ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_calls(sources: Sources, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 70 s and a 10 min stereo call, the prompt after 50 s of ring-back, as PCM and as mu-law."""
    directory = tmp_path_factory.mktemp("announcement-long")
    opening = stereo(
        ringback(50_000, "eu") + sources.call_with, ringback(50_000, "eu") + sources.call_without
    )
    rest = stereo(sources.agent, sources.caller)
    made: dict[str, Path] = {}
    for codec in ("pcm", "mulaw"):
        made[f"short-{codec}"] = export(opening[:70_000], codec, directory / f"short-{codec}.wav")
        long = opening + rest * math.ceil((600_000 - len(opening)) / len(rest))
        made[f"long-{codec}"] = export(long[:600_000], codec, directory / f"long-{codec}.wav")
    return made


def test_a_minute_of_search_takes_well_under_a_second_of_cpu(
    long_calls: dict[str, Path], prompts: dict[str, Prompt]
) -> None:
    """CPU time of this thread (numpy's FFTs run in it), so other processes' load does not count."""
    verify_announcement(long_calls["short-pcm"], prompts["en"])  # warm up numpy's FFT plans
    started = time.thread_time()
    check = verify_announcement(long_calls["long-pcm"], prompts["en"])
    used = time.thread_time() - started
    assert (
        check.verified
        and check.offset_ms is not None
        and abs(check.offset_ms - 50_000) <= OFFSET_TOLERANCE_MS
    )
    assert used < 0.6, f"{used:.3f} s of CPU for a stereo 60 s search"


@pytest.mark.parametrize("codec", ["pcm", "mulaw"])
def test_memory_does_not_grow_with_the_recording(
    long_calls: dict[str, Path], prompts: dict[str, Prompt], codec: str
) -> None:
    peaks = []
    for length in ("short", "long"):
        tracemalloc.start()
        try:
            assert verify_announcement(long_calls[f"{length}-{codec}"], prompts["en"]).verified
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    short, long = peaks
    assert long <= short * 1.05 + 1_000_000, (
        f"peak {short / 1e6:.1f} MB for 70 s, {long / 1e6:.1f} MB for 10 min"
    )
    assert long < 64_000_000


def test_reads_only_the_opening_through_ffmpeg(
    long_calls: dict[str, Path], prompts: dict[str, Prompt], monkeypatch: pytest.MonkeyPatch
) -> None:
    commands: list[list[str]] = []
    real_popen = subprocess.Popen

    def spy(command: list[str], **kwargs: object) -> object:
        commands.append(command)
        return real_popen(command, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(subprocess, "Popen", spy)
    verify_announcement(long_calls["long-mulaw"], prompts["en"], search_ms=20_000)
    (command,) = commands
    duration = float(command[command.index("-t") + 1])
    assert 20 + 6.0 < duration < 20 + 6.5 + 0.2  # the window, the prompt's sound, a little slack


def test_pcm_wav_needs_no_ffmpeg(
    audio_fixtures: Path, prompts: dict[str, Prompt], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_process(*args: object, **kwargs: object) -> object:
        raise AssertionError("no process may be started for an 8 kHz PCM WAV")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    assert Prompt.from_file(audio_fixtures / "announcement-en-gb-v1.wav").duration_ms == 6475
    stereo_call = audio_fixtures / "call-stereo-agent-left-caller-right.wav"
    assert verify_announcement(stereo_call, prompts["en"]).verified
    with wave.open(str(stereo_call)) as w:
        assert w.getnchannels() == 2
