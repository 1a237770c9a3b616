"""callrec.audio against real audio: the shared fixtures and telephony-style copies of them made
here with pydub and ffmpeg (G.711 mu-law and A-law, 8 kHz MP3, Ogg Opus, noise, late start,
stereo, long, silence), plus broken files of every kind the ingest worker will meet.

ffmpeg comes from imageio-ffmpeg (always installed) and, when the machine has one, from the
system; both are run with ffprobe absent from PATH and pydub's ffprobe helper booby-trapped."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import subprocess
import warnings
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import pytest

from callrec.audio import (
    AudioError,
    AudioInfo,
    AudioToolError,
    configure_ffmpeg,
    content_type_for,
    probe_file,
)

with warnings.catch_warnings():  # pydub warns on import when PATH has no ffmpeg; see callrec.audio
    warnings.simplefilter("ignore", RuntimeWarning)
    import pydub.audio_segment
    import pydub.utils
    from pydub import AudioSegment
    from pydub.generators import WhiteNoise

FIXTURES = [
    "announcement-en-gb-v1.wav",
    "announcement-nb-v1.wav",
    "call-with-announcement.wav",
    "call-without-announcement.wav",
    "call-stereo-agent-left-caller-right.wav",
]
# What a careless caller might name a downloaded file; none of it may reach an error message.
PERSONAL_NAME = "+447700900123 Jane Doe"


def wav_facts(path: Path) -> tuple[int, int, int]:
    """(channels, sample rate, duration in ms) as the stdlib reads them: an independent oracle."""
    with wave.open(str(path), "rb") as w:
        return w.getnchannels(), w.getframerate(), w.getnframes() * 1000 // w.getframerate()


def truncate(source: Path, target: Path, fraction: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def _no_ffprobe(*args: object, **kwargs: object) -> object:
    raise AssertionError("ffprobe was called")


def _imageio_exe() -> str:
    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        pytest.skip("imageio-ffmpeg has no ffmpeg binary for this platform")
    if not Path(exe).is_absolute():
        pytest.skip("imageio-ffmpeg fell back to a system ffmpeg")
    return exe


def _hide_tools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """PATH without ffmpeg or ffprobe; pydub back at its default; its ffprobe helper forbidden."""
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(AudioSegment, "converter", "ffmpeg")
    monkeypatch.setattr(pydub.utils, "mediainfo_json", _no_ffprobe)
    monkeypatch.setattr(pydub.audio_segment, "mediainfo_json", _no_ffprobe)


@pytest.fixture
def imageio_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Only imageio-ffmpeg's ffmpeg exists; probe_file has to find it by itself."""
    exe = _imageio_exe()
    _hide_tools(monkeypatch, tmp_path)
    return exe


@pytest.fixture(params=["imageio", "system"])
def ffmpeg_source(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Each ffmpeg this machine has, with no ffprobe reachable either way."""
    if request.param == "imageio":
        exe = _imageio_exe()
        _hide_tools(monkeypatch, tmp_path)
        return exe
    system = shutil.which("ffmpeg")
    if system is None:
        if os.environ.get("CI"):  # scripts/test installs Debian's ffmpeg; CI must exercise it
            pytest.fail("no system ffmpeg on PATH in CI")
        pytest.skip("no system ffmpeg on PATH")
    bin_dir = tmp_path / "ffmpeg-only"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").symlink_to(system)
    _hide_tools(monkeypatch, tmp_path)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert configure_ffmpeg() == str(bin_dir / "ffmpeg")
    return system


@pytest.fixture
def no_ffmpeg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ffmpeg anywhere, and starting any process fails the test."""

    def missing() -> str:
        raise RuntimeError("No ffmpeg exe could be found.")

    def no_process(*args: object, **kwargs: object) -> object:
        raise AssertionError("a process was started")

    _hide_tools(monkeypatch, tmp_path)
    monkeypatch.setattr(AudioSegment, "converter", str(tmp_path / "no-such-ffmpeg"))
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", missing)
    monkeypatch.setattr(subprocess, "Popen", no_process)


# --- degraded copies of the fixtures, made once per session ---------------------------------------


@dataclass(frozen=True)
class Variant:
    path: Path
    expected: AudioInfo
    exact: bool  # lossless: duration to the millisecond; lossy codecs may add or trim a few ms


def _encoders(exe: str) -> str:
    return subprocess.run(
        [exe, "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture(scope="session")
def variants(audio_fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Variant]]:
    before = AudioSegment.converter
    exe = configure_ffmpeg()
    if exe is None:
        pytest.skip("no ffmpeg to make degraded audio with")
    out = tmp_path_factory.mktemp("degraded")
    announced = AudioSegment.from_wav(audio_fixtures / "call-with-announcement.wav")
    plain = AudioSegment.from_wav(audio_fixtures / "call-without-announcement.wav")
    stereo = AudioSegment.from_wav(audio_fixtures / "call-stereo-agent-left-caller-right.wav")
    noise = WhiteNoise(sample_rate=8000, bit_depth=16).to_audio_segment(
        duration=len(announced) + 4000, volume=-32
    )
    # Ring-back and a greeting before the announcement, line noise under everything.
    late_noisy = (AudioSegment.silent(4000, frame_rate=8000) + announced).overlay(noise)
    agent_caller = AudioSegment.from_mono_audiosegments(announced[:15000], plain[:15000])
    long_call = announced * 50  # about 20 minutes

    def make(
        name: str, segment: AudioSegment, fmt: str, expect: str, rate: int = 0, **export: object
    ) -> None:
        """Export ``segment`` with pydub; ``expect`` (codec) and ``rate`` are what probe_file should say."""
        path = out / f"{name}.{fmt}"
        segment.export(path, format=fmt, **export)
        expected = AudioInfo(
            format=fmt,
            codec=expect,
            duration_ms=int(segment.frame_count()) * 1000 // segment.frame_rate,
            channels=segment.channels,
            sample_rate=rate or segment.frame_rate,
        )
        exact = expect.startswith("pcm_")
        made[name] = Variant(path, expected, exact)

    made: dict[str, Variant] = {}
    make("mulaw", announced, "wav", "pcm_mulaw", codec="pcm_mulaw")
    make("mulaw-late-noisy", late_noisy, "wav", "pcm_mulaw", codec="pcm_mulaw")
    make("alaw-stereo", stereo, "wav", "pcm_alaw", codec="pcm_alaw")
    make("mp3-8k", late_noisy, "mp3", "mp3", bitrate="16k", parameters=["-ar", "8000"])
    make("mp3-stereo", stereo, "mp3", "mp3", bitrate="24k")
    if "libopus" in _encoders(exe):
        # Opus always decodes at 48 kHz, whatever rate went in (RFC 7845 section 5.1).
        make("opus", late_noisy, "ogg", "opus", rate=48000, codec="libopus", bitrate="12k")
        make("opus-stereo", stereo, "ogg", "opus", rate=48000, codec="libopus", bitrate="16k")
    make("pcm-late-noisy", late_noisy, "wav", "pcm_s16le")
    make("pcm-stereo", agent_caller, "wav", "pcm_s16le")
    make("pcm-silence", AudioSegment.silent(30000, frame_rate=8000), "wav", "pcm_s16le")
    make("pcm-long", long_call, "wav", "pcm_s16le")
    make("pcm-u8", announced.set_sample_width(1), "wav", "pcm_u8")
    # pydub keeps 24-bit audio as 32-bit, so the 24-bit file is written with the wave module.
    wideband = announced.set_frame_rate(16000)
    s24 = bytearray(len(wideband.raw_data) // 2 * 3)
    s24[1::3], s24[2::3] = wideband.raw_data[0::2], wideband.raw_data[1::2]
    with wave.open(str(out / "pcm-s24-16k.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(16000)
        w.writeframes(bytes(s24))
    duration_ms = int(wideband.frame_count()) * 1000 // 16000
    made["pcm-s24-16k"] = Variant(
        out / "pcm-s24-16k.wav", AudioInfo("wav", "pcm_s24le", duration_ms, 1, 16000), True
    )
    make("pcm-s32", announced.set_sample_width(4), "wav", "pcm_s32le")
    AudioSegment.converter = before
    yield made


def _variant_names() -> list[str]:
    return [
        "mulaw",
        "mulaw-late-noisy",
        "alaw-stereo",
        "mp3-8k",
        "mp3-stereo",
        "opus",
        "opus-stereo",
        "pcm-late-noisy",
        "pcm-stereo",
        "pcm-silence",
        "pcm-long",
        "pcm-u8",
        "pcm-s24-16k",
        "pcm-s32",
    ]


def _get(variants: dict[str, Variant], name: str) -> Variant:
    if name not in variants:
        pytest.skip(f"this ffmpeg cannot make {name}")
    return variants[name]


def assert_matches(info: AudioInfo, variant: Variant) -> None:
    expected = variant.expected
    assert (info.format, info.codec, info.channels, info.sample_rate) == (
        expected.format,
        expected.codec,
        expected.channels,
        expected.sample_rate,
    )
    if variant.exact:
        assert info.duration_ms == expected.duration_ms
    else:
        assert abs(info.duration_ms - expected.duration_ms) <= 100


# --- what a good file looks like ------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_info(audio_fixtures: Path, name: str) -> None:
    channels, rate, duration_ms = wav_facts(audio_fixtures / name)
    assert probe_file(audio_fixtures / name) == AudioInfo("wav", "pcm_s16le", duration_ms, channels, rate)


@pytest.mark.parametrize("name", FIXTURES)
def test_pcm_wav_needs_no_ffmpeg(audio_fixtures: Path, name: str, no_ffmpeg: None) -> None:
    channels, rate, duration_ms = wav_facts(audio_fixtures / name)
    assert probe_file(audio_fixtures / name) == AudioInfo("wav", "pcm_s16le", duration_ms, channels, rate)


@pytest.mark.parametrize("name", _variant_names())
def test_degraded_variant_info(variants: dict[str, Variant], name: str, ffmpeg_source: str) -> None:
    variant = _get(variants, name)
    assert_matches(probe_file(variant.path), variant)


def test_probe_finds_imageio_ffmpeg_by_itself(variants: dict[str, Variant], imageio_only: str) -> None:
    variant = variants["mp3-8k"]
    assert_matches(probe_file(variant.path), variant)
    assert AudioSegment.converter == imageio_only


def test_probe_uses_ffmpeg_pydub_is_configured_with(
    variants: dict[str, Variant], imageio_only: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(AudioSegment, "converter", imageio_only)
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", _no_ffprobe)  # must not be asked
    assert_matches(probe_file(variants["mulaw"].path), variants["mulaw"])


def test_compressed_wav_without_ffmpeg_is_a_tool_error(variants: dict[str, Variant], no_ffmpeg: None) -> None:
    with pytest.raises(AudioToolError):
        probe_file(variants["mulaw"].path)


def test_streamed_wav_with_unfinalised_sizes(audio_fixtures: Path, tmp_path: Path) -> None:
    """A recorder that never returned to fix the header leaves 0xFFFFFFFF: read to end of file."""
    data = bytearray((audio_fixtures / "call-with-announcement.wav").read_bytes())
    data_at = data.index(b"data")
    data[4:8] = data[data_at + 4 : data_at + 8] = b"\xff\xff\xff\xff"
    path = tmp_path / "streamed.wav"
    path.write_bytes(bytes(data))
    channels, rate, duration_ms = wav_facts(audio_fixtures / "call-with-announcement.wav")
    assert probe_file(path) == AudioInfo("wav", "pcm_s16le", duration_ms, channels, rate)


def test_wav_with_chunks_before_and_after_data(audio_fixtures: Path, tmp_path: Path) -> None:
    source = AudioSegment.from_wav(audio_fixtures / "announcement-nb-v1.wav")
    pcm = source.raw_data
    fmt = (audio_fixtures / "announcement-nb-v1.wav").read_bytes()[12:36]  # the 16-byte fmt chunk
    odd_list = b"LIST" + (5).to_bytes(4, "little") + b"INFOx" + b"\x00"  # odd size, padded
    body = b"WAVE" + fmt + odd_list + b"data" + len(pcm).to_bytes(4, "little") + pcm + b"id3 \x00\x00\x00\x00"
    path = tmp_path / "chunks.wav"
    path.write_bytes(b"RIFF" + len(body).to_bytes(4, "little") + body)
    assert probe_file(path) == AudioInfo("wav", "pcm_s16le", int(source.frame_count()) // 8, 1, 8000)


def test_max_duration_equal_to_length_is_allowed(variants: dict[str, Variant], imageio_only: str) -> None:
    for name in ("pcm-stereo", "mp3-stereo"):
        info = probe_file(variants[name].path)
        assert probe_file(variants[name].path, max_duration_ms=info.duration_ms) == info


@pytest.mark.parametrize(
    ("info", "content_type"),
    [
        (AudioInfo("wav", "pcm_s16le", 1, 1, 8000), "audio/wav"),
        (AudioInfo("wav", "pcm_mulaw", 1, 1, 8000), "audio/wav"),
        (AudioInfo("mp3", "mp3", 1, 1, 8000), "audio/mpeg"),
        (AudioInfo("ogg", "opus", 1, 1, 48000), "audio/ogg"),
        (AudioInfo("flac", "flac", 1, 1, 8000), "audio/flac"),
        (AudioInfo("mp4", "aac", 1, 1, 8000), "audio/mp4"),
        (AudioInfo("webm", "opus", 1, 1, 48000), "audio/webm"),
        (AudioInfo("nut", "pcm_s16le", 1, 1, 8000), "application/octet-stream"),
    ],
)
def test_content_type_for(info: AudioInfo, content_type: str) -> None:
    assert content_type_for(info) == content_type


def test_content_type_for_probed_files(variants: dict[str, Variant], imageio_only: str) -> None:
    assert content_type_for(probe_file(variants["mp3-8k"].path)) == "audio/mpeg"
    assert content_type_for(probe_file(variants["mulaw"].path)) == "audio/wav"
    assert content_type_for(probe_file(_get(variants, "opus").path)) == "audio/ogg"


# --- each error code ------------------------------------------------------------------------------


def test_empty(tmp_path: Path, no_ffmpeg: None) -> None:
    for suffix in (".wav", ".mp3", ""):
        path = tmp_path / f"{PERSONAL_NAME}{suffix}"
        path.touch()
        with pytest.raises(AudioError) as caught:
            probe_file(path)
        assert caught.value.code == "empty"


HTML_404 = b"""<!DOCTYPE html>
<html><head><title>404 Not Found</title></head>
<body><h1>Not Found</h1><p>The requested recording was not found on this server.</p></body></html>
"""


def _not_audio(tmp_path: Path) -> dict[str, Path]:
    rng = random.Random(1234)
    files = {
        "html-named-wav.wav": HTML_404,
        "json-error.mp3": json.dumps(
            {"code": 20404, "message": "The requested resource was not found"}
        ).encode(),
        "plain-text.wav": b"This is not audio.\n" * 200,
        "random.wav": rng.randbytes(64 * 1024),
        "random.mp3": rng.randbytes(200 * 1024),
        "random.ogg": rng.randbytes(3 * 1024),
        "random": rng.randbytes(1024),
        "riff-not-wave.wav": b"RIFF\x24\x00\x00\x00AVI " + rng.randbytes(64),
    }
    paths = {}
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        paths[name] = path
    return paths


@pytest.mark.parametrize(
    "name",
    [
        "html-named-wav.wav",
        "json-error.mp3",
        "plain-text.wav",
        "random.wav",
        "random.mp3",
        "random.ogg",
        "random",
        "riff-not-wave.wav",
    ],
)
def test_undecodable(tmp_path: Path, name: str, ffmpeg_source: str) -> None:
    with pytest.raises(AudioError) as caught:
        probe_file(_not_audio(tmp_path)[name])
    assert caught.value.code == "undecodable"


def test_wav_with_broken_format_chunk(tmp_path: Path, no_ffmpeg: None) -> None:
    path = tmp_path / "broken.wav"
    path.write_bytes(
        b"RIFF\x28\x00\x00\x00WAVEfmt \x08\x00\x00\x00\x01\x00\x01\x00\x40\x1f\x00\x00data\x00\x00\x00\x00"
    )
    with pytest.raises(AudioError) as caught:
        probe_file(path)
    assert caught.value.code == "undecodable"


def test_playlists_and_scripts_are_not_followed(
    variants: dict[str, Variant], tmp_path: Path, ffmpeg_source: str
) -> None:
    """A download that is an ffconcat script or HLS playlist must not make ffmpeg read other files."""
    target = tmp_path / "other-call.mp3"
    shutil.copy(variants["mp3-8k"].path, target)
    concat = tmp_path / "concat.wav"
    concat.write_text(f"ffconcat version 1.0\nfile {target.name}\n")
    playlist = tmp_path / "playlist.mp3"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:30\n#EXTINF:30,\n{target.name}\n#EXT-X-ENDLIST\n")
    for path in (concat, playlist):
        with pytest.raises(AudioError) as caught:
            probe_file(path)
        assert caught.value.code == "undecodable"


@pytest.mark.parametrize("fraction", [0.9, 0.5, 0.01])
def test_truncated_pcm_wav(audio_fixtures: Path, tmp_path: Path, fraction: float, no_ffmpeg: None) -> None:
    source = audio_fixtures / "call-stereo-agent-left-caller-right.wav"
    with pytest.raises(AudioError) as caught:
        probe_file(truncate(source, tmp_path / "cut.wav", fraction))
    assert caught.value.code == "truncated"


@pytest.mark.parametrize("keep", [12, 20, 30, 43, 44])
def test_wav_cut_inside_header(audio_fixtures: Path, tmp_path: Path, keep: int, no_ffmpeg: None) -> None:
    path = tmp_path / "header.wav"
    path.write_bytes((audio_fixtures / "announcement-en-gb-v1.wav").read_bytes()[:keep])
    with pytest.raises(AudioError) as caught:
        probe_file(path)
    assert caught.value.code == "truncated"


@pytest.mark.parametrize(
    ("name", "fraction"),
    [
        ("mp3-8k", 0.97),
        ("mp3-8k", 0.6),
        ("mp3-8k", 0.2),
        ("mp3-stereo", 0.75),
        ("mulaw", 0.5),
        ("alaw-stereo", 0.99),
        ("opus", 0.95),
        ("opus", 0.3),
        ("opus-stereo", 0.7),
    ],
)
def test_truncated_compressed(
    variants: dict[str, Variant], tmp_path: Path, name: str, fraction: float, ffmpeg_source: str
) -> None:
    variant = _get(variants, name)
    cut = truncate(variant.path, tmp_path / f"cut{variant.path.suffix}", fraction)
    with pytest.raises(AudioError) as caught:
        probe_file(cut)
    assert caught.value.code == "truncated"


@pytest.mark.parametrize("into_page", [2, 4, 20, 40])
def test_ogg_cut_just_after_a_page_starts(
    variants: dict[str, Variant], tmp_path: Path, into_page: int, imageio_only: str
) -> None:
    data = _get(variants, "opus").path.read_bytes()
    last_page = data.rindex(b"OggS")
    path = tmp_path / "cut.ogg"
    path.write_bytes(data[: last_page + into_page])
    with pytest.raises(AudioError) as caught:
        probe_file(path)
    assert caught.value.code == "truncated"


def test_ogg_cut_between_pages_is_not_detected(
    variants: dict[str, Variant], tmp_path: Path, imageio_only: str
) -> None:
    """Known limit: a cut exactly on a page boundary leaves a valid, shorter Ogg stream."""
    data = _get(variants, "opus").path.read_bytes()
    path = tmp_path / "cut.ogg"
    path.write_bytes(data[: data.rindex(b"OggS")])
    assert probe_file(path).duration_ms < variants["opus"].expected.duration_ms


def test_too_long_pcm(variants: dict[str, Variant], no_ffmpeg: None) -> None:
    with pytest.raises(AudioError) as caught:
        probe_file(variants["pcm-long"].path, max_duration_ms=60_000)
    assert caught.value.code == "too_long"
    assert "60000 ms" in str(caught.value)


@pytest.mark.parametrize("name", ["mp3-8k", "mulaw", "opus"])
def test_too_long_compressed(variants: dict[str, Variant], name: str, ffmpeg_source: str) -> None:
    variant = _get(variants, name)
    with pytest.raises(AudioError) as caught:
        probe_file(variant.path, max_duration_ms=variant.expected.duration_ms - 1000)
    assert caught.value.code == "too_long"


def test_too_long_stops_decoding_early(
    variants: dict[str, Variant], imageio_only: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ffmpeg is told to stop a second past the limit instead of decoding a long file to the end."""
    commands: list[list[str]] = []
    real_popen = subprocess.Popen

    def spy(command: list[str], **kwargs: object) -> object:
        commands.append(command)
        return real_popen(command, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(subprocess, "Popen", spy)
    with pytest.raises(AudioError) as caught:
        probe_file(variants["mp3-8k"].path, max_duration_ms=5000)
    assert caught.value.code == "too_long"
    [command] = commands
    assert command[command.index("-t") + 1] == "6.000"


def _wav_of_frames(path: Path, frames: int, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x01\x00" * frames)
    return path


@pytest.mark.parametrize("frames", [0, 3])
def test_no_audio_wav(tmp_path: Path, frames: int, no_ffmpeg: None) -> None:
    with pytest.raises(AudioError) as caught:
        probe_file(_wav_of_frames(tmp_path / "short.wav", frames))
    assert caught.value.code == "no_audio"


def test_eight_frames_is_one_millisecond(tmp_path: Path, no_ffmpeg: None) -> None:
    assert probe_file(_wav_of_frames(tmp_path / "ms.wav", 8)).duration_ms == 1


def test_wav_without_data_chunk(tmp_path: Path, no_ffmpeg: None) -> None:
    fmt = b"fmt " + (16).to_bytes(4, "little") + bytes.fromhex("0100 0100 401f0000 803e0000 0200 1000")
    path = tmp_path / "nodata.wav"
    path.write_bytes(b"RIFF" + (4 + len(fmt)).to_bytes(4, "little") + b"WAVE" + fmt)
    with pytest.raises(AudioError) as caught:
        probe_file(path)
    assert caught.value.code == "no_audio"


def test_no_audio_stream(tmp_path: Path, ffmpeg_source: str) -> None:
    path = tmp_path / "video-only.mkv"
    encoder = "ffv1" if "ffv1" in _encoders(ffmpeg_source) else "mpeg4"
    video = ["-f", "lavfi", "-i", "color=s=16x16:d=1", "-c:v", encoder]
    subprocess.run([ffmpeg_source, "-hide_banner", "-loglevel", "error", *video, str(path)], check=True)
    with pytest.raises(AudioError) as caught:
        probe_file(path)
    assert caught.value.code == "no_audio"


def test_mulaw_wav_without_samples(tmp_path: Path, imageio_only: str) -> None:
    path = tmp_path / "empty-mulaw.wav"
    nothing = ["-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "0", "-c:a", "pcm_mulaw"]
    subprocess.run([imageio_only, "-hide_banner", "-loglevel", "error", *nothing, str(path)], check=True)
    with pytest.raises(AudioError) as caught:
        probe_file(path)
    assert caught.value.code == "no_audio"


# --- errors say why, and nothing personal ---------------------------------------------------------


def test_messages_name_no_path_and_quote_no_audio(
    variants: dict[str, Variant], audio_fixtures: Path, tmp_path: Path, imageio_only: str
) -> None:
    folder = tmp_path / "tenant-acme" / PERSONAL_NAME
    folder.mkdir(parents=True)
    cases: list[tuple[bytes, dict[str, int]]] = [
        (b"", {}),
        (HTML_404, {}),
        ((audio_fixtures / "call-with-announcement.wav").read_bytes()[:50_000], {}),
        (variants["mp3-8k"].path.read_bytes()[:20_000], {}),
        (_not_audio(tmp_path)["random.mp3"].read_bytes(), {}),
        (variants["mulaw"].path.read_bytes(), {"max_duration_ms": 1000}),
        (_wav_of_frames(tmp_path / "x.wav", 0).read_bytes(), {}),
    ]
    codes = set()
    for i, (data, options) in enumerate(cases):
        for suffix in (".wav", ".mp3"):
            path = folder / f"{PERSONAL_NAME} {i}{suffix}"
            path.write_bytes(data)
            with pytest.raises(AudioError) as caught:
                probe_file(path, **options)
            error = caught.value
            codes.add(error.code)
            text = f"{error} {error!r} {error.args}"
            assert error.message and len(error.message) < 200
            assert error.message.isprintable()
            for secret in ("447700900123", "Jane", "Doe", "tenant-acme", str(tmp_path)):
                assert secret not in text
    assert codes == {"empty", "undecodable", "truncated", "too_long", "no_audio"}


def test_relative_path_that_looks_like_an_option_or_url(
    variants: dict[str, Variant], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, imageio_only: str
) -> None:
    monkeypatch.chdir(tmp_path)
    path = Path("-y tel:+447700900123.mp3")
    shutil.copy(variants["mp3-8k"].path, path)
    assert_matches(probe_file(path), variants["mp3-8k"])


# --- the error type and ffmpeg configuration ------------------------------------------------------


def test_audio_error_shape() -> None:
    error = AudioError("truncated", "the file was cut short")
    assert (error.code, error.message, str(error)) == (
        "truncated",
        "the file was cut short",
        "the file was cut short",
    )
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object
    assert (copy.code, str(copy)) == ("truncated", "the file was cut short")
    with pytest.raises(ValueError, match="unknown audio error code"):
        AudioError("corrupt", "no such code")


def test_configure_ffmpeg_prefers_the_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(AudioSegment, "converter", "ffmpeg")
    assert configure_ffmpeg() == str(fake)
    assert configure_ffmpeg() == str(fake)
    assert AudioSegment.converter == str(fake)


def test_configure_ffmpeg_falls_back_to_imageio(imageio_only: str) -> None:
    assert configure_ffmpeg() == imageio_only
    assert configure_ffmpeg() == imageio_only
    assert AudioSegment.converter == imageio_only


def test_configure_ffmpeg_without_any(no_ffmpeg: None) -> None:
    before = AudioSegment.converter
    assert configure_ffmpeg() is None
    assert AudioSegment.converter == before


# Memory while probing an hour of stereo is measured by bench/audio_rss.py, not here: targets live
# in benchmarks, and a child's ru_maxrss starts at its parent's peak, which a test process distorts.
