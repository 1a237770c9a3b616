"""Audio checks run by the ingest worker before a recording is encrypted and stored.

The worker stores the original bytes bit-exact unless they must be redacted
(:mod:`callrec.consent.redaction`); this module only decides whether those bytes are a complete,
decodable recording and describes them (:class:`AudioInfo`). It never changes the file.

Two decoding paths, both bounded in memory whatever the length of the call:

- PCM WAV (what PBXs and Twilio's ``.wav`` deliver) is read here, in ~1 MiB pieces handed to pydub
  as raw PCM. No ffmpeg is needed, and a truncated download is caught by comparing the data chunk's
  declared size with the bytes actually present.
- Everything else (G.711 mu-law/A-law WAV, MP3, Ogg Opus/Vorbis, FLAC, M4A, WebM) is decoded by
  ffmpeg, the same binary pydub is configured with, streaming 16-bit PCM through a pipe. pydub's own
  ``AudioSegment.from_file`` is not used for these: it needs ffprobe (which imageio-ffmpeg does not
  ship) unless told the codec in advance, and it holds three to four copies of the decoded audio in
  memory. Stream facts come from ffmpeg itself: container and codec from its input summary on
  stderr, channels and sample rate from the WAV header it writes, duration from the samples decoded.

Every check raises :class:`AudioError` with a stable ``code`` and a message that names no path and
quotes no audio. A missing or crashing ffmpeg raises :class:`AudioToolError` instead: that is the
service's fault, so the job should be retried, not the recording rejected.

Every ffmpeg callrec starts, here and in the announcement check, the redaction and the portal's
waveform, goes through :func:`run_ffmpeg`, under :class:`Caps` that never depend on what the file
declares (DESIGN rule 8): at most ``duration_ms`` of audio decoded (``-t``), a CPU-time limit
scaled to that duration (RLIMIT_CPU), a fixed address-space limit (RLIMIT_AS), a limit on the size
of the files it writes (``-fs`` and RLIMIT_FSIZE) and no core dump (a crash must not spill decoded
audio to disk). A run that hits a cap is the file's fault and raises a permanent :class:`AudioError`
(``too_costly`` or ``too_large``); a run killed for any other reason is not, see :func:`run_ffmpeg`.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Generic, TypeVar

import imageio_ffmpeg

# pydub looks for ffmpeg on PATH when imported and warns when there is none; configure_ffmpeg()
# points it at imageio-ffmpeg's binary instead, so the warning is noise here.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    from pydub import AudioSegment

__all__ = [
    "DEFAULT_MAX_DURATION_MS",
    "AudioError",
    "AudioInfo",
    "AudioToolError",
    "Caps",
    "FfmpegRun",
    "configure_ffmpeg",
    "content_type_for",
    "decode_caps",
    "ffmpeg_reading",
    "probe_file",
    "run_ffmpeg",
]

ERROR_CODES: Final = frozenset(
    {"empty", "undecodable", "truncated", "too_long", "no_audio", "too_large", "too_costly"}
)

# The longest recording accepted unless the caller says otherwise ([ingest] max_duration).
DEFAULT_MAX_DURATION_MS: Final = 6 * 3600 * 1000
# CPU time one ffmpeg run may use: a floor for start-up and short files, plus an allowance per minute
# of audio it may decode. Decoding a 48 kHz stereo FLAC and encoding it again costs about 0.2 s of CPU
# per audio minute on the benchmark machine (docs/benchmarks.md); 1 s leaves room for costlier codecs
# and slower machines, and still stops a file built to make a decoder spin.
CPU_FLOOR_S: Final = 60
CPU_S_PER_AUDIO_MINUTE: Final = 1.0
# Address space of one ffmpeg. Debian's shared build maps about 300 MB of libraries before it reads a
# byte; decoding audio then needs a few MB whatever the length. Reaching this is the file's doing.
FFMPEG_ADDRESS_SPACE: Final = 1 << 30
# Room in RLIMIT_FSIZE beyond a run's output cap: ffmpeg writes its last packet past ``-fs``, and
# its log (stderr) goes to a file too.
_FSIZE_SLACK: Final = 16 << 20
# A run that failed after using this share of its CPU allowance hit the limit: the kernel's
# RLIMIT_CPU accounting and getrusage's can differ by some percent (measured: SIGXCPU at 0.9 s of
# reported CPU for a 1 s limit).
_CPU_LIMIT_SHARE: Final = 0.85

_CHUNK_BYTES: Final = 1 << 20
_WAVE_FORMAT_PCM: Final = 0x0001
_WAVE_FORMAT_EXTENSIBLE: Final = 0xFFFE
# Sub-format GUID of WAVE_FORMAT_EXTENSIBLE after its first two bytes (the format tag):
# KSDATAFORMAT_SUBTYPE_PCM is 00000001-0000-0010-8000-00aa00389b71.
_KSDATAFORMAT_TAIL: Final = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
# A data chunk size a recorder writes when it never came back to finalise the header
# (streamed WAV); ffmpeg and sox then read to the end of the file, and so do we.
_WAV_SIZE_UNKNOWN: Final = (0, 0xFFFFFFFF)
_PCM_CODECS: Final = {1: "pcm_u8", 2: "pcm_s16le", 3: "pcm_s24le", 4: "pcm_s32le"}

# Demuxers ffmpeg may use. Without this list ffmpeg would follow playlists and concat scripts
# (hls, concat) to other files or URLs named inside a downloaded file, and would "decode" a text
# page as ANSI art (tty); with it such input is simply not audio.
DEMUXERS: Final = "wav,w64,mp3,ogg,flac,mov,matroska,aac,amr"
_FORMAT_ALIASES: Final = {"mov": "mp4", "matroska": "webm"}
# How far the duration a container declares may exceed the audio actually decoded before the file
# counts as cut short: encoder delay, padding and start offsets come to a few tens of ms.
_TRUNCATION_SLACK_MS: Final = 500
_TRUNCATION_SLACK_RATIO: Final = 0.002
_STDERR_LIMIT: Final = 256 * 1024

_CONTENT_TYPES: Final = {
    "wav": "audio/wav",
    "w64": "audio/wav",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",  # RFC 5334 (Ogg), RFC 7845 section 9 (Ogg Opus)
    "flac": "audio/flac",
    "mp4": "audio/mp4",
    "webm": "audio/webm",
    "aac": "audio/aac",
    "amr": "audio/amr",  # RFC 4867
}


@dataclass(frozen=True)
class AudioInfo:
    format: str
    codec: str
    duration_ms: int
    channels: int
    sample_rate: int


class AudioError(Exception):
    """The file is not a usable recording. ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown audio error code {code!r}")
        # Both in args so that the error survives pickling (process pools, job payloads).
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


class AudioToolError(RuntimeError):
    """ffmpeg is missing or failed for reasons of its own: retry later, do not reject the file."""


@dataclass(frozen=True)
class Caps:
    """What one ffmpeg run may use. Build it with :func:`decode_caps`.

    ``duration_ms``: audio decoded at most (ffmpeg's ``-t``, so a long file is never decoded to
    its end); ``cpu_seconds``: CPU time (RLIMIT_CPU); ``output_bytes``: the largest file the run
    may write (``-fs``), 0 when it writes only to a pipe.
    """

    duration_ms: int
    cpu_seconds: int
    output_bytes: int = 0


def decode_caps(duration_ms: int, *, output_bytes: int = 0) -> Caps:
    """Caps for decoding up to ``duration_ms`` of audio: CPU time scaled to that duration."""
    if duration_ms <= 0:
        raise ValueError("duration_ms must be positive")
    cpu = CPU_FLOOR_S + math.ceil(duration_ms / 60_000 * CPU_S_PER_AUDIO_MINUTE)
    return Caps(duration_ms=duration_ms, cpu_seconds=cpu, output_bytes=output_bytes)


def configure_ffmpeg() -> str | None:
    """Point pydub at an ffmpeg: the system's if on PATH, else imageio-ffmpeg's. Returns its path.

    Idempotent. Returns None, leaving pydub as it was, when neither exists. ``shutil.which`` is used
    rather than pydub's lookup because the latter also searches the current directory.
    """
    exe = shutil.which("ffmpeg")
    if exe is None:
        try:
            exe = imageio_ffmpeg.get_ffmpeg_exe()
        except RuntimeError:
            return None
    AudioSegment.converter = exe
    return exe


def content_type_for(info: AudioInfo) -> str:
    return content_type_for_format(info.format)


def content_type_for_format(container: str) -> str:
    return _CONTENT_TYPES.get(container, "application/octet-stream")


def probe_file(path: Path, *, max_duration_ms: int = DEFAULT_MAX_DURATION_MS) -> AudioInfo:
    """Decode the whole file once and describe it; blocking, so run it in a thread.

    Decodes at most a second past ``max_duration_ms``, whatever the file declares. Raises
    :class:`AudioError` when the file is empty, not decodable audio, cut short, longer than
    ``max_duration_ms`` (``too_long``), without any audio, or when decoding it hits a cap of
    :func:`run_ffmpeg`; :class:`AudioToolError` when a non-PCM file needs ffmpeg and none can be
    found or it crashes. A plain PCM WAV never needs ffmpeg: its length is its bytes present.
    """
    size = path.stat().st_size
    if size == 0:
        raise AudioError("empty", "the file is empty (0 bytes)")
    with path.open("rb") as f:
        magic = f.read(12)
        if magic[:4] == b"RIFF" and magic[8:12] == b"WAVE":
            wav = _read_wav_header(f, size)
            if wav.pcm_width:
                return _probe_pcm_wav(f, wav, max_duration_ms)
            # Compressed or companded WAV (mu-law, A-law, ADPCM, float): the header has shown the
            # file is complete; ffmpeg decodes the samples below.
        elif magic[:4] == b"OggS" and _ogg_cut_short(f, size):
            raise AudioError("truncated", "the Ogg file ends part-way through a page: it was cut short")
    return _probe_with_ffmpeg(path, max_duration_ms)


# --- PCM WAV, read here --------------------------------------------------------------------------


@dataclass(frozen=True)
class _WavHeader:
    channels: int
    sample_rate: int
    pcm_width: int  # bytes per sample for integer PCM, 0 when ffmpeg must decode
    block_align: int
    data_offset: int
    data_bytes: int


def _read_wav_header(f: IO[bytes], size: int) -> _WavHeader:
    """Walk the RIFF chunks up to ``data`` (http://soundfile.sapp.org/doc/WaveFormat/).

    Reads only chunk headers and the fmt chunk, seeking over everything else.
    """
    pos = 12
    fmt: bytes | None = None
    while True:
        f.seek(pos)
        head = f.read(8)
        if len(head) < 8:
            if pos >= size and fmt is not None:
                raise AudioError("no_audio", "the WAV file has no data chunk")
            raise AudioError("truncated", "the WAV file ends inside its header: it was cut short")
        chunk_id, chunk_size = head[:4], struct.unpack("<I", head[4:])[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            if chunk_size < 16:
                raise AudioError("undecodable", "the WAV format chunk is too short to describe audio")
            fmt = f.read(min(chunk_size, 40))
            if len(fmt) < min(chunk_size, 40):
                raise AudioError("truncated", "the WAV file ends inside its header: it was cut short")
        elif chunk_id == b"data":
            if fmt is None:
                raise AudioError("undecodable", "the WAV data chunk comes before its format chunk")
            present = size - body
            if chunk_size in _WAV_SIZE_UNKNOWN:
                chunk_size = present
            elif chunk_size > present:
                raise AudioError(
                    "truncated",
                    f"the WAV header announces {chunk_size} bytes of audio but only {present} are present:"
                    " the file was cut short",
                )
            return _parse_fmt(fmt, body, chunk_size)
        elif body + chunk_size > size:
            raise AudioError("truncated", "the WAV file ends inside its header: it was cut short")
        pos = body + chunk_size + (chunk_size & 1)  # chunks are padded to an even length


def _parse_fmt(fmt: bytes, data_offset: int, data_bytes: int) -> _WavHeader:
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if channels == 0 or rate == 0 or block_align == 0:
        raise AudioError("undecodable", "the WAV header declares no channels or no sample rate")
    pcm = tag == _WAVE_FORMAT_PCM or (
        tag == _WAVE_FORMAT_EXTENSIBLE
        and len(fmt) >= 40
        and struct.unpack("<H", fmt[24:26])[0] == _WAVE_FORMAT_PCM
        and fmt[26:40] == _KSDATAFORMAT_TAIL
    )
    width = bits // 8
    if not (pcm and bits % 8 == 0 and width in _PCM_CODECS and block_align == width * channels):
        width = 0
    return _WavHeader(channels, rate, width, block_align, data_offset, data_bytes)


def _probe_pcm_wav(f: IO[bytes], wav: _WavHeader, max_duration_ms: int) -> AudioInfo:
    # data_bytes is what is present in the file (_read_wav_header refuses a header that claims more).
    declared_ms = (wav.data_bytes // wav.block_align) * 1000 // wav.sample_rate
    if declared_ms > max_duration_ms:
        raise AudioError(
            "too_long", f"the recording lasts {declared_ms} ms, over the limit of {max_duration_ms} ms"
        )
    f.seek(wav.data_offset)
    step = max(1, _CHUNK_BYTES // wav.block_align) * wav.block_align
    remaining = wav.data_bytes - wav.data_bytes % wav.block_align  # a trailing partial frame is not audio
    frames = 0
    while remaining > 0:
        chunk = f.read(min(step, remaining))
        if not chunk:  # the file shrank while we read it
            raise AudioError("truncated", "the WAV file ended before its announced audio: it was cut short")
        chunk = chunk[: len(chunk) - len(chunk) % wav.block_align]
        segment = AudioSegment(
            data=chunk, sample_width=wav.pcm_width, frame_rate=wav.sample_rate, channels=wav.channels
        )
        frames += int(segment.frame_count())
        remaining -= len(chunk)
    duration_ms = frames * 1000 // wav.sample_rate
    if duration_ms == 0:
        raise AudioError("no_audio", "the WAV file contains no audio samples")
    return AudioInfo(
        format="wav",
        codec=_PCM_CODECS[wav.pcm_width],
        duration_ms=duration_ms,
        channels=wav.channels,
        sample_rate=wav.sample_rate,
    )


# --- Ogg page structure --------------------------------------------------------------------------


def _ogg_cut_short(f: IO[bytes], size: int) -> bool:
    """True when the last Ogg page runs past the end of the file (RFC 3533 section 6).

    ffmpeg quietly drops an incomplete last page and takes the duration from the page before, so a
    cut-off Ogg file would otherwise decode as a complete, shorter recording. Walks page headers
    only; if the page chain breaks (damage, trailing junk) the decoder is left to judge.
    """
    pos = 0
    while pos < size:
        f.seek(pos)
        head = f.read(27)
        if len(head) < 27:  # a page header begun but not finished, or a few bytes of junk
            return b"OggS".startswith(head[:4])
        if head[:4] != b"OggS":
            return False
        lacing = f.read(head[26])
        if len(lacing) < head[26]:
            return True
        pos += 27 + len(lacing) + sum(lacing)
    return pos > size


# --- everything else, decoded by ffmpeg -----------------------------------------------------------


def _ffmpeg_exe() -> str:
    """pydub's ffmpeg if it names an executable (an operator may have set it), else configure one."""
    exe = shutil.which(AudioSegment.converter) or configure_ffmpeg()
    if exe is None:
        raise AudioToolError("no ffmpeg found: install imageio-ffmpeg or put ffmpeg on PATH")
    return exe


def ffmpeg_reading(path: Path, *, loglevel: str) -> list[str]:
    """The start of every ffmpeg command that reads a recording: ffmpeg reading ``path``'s first
    audio stream, hardened as described above (local files only, only the demuxers a recording may
    use, the name never taken for a protocol or an option). Output options follow. Never start it
    by itself: :func:`run_ffmpeg` adds the caps and the limits every run must have."""
    return [
        _ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        loglevel,
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        DEMUXERS,
        # "file:" stops a name with ":" being read as a protocol or one starting "-" as an option.
        "-i",
        "file:" + os.fspath(path),
        "-map",
        "0:a:0",
    ]


T = TypeVar("T")


@dataclass(frozen=True)
class FfmpegRun(Generic[T]):
    """How a run ended: exit status (negative: killed by that signal), its log (the first 256 KiB
    of stderr) and what ``read`` returned from its standard output (None without ``read``)."""

    returncode: int
    log: str
    output: T | None


def run_ffmpeg(
    path: Path,
    options: Sequence[str],
    *,
    caps: Caps,
    loglevel: str = "error",
    read: Callable[[IO[bytes]], T] | None = None,
    output: Path | None = None,
) -> FfmpegRun[T]:
    """Run ffmpeg on ``path`` under ``caps``: the one way callrec starts ffmpeg. Blocking.

    The command is :func:`ffmpeg_reading`'s, ``-t`` (``caps.duration_ms``), ``options``, then the
    output: the file ``output`` (capped at ``caps.output_bytes`` with ``-fs``), or a pipe whose
    reading end ``read`` consumes. The process starts with RLIMIT_CPU ``caps.cpu_seconds`` (the hard
    limit a few seconds later), RLIMIT_AS :data:`FFMPEG_ADDRESS_SPACE`, RLIMIT_FSIZE the output cap
    plus slack, and RLIMIT_CORE 0.

    Raises :class:`AudioError` when the run hit a cap, because a file that needs more than a
    recording of the allowed length ever does is the file's fault:

    - ``too_costly``: it failed after using (nearly) all of its CPU time. Told apart from other
      deaths by the CPU time ``wait4`` reports for the child, not by the signal: at the soft limit
      the kernel sends SIGXCPU (ffmpeg catches it and exits 255), at the hard one SIGKILL, which
      the OOM killer or an operator also send, but those leave the CPU allowance unspent;
    - ``too_large``: SIGXFSZ (only RLIMIT_FSIZE sends it), ``output`` grew past
      ``caps.output_bytes``, or a failure with ENOMEM under RLIMIT_AS.

    :class:`AudioToolError` when ffmpeg cannot be started. Any other outcome, a kill by another
    signal included, is returned for the caller to judge.
    """
    if output is not None and caps.output_bytes <= 0:
        raise ValueError("a run that writes a file needs caps.output_bytes")
    command = [*ffmpeg_reading(path, loglevel=loglevel), "-t", f"{caps.duration_ms / 1000:.3f}", *options]
    if output is not None:
        # One byte over the cap: a file that stops exactly at it was not cut.
        command += ["-y", "-fs", str(caps.output_bytes + 1), "file:" + os.fspath(output)]
    else:
        command.append("pipe:1")
    limits = functools.partial(_limit_child, caps.cpu_seconds, caps.output_bytes + _FSIZE_SLACK)
    # stderr goes to an unlinked temporary file: read only after ffmpeg exits, so a chatty decoder
    # cannot fill a pipe and stall, and nothing of it is kept.
    with tempfile.TemporaryFile() as stderr:
        try:
            # preexec_fn runs in the child between fork and exec, so the limits hold before ffmpeg
            # reads a byte. It only calls setrlimit; the documented hazard of preexec_fn in a
            # threaded program is code that takes locks another thread held at the fork.
            process = subprocess.Popen(  # noqa: S603 - fixed argument list, no shell
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if read is not None else subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=limits,
            )
        except OSError as exc:
            raise AudioToolError(f"could not start ffmpeg: {exc.strerror}") from None
        result: T | None = None
        try:
            if read is not None:
                assert process.stdout is not None
                result = read(process.stdout)
        except BaseException:
            process.kill()
            raise
        finally:
            if process.stdout is not None:
                process.stdout.close()  # ffmpeg stops on a closed pipe if it had more to say
            returncode, cpu_seconds = _reap(process)
        stderr.seek(0)
        log = stderr.read(_STDERR_LIMIT).decode("utf-8", "replace")

    if returncode != 0 and cpu_seconds >= caps.cpu_seconds * _CPU_LIMIT_SHARE:
        raise AudioError(
            "too_costly",
            f"decoding needed more than {caps.cpu_seconds} s of CPU time, the limit for"
            f" {_minutes(caps.duration_ms)} of audio",
        )
    if returncode == -signal.SIGXFSZ or (
        output is not None and output.exists() and output.stat().st_size > caps.output_bytes
    ):
        raise AudioError("too_large", f"the decoded audio is over the limit of {caps.output_bytes} bytes")
    if returncode != 0 and os.strerror(errno.ENOMEM) in log:  # RLIMIT_AS reached
        raise AudioError("too_large", f"decoding needed more than {FFMPEG_ADDRESS_SPACE >> 20} MiB of memory")
    return FfmpegRun(returncode=returncode, log=log, output=result)


def _limit_child(cpu_seconds: int, file_bytes: int) -> None:
    """Runs in the forked child before exec (see run_ffmpeg); Linux semantics of each limit."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_AS, (FFMPEG_ADDRESS_SPACE, FFMPEG_ADDRESS_SPACE))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _reap(process: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Wait for ``process``: (exit status as Popen reports it, CPU seconds it used)."""
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except ChildProcessError:  # reaped elsewhere; its CPU time is lost with it
        return process.wait(), 0.0
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime


def _minutes(duration_ms: int) -> str:
    minutes = duration_ms / 60_000
    return f"{minutes:.0f} min" if minutes >= 1 else f"{duration_ms / 1000:.1f} s"


def _probe_with_ffmpeg(path: Path, max_duration_ms: int) -> AudioInfo:
    # Decode at most a second past the limit: enough to know it is over, never the whole file.
    run = run_ffmpeg(
        path,
        ["-map_metadata", "-1", "-fflags", "+bitexact", "-c:a", "pcm_s16le", "-f", "wav"],
        caps=decode_caps(max_duration_ms + 1000),
        loglevel="info",
        read=_read_pcm_stream,
    )
    returncode, decoded = run.returncode, run.output
    if returncode < 0:
        raise AudioToolError(f"ffmpeg was killed by signal {-returncode}")
    summary = _InputSummary.parse(run.log)
    if summary.format is None:
        raise AudioError("undecodable", "the file is not audio in a format we can decode")
    if summary.codec is None:
        raise AudioError("no_audio", "the file has no audio stream")
    if decoded is None:
        raise AudioError("undecodable", f"the {summary.codec} audio stream could not be decoded")
    channels, sample_rate, frames = decoded
    if returncode != 0:
        raise AudioError(
            "truncated", "decoding stopped with an error part-way: the file is cut short or damaged"
        )
    duration_ms = frames * 1000 // sample_rate
    if duration_ms == 0:
        raise AudioError("no_audio", "the file contains no audio samples")
    if duration_ms > max_duration_ms:
        raise AudioError("too_long", f"the recording lasts longer than the limit of {max_duration_ms} ms")
    declared = summary.declared_ms
    if (
        declared is not None
        and declared - duration_ms > _TRUNCATION_SLACK_MS + declared * _TRUNCATION_SLACK_RATIO
    ):
        raise AudioError(
            "truncated",
            f"the file declares {declared / 1000:.1f} s of audio but only {duration_ms / 1000:.1f} s decode:"
            " it was cut short or is damaged",
        )
    return AudioInfo(
        format=summary.format,
        codec=summary.codec,
        duration_ms=duration_ms,
        channels=channels,
        sample_rate=sample_rate,
    )


def _read_pcm_stream(stream: IO[bytes]) -> tuple[int, int, int] | None:
    """Read the 16-bit WAV ffmpeg writes to the pipe: (channels, sample rate, frames), or None
    when no header arrived. The pipe's header carries no sizes, so frames are counted."""
    if stream.read(12)[8:12] != b"WAVE":
        return None
    fmt: bytes | None = None
    while True:
        head = stream.read(8)
        if len(head) < 8:
            return None
        chunk_id, chunk_size = head[:4], struct.unpack("<I", head[4:])[0]
        if chunk_id == b"data":
            break
        body = stream.read(chunk_size + (chunk_size & 1))
        if chunk_id == b"fmt ":
            fmt = body
    if fmt is None or len(fmt) < 16:
        return None
    channels, sample_rate = struct.unpack("<HI", fmt[2:8])
    if channels == 0 or sample_rate == 0:
        return None
    frame_width = 2 * channels
    step = max(1, _CHUNK_BYTES // frame_width) * frame_width
    frames = 0
    while chunk := stream.read(step):
        chunk = chunk[: len(chunk) - len(chunk) % frame_width]
        segment = AudioSegment(data=chunk, sample_width=2, frame_rate=sample_rate, channels=channels)
        frames += int(segment.frame_count())
    return channels, sample_rate, frames


_INPUT_RE: Final = re.compile(r"^Input #0, ([\w,]+), from ", re.MULTILINE)
_SECTION_END_RE: Final = re.compile(r"^(?:Stream mapping:|Output #0)", re.MULTILINE)
_AUDIO_RE: Final = re.compile(r"^\s*Stream #0:\d+\S*: Audio: (\w+)", re.MULTILINE)
_DURATION_RE: Final = re.compile(r"^\s*Duration: (\d+):(\d\d):(\d\d)\.(\d\d)", re.MULTILINE)
# ffmpeg guesses the duration of headerless VBR MP3 and raw AAC from the first frame's bitrate and
# says so with this warning (unchanged since FFmpeg 0.x); such a guess is no evidence of truncation.
_ESTIMATED = "Estimating duration from bitrate"


@dataclass(frozen=True)
class _InputSummary:
    """What ffmpeg's input summary (av_dump_format on stderr) says about the file."""

    format: str | None
    codec: str | None
    declared_ms: int | None

    @classmethod
    def parse(cls, log: str) -> _InputSummary:
        found = _INPUT_RE.search(log)
        if found is None:
            return cls(None, None, None)
        demuxer = found.group(1).split(",")[0]
        end = _SECTION_END_RE.search(log, found.end())
        section = log[found.end() : end.start() if end else len(log)]
        audio = _AUDIO_RE.search(section)
        duration = _DURATION_RE.search(section)
        declared_ms = None
        if duration is not None and _ESTIMATED not in log:
            h, m, s, cs = (int(g) for g in duration.groups())
            declared_ms = ((h * 60 + m) * 60 + s) * 1000 + cs * 10
        return cls(_FORMAT_ALIASES.get(demuxer, demuxer), audio.group(1) if audio else None, declared_ms)
