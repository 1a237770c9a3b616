"""PCI redaction through ffmpeg: exact digital silence on the span's samples, every other sample as
it was, FLAC with the input's channels and sample rate, under the caps of callrec.audio."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import numpy.typing as npt
import pytest
from pydub import AudioSegment

from callrec import audio
from callrec.consent.redaction import Span, filter_graph, redact_file, sample_spans


def _exes() -> list[str]:
    found = [imageio_ffmpeg.get_ffmpeg_exe()]
    if shutil.which("ffmpeg"):
        found.append(str(shutil.which("ffmpeg")))
    return found


@pytest.fixture(params=_exes(), ids=lambda exe: "system" if exe.startswith("/usr") else "imageio")
def ffmpeg(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    exe: str = request.param
    monkeypatch.setattr(AudioSegment, "converter", exe)
    return exe


# name: (lavfi channels expression, rate, encoder options, width of the samples compared)
SOURCES = {
    "pcm16-mono-8k": (1, 8000, ["-c:a", "pcm_s16le"], "wav", 16),
    "pcm24-stereo-44k1": (2, 44100, ["-c:a", "pcm_s24le"], "wav", 32),
    "mulaw-stereo-8k": (2, 8000, ["-c:a", "pcm_mulaw"], "wav", 16),
    "mp3-mono-8k": (1, 8000, ["-c:a", "libmp3lame", "-b:a", "32k"], "mp3", 16),
    "flac-6ch-48k": (6, 48000, ["-c:a", "flac"], "flac", 16),
}


def _source(exe: str, tmp_path: Path, name: str) -> Path:
    channels, rate, codec, suffix, _ = SOURCES[name]
    path = tmp_path / f"{name}.{suffix}"
    # A different tone on each channel, loud enough that no sample in a span is zero by chance.
    # (Odd frequencies: none of them crosses zero exactly at a span's edge.)
    tones = [f"sine=f={317 + 171 * c}:r={rate}:d=6" for c in range(channels)]
    inputs = [arg for tone in tones for arg in ("-f", "lavfi", "-i", tone)]
    merge = ["-filter_complex", f"amerge=inputs={channels}"] if channels > 1 else []
    subprocess.run([exe, "-v", "error", "-y", *inputs, *merge, *codec, str(path)], check=True)
    return path


def _decode(exe: str, path: Path, width: int) -> npt.NDArray[np.int64]:
    fmt = "s16le" if width == 16 else "s32le"
    raw = subprocess.run(
        [exe, "-v", "error", "-i", str(path), "-f", fmt, "-c:a", "pcm_" + fmt, "-"],
        capture_output=True,
        check=True,
    ).stdout
    channels = audio.probe_file(path).channels
    return np.frombuffer(raw, dtype="<i2" if width == 16 else "<i4").reshape(-1, channels).astype(np.int64)


@pytest.mark.parametrize("name", list(SOURCES))
def test_spans_are_exact_zero_and_the_rest_is_untouched(ffmpeg: str, tmp_path: Path, name: str) -> None:
    src = _source(ffmpeg, tmp_path, name)
    info = audio.probe_file(src)
    # From the first sample; an odd span inside; one running past the end.
    spans = [Span(0, 250), Span(1234, 2001), Span(5500, 99_000)]
    dst = tmp_path / "redacted.flac"
    redact_file(src, dst, spans, info=info, max_duration_ms=60_000, max_bytes=64 << 20)

    out = audio.probe_file(dst)
    assert (out.format, out.codec) == ("flac", "flac")
    assert (out.channels, out.sample_rate, out.duration_ms) == (
        info.channels,
        info.sample_rate,
        info.duration_ms,
    )
    width = SOURCES[name][4]
    before, after = _decode(ffmpeg, src, width), _decode(ffmpeg, dst, width)
    assert before.shape == after.shape
    rate = info.sample_rate
    silenced = np.zeros(len(before), dtype=bool)
    silenced[: 250 * rate // 1000] = True
    silenced[1234 * rate // 1000 : -(-2001 * rate // 1000)] = True
    silenced[5500 * rate // 1000 :] = True
    print(
        f"{name}: {int(silenced.sum())} of {len(before)} frames silenced, {dst.stat().st_size} bytes of FLAC"
    )
    assert np.all(after[silenced] == 0)
    assert np.array_equal(after[~silenced], before[~silenced])
    # The samples just outside each span were sound, and still are: the boundaries are exact.
    edges = [250 * rate // 1000, 1234 * rate // 1000 - 1, -(-2001 * rate // 1000), 5500 * rate // 1000 - 1]
    for edge in edges:
        assert np.any(before[edge] != 0) and np.array_equal(after[edge], before[edge])


def test_24_bit_stays_24_bit(ffmpeg: str, tmp_path: Path) -> None:
    src = _source(ffmpeg, tmp_path, "pcm24-stereo-44k1")
    dst = tmp_path / "redacted.flac"
    redact_file(
        src, dst, [Span(100, 200)], info=audio.probe_file(src), max_duration_ms=60_000, max_bytes=64 << 20
    )
    log = subprocess.run([ffmpeg, "-hide_banner", "-i", str(dst)], capture_output=True, text=True).stderr
    assert "s32 (24 bit)" in log


def test_milliseconds_become_whole_samples_outwards() -> None:
    # 44.1 kHz: 10 ms is 441 samples; 10.5 ms does not fall on a sample, so the span grows.
    assert sample_spans([Span(10, 21)], sample_rate=44100, duration_ms=1000) == [(441, 927)]
    # Spans that touch once rounded are joined; one past the end runs to the end.
    assert sample_spans([Span(0, 1), Span(2, 3), Span(900, 5000)], sample_rate=8000, duration_ms=1000) == [
        (0, 8),
        (16, 24),
        (7200, None),
    ]
    # Nothing to do for an empty span; a span starting past the end is clamped to the end.
    assert sample_spans([Span(5, 5)], sample_rate=8000, duration_ms=1000) == []
    assert sample_spans([Span(2000, 3000)], sample_rate=8000, duration_ms=1000) == [(8000, None)]


def test_filter_graph_shape() -> None:
    assert filter_graph([(0, None)]) == "volume=volume=0:precision=fixed"
    graph = filter_graph([(0, 8), (16, None)])
    assert graph == (
        "asegment=samples=8|16[p0][p1][p2];[p0]volume=volume=0:precision=fixed[z0];"
        "[p2]volume=volume=0:precision=fixed[z2];[z0][p1][z2]concat=n=3:v=0:a=1,asetpts=N/SR/TB"
    )


def test_output_over_the_cap_is_refused_and_removed(ffmpeg: str, tmp_path: Path) -> None:
    src = _source(ffmpeg, tmp_path, "pcm24-stereo-44k1")
    dst = tmp_path / "redacted.flac"
    with pytest.raises(audio.AudioError) as caught:
        redact_file(
            src, dst, [Span(100, 200)], info=audio.probe_file(src), max_duration_ms=60_000, max_bytes=50_000
        )
    assert caught.value.code == "too_large"
    assert "redacted recording would be over the limit" in caught.value.message
    assert not dst.exists()


def test_decoding_stops_at_the_duration_cap(ffmpeg: str, tmp_path: Path) -> None:
    """Redaction never trusts the probe alone: it decodes at most a second past max_duration."""
    src = _source(ffmpeg, tmp_path, "pcm16-mono-8k")
    dst = tmp_path / "redacted.flac"
    redact_file(
        src, dst, [Span(100, 200)], info=audio.probe_file(src), max_duration_ms=2000, max_bytes=64 << 20
    )
    assert audio.probe_file(dst).duration_ms == 3000
