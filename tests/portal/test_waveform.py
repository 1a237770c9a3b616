"""Waveform peaks, streamed from ffmpeg a block at a time (callrec.portal.waveform)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from callrec import audio
from callrec.portal.waveform import BUCKETS, file_peaks


@pytest.fixture
def loud_then_quiet(tmp_path: Path) -> Path:
    """Stereo 16 kHz FLAC: 3 s of a tone at half scale on the left only, then 3 s of silence."""
    exe = audio.configure_ffmpeg()
    assert exe is not None
    path = tmp_path / "call.flac"
    tone = "sine=f=440:r=16000:d=3,volume=4"  # lavfi's sine is at 1/8 of full scale
    graph = "[0][1]amerge=inputs=2,apad=whole_dur=6"
    lavfi = ["-f", "lavfi", "-i", tone, "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono:d=3"]
    subprocess.run([exe, "-v", "error", "-y", *lavfi, "-filter_complex", graph, str(path)], check=True)
    return path


def test_peaks_of_each_slice(loud_then_quiet: Path) -> None:
    info = audio.probe_file(loud_then_quiet)
    peaks = file_peaks(loud_then_quiet, duration_ms=info.duration_ms, sample_rate=info.sample_rate)
    assert len(peaks) == BUCKETS
    half = BUCKETS // 2
    # The mono mix halves a tone on one side only: about a quarter of full scale.
    assert all(0.2 < p < 0.3 for p in peaks[: half - 1])
    assert all(p == 0.0 for p in peaks[half + 1 :])


def test_decodes_no_more_than_the_row_says(loud_then_quiet: Path) -> None:
    """A file longer than its row is read only as far as the row's duration (plus a second)."""
    peaks = file_peaks(loud_then_quiet, duration_ms=1000, sample_rate=16000, buckets=10)
    assert len(peaks) == 10 and all(p > 0.2 for p in peaks)


def test_undecodable(tmp_path: Path) -> None:
    path = tmp_path / "noise.bin"
    path.write_bytes(b"not audio at all" * 100)
    with pytest.raises(audio.AudioError):
        file_peaks(path, duration_ms=1000, sample_rate=8000)
