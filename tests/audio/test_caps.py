"""Caps on every ffmpeg run (callrec.audio.run_ffmpeg): decoded duration, CPU time, memory, files
written; and how a run that hits one is told apart from one killed for other reasons."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import imageio_ffmpeg
import pytest
from pydub import AudioSegment

from callrec import audio
from callrec.audio import AudioError, AudioToolError, Caps, decode_caps, probe_file, run_ffmpeg


def _exes() -> list[str]:
    found = [imageio_ffmpeg.get_ffmpeg_exe()]
    if shutil.which("ffmpeg"):
        found.append(str(shutil.which("ffmpeg")))
    return found


@pytest.fixture(params=_exes(), ids=lambda exe: "system" if exe.startswith("/usr") else "imageio")
def ffmpeg(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each ffmpeg this machine has, as the one callrec runs."""
    exe: str = request.param
    monkeypatch.setattr(AudioSegment, "converter", exe)
    return exe


def _make(exe: str, path: Path, *lavfi: str) -> Path:
    subprocess.run([exe, "-v", "error", "-y", "-f", "lavfi", *lavfi, str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def quiet_10min(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Ten minutes of 48 kHz stereo silence as FLAC: tiny on disk, 115 MB once decoded."""
    path = tmp_path_factory.mktemp("caps") / "quiet.flac"
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    yield _make(exe, path, "-i", "anullsrc=r=48000:cl=stereo", "-t", "600", "-c:a", "flac")


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[bytes]]:
    """Every process callrec starts, as it starts it."""
    processes: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def spy(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        process = real_popen(command, **kwargs)
        processes.append(process)
        return process

    monkeypatch.setattr(subprocess, "Popen", spy)
    return processes


def _limits(pid: int) -> dict[str, str]:
    """Soft limits of a running process, from /proc/<pid>/limits."""
    out = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        name, soft = line[:26].strip(), line[26:47].strip()
        out[name] = soft
    return out


def test_decode_caps_scale_cpu_time_with_duration() -> None:
    assert decode_caps(1000).cpu_seconds == audio.CPU_FLOOR_S + 1
    six_hours = decode_caps(audio.DEFAULT_MAX_DURATION_MS)
    assert six_hours.cpu_seconds == audio.CPU_FLOOR_S + 360
    assert six_hours.output_bytes == 0
    with pytest.raises(ValueError):
        decode_caps(0)


def test_every_run_starts_under_the_limits(
    ffmpeg: str, quiet_10min: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    seen: dict[str, str] = {}

    def read(stream: IO[bytes]) -> int:
        # ffmpeg is running (blocked on the pipe until we read): look at its limits.
        stream.read(4096)
        seen.update(_limits(spawned[-1].pid))
        return sum(len(chunk) for chunk in iter(lambda: stream.read(1 << 20), b""))

    caps = decode_caps(30_000)
    run = run_ffmpeg(quiet_10min, ["-c:a", "pcm_s16le", "-f", "s16le"], caps=caps, read=read)
    assert run.returncode == 0
    print(f"limits of ffmpeg while it ran: {seen}")
    assert seen["Max cpu time"] == str(caps.cpu_seconds)
    assert seen["Max address space"] == str(audio.FFMPEG_ADDRESS_SPACE)
    assert int(seen["Max file size"]) < 64 << 20
    assert seen["Max core file size"] == "0"
    # -t: 30 s decoded of the ten minutes, to the frame (48 kHz stereo 16-bit), plus the 4096 read first.
    assert run.output == 30 * 48000 * 4 - 4096


def test_probe_stops_a_second_past_the_limit(
    ffmpeg: str, quiet_10min: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    with pytest.raises(AudioError) as caught:
        probe_file(quiet_10min, max_duration_ms=120_000)
    assert caught.value.code == "too_long"
    [process] = spawned
    command = process.args
    assert isinstance(command, list)
    assert command[command.index("-t") + 1] == "121.000"


def test_probe_default_limit_is_six_hours(ffmpeg: str, quiet_10min: Path, spawned: list[Any]) -> None:
    assert probe_file(quiet_10min).duration_ms == 600_000
    command = spawned[0].args
    assert command[command.index("-t") + 1] == f"{6 * 3600 + 1}.000"


def test_cpu_cap_is_the_files_fault(ffmpeg: str, quiet_10min: Path) -> None:
    """A run that spends its CPU allowance fails as too_costly (permanent), not as a crash."""
    # A costly filter stands in for a file built to make a decoder spin: ~4 s of CPU at full length.
    caps = Caps(duration_ms=600_000, cpu_seconds=1)
    options = ["-af", "aresample=768000:resampler=soxr:precision=33", "-f", "null"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with pytest.raises(AudioError) as caught:
        run_ffmpeg(quiet_10min, options, caps=caps)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(f"CPU used by the capped run: {used:.2f} s (cap 1 s)")
    assert caught.value.code == "too_costly"
    assert "1 s of CPU time" in caught.value.message
    assert used < 1 + 5  # never past the hard limit


def test_file_size_limit_stops_a_write_past_the_cap(ffmpeg: str, quiet_10min: Path, tmp_path: Path) -> None:
    """RLIMIT_FSIZE is the backstop behind -fs: a run told to write only to a pipe that writes a
    file anyway is stopped at the slack (16 MiB) with SIGXFSZ, and that is the file's fault."""
    stray = tmp_path / "stray.wav"
    options = ["-c:a", "pcm_s16le", "-f", "wav", "-y", "file:" + str(stray), "-map", "0:a:0", "-f", "null"]
    with pytest.raises(AudioError) as caught:
        run_ffmpeg(quiet_10min, options, caps=decode_caps(600_000))
    assert caught.value.code == "too_large"
    print(f"stray file stopped at {stray.stat().st_size} bytes")
    assert stray.stat().st_size <= 16 << 20


def test_output_cap(ffmpeg: str, quiet_10min: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    with pytest.raises(AudioError) as caught:
        run_ffmpeg(
            quiet_10min,
            ["-c:a", "pcm_s16le", "-f", "wav"],
            caps=decode_caps(600_000, output_bytes=1 << 20),
            output=out,
        )
    assert caught.value.code == "too_large"
    # ffmpeg stopped at the cap (and one packet), not at the 115 MB the whole file decodes to.
    assert out.stat().st_size < 2 << 20
    with pytest.raises(ValueError):
        run_ffmpeg(quiet_10min, ["-f", "wav"], caps=decode_caps(1000), output=out)


def test_a_kill_from_outside_is_not_the_files_fault(
    ffmpeg: str, quiet_10min: Path, spawned: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL with the CPU allowance unspent (the OOM killer, an operator): AudioToolError, so the
    job is retried, never a permanent rejection of the recording."""
    real = audio._read_pcm_stream

    def killed_midway(stream: IO[bytes]) -> tuple[int, int, int] | None:
        stream.read(1 << 16)
        os.kill(spawned[-1].pid, signal.SIGKILL)
        return real(stream)

    monkeypatch.setattr(audio, "_read_pcm_stream", killed_midway)
    with pytest.raises(AudioToolError) as caught:
        probe_file(quiet_10min)
    assert "signal 9" in str(caught.value)
