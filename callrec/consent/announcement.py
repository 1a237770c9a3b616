"""Announcement verification from the audio: is the claimed prompt really in the opening of the call?

A tenant registers the audio of each announcement version it plays ("this call may be recorded...").
When a recording claims that announcement, :func:`verify_announcement` looks for that audio in the
first ``search_ms`` of the recording and reports whether it is there, where it starts and how well it
matched. A claim the audio does not bear out counts as not played (issue 3); the policy decides what
follows. The measurements behind every constant here are in ``docs/announcement-verification.md``.

Method: normalised cross-correlation (NCC) of waveforms, the textbook template matcher (J. P. Lewis,
"Fast Normalized Cross-Correlation", Vision Interface 1995, in one dimension), in four steps:

1. Decode only the opening of the recording (``search_ms`` plus the prompt and a little slack) at the
   prompt's rate, 8 kHz; each channel on its own and, for stereo, their mix as well: a stereo call often
   carries the prompt on one side only, where the mix would halve it and add the other party's noise.
2. Band-limit recording and prompt to the telephone band, 300-3400 Hz (ITU-T G.712), with a
   raised-cosine mask in the frequency domain: what a codec, a PSTN leg or mains hum does outside that
   band is then not counted against the match.
3. Slide the prompt over every start from 0 to ``search_ms`` at once with FFTs. Each start's score is the
   dot product divided by the norms of the prompt and of that recording window, the window's energy
   taken from running sums (Lewis' trick), so that loudness, gain and steady noise elsewhere in the call
   do not move the score. The sign is ignored: some telephone paths invert polarity.
4. At the best start, check the prompt piece by piece: cut into four parts of equal energy, each part
   is matched again within +/-40 ms of where the whole-prompt alignment puts it, and the score is the
   weakest part's NCC. One part missing (the prompt cut short, the recording starting part-way into it)
   therefore fails verification instead of costing only the square root of the missing share, as it
   would with the whole-prompt NCC alone; and a jitter-buffer slip of a few tens of ms part-way through
   a VoIP leg does not split the match in two.

The score is 1.0 for an identical copy and under 0.1 for unrelated speech, noise or tones; G.711 and
8 kHz MP3 coding and noise at 5 dB SNR keep it above 0.85 (the tables are in the doc). Waveform matching
needs the prompt to be the very audio that was played: a re-synthesised text-to-speech prompt, or a leg
that changes the speed (a clock off by 0.05 % already), does not verify.
"""

from __future__ import annotations

import itertools
import math
import os
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import numpy as np
import numpy.typing as npt

from callrec.audio import AudioError, AudioToolError, decode_caps, run_ffmpeg

__all__ = [
    "ANALYSIS_RATE",
    "THRESHOLD",
    "AnnouncementCheck",
    "Prompt",
    "PromptError",
    "verify_announcement",
]

Samples = npt.NDArray[np.float64]

# Chosen from the score distributions in docs/announcement-verification.md: over 190 degraded positives
# the lowest score was 0.85 (8 kHz MP3 at 8 kbit/s with white noise at 5 dB SNR), over 120 negatives the
# highest was 0.21 (the prompt cut short); 0.5 leaves a margin of 0.29 or more on either side.
THRESHOLD: Final = 0.5

# Everything is compared at 8 kHz: the telephone band ends at 3.4 kHz, and G.711 carries nothing more.
ANALYSIS_RATE: Final = 8000
BAND_HZ: Final = (300.0, 3400.0)
_BAND_EDGE_HZ: Final = 100.0  # width of each raised-cosine flank, centred on the band edges
PARTS: Final = 4
PART_SLACK_MS: Final = 40
MIN_PROMPT_SOUND_MS: Final = 1000  # shorter prompts match unrelated speech too easily
MAX_PROMPT_MS: Final = 60_000
MAX_SEARCH_MS: Final = 5 * 60_000  # memory grows with the search window: see the doc
MAX_CHANNELS: Final = 8
# A prompt starts and ends where its sound does: leading and trailing frames quieter than this, relative to
# its loudest 10 ms, are not part of the template (exported prompts often carry a second of silence).
_TRIM_DB: Final = 40.0
# Windows whose band-limited RMS is below one 16-bit step (-90 dBFS) are silence: their NCC would only
# measure rounding error, so they score 0.
_SILENCE_RMS: Final = 1.0 / 32768
_PAD: Final = 2048  # zero padding that keeps the circular band-pass filter from wrapping around


@dataclass(frozen=True)
class AnnouncementCheck:
    """The outcome of one check. ``offset_ms`` is None unless ``verified``; ``score`` is always set."""

    verified: bool
    offset_ms: int | None
    score: float


class PromptError(ValueError):
    """The audio cannot serve as a prompt: too short, too long or silent."""


class Prompt:
    """A registered announcement prompt, decoded and prepared once; reuse it for every check.

    Immutable once built, so one instance may serve any number of threads. ``sample_rate`` is the rate
    the prompt is compared at (:data:`ANALYSIS_RATE`) and recordings are resampled to; ``duration_ms``
    is the length of the prompt file as registered.
    """

    __slots__ = ("_lead", "_parts", "_template", "duration_ms", "sample_rate")

    sample_rate: int
    duration_ms: int

    def __init__(self, samples: Samples) -> None:
        """Prepare mono ``samples`` (floats, full scale 1.0) already at :data:`ANALYSIS_RATE`.

        Raises :class:`PromptError` when the prompt has under a second of sound or lasts over a minute.
        """
        samples = np.asarray(samples, dtype=np.float64)
        if samples.ndim != 1:
            raise ValueError("prompt samples must be one channel")
        sample_rate = self.sample_rate = ANALYSIS_RATE
        self.duration_ms = len(samples) * 1000 // sample_rate
        if self.duration_ms > MAX_PROMPT_MS:
            raise PromptError(f"the prompt lasts {self.duration_ms} ms, over the limit of {MAX_PROMPT_MS} ms")
        filtered = _band_limit(samples[np.newaxis, :], sample_rate)[0]
        start, end = _sound_span(filtered, sample_rate)
        if (end - start) * 1000 < MIN_PROMPT_SOUND_MS * sample_rate:
            raise PromptError(
                f"the prompt has {(end - start) * 1000 // sample_rate} ms of sound in the telephone band;"
                f" at least {MIN_PROMPT_SOUND_MS} ms are needed"
            )
        template = filtered[start:end] - filtered[start:end].mean()
        self._template: Samples = template / np.linalg.norm(template)
        self._lead = start
        self._parts = _equal_energy_parts(self._template, PARTS)

    @classmethod
    def from_file(cls, path: Path) -> Prompt:
        """Decode a prompt file (any format :func:`callrec.audio.probe_file` accepts); stereo is mixed.

        Raises :class:`~callrec.audio.AudioError` when the file is not decodable audio,
        :class:`~callrec.audio.AudioToolError` when it needs ffmpeg and there is none, and
        :class:`PromptError` when the audio cannot serve as a prompt.
        """
        frames = (MAX_PROMPT_MS + 1000) * ANALYSIS_RATE // 1000  # enough to tell "too long"
        audio = _decode_opening(path, frames=frames)
        return cls(audio.mean(axis=0))


def verify_announcement(
    recording: Path, prompt: Prompt, *, search_ms: int = 60_000, threshold: float = THRESHOLD
) -> AnnouncementCheck:
    """Is ``prompt`` in ``recording``, starting within its first ``search_ms``? Blocking: run it in a thread.

    Decodes at most ``search_ms`` plus the prompt's length (and 40 ms) of the recording, whatever its
    length, so time and memory depend on the search window only. A recording shorter than the prompt
    cannot contain it and scores 0. ``offset_ms`` is where the prompt file's first sample falls in the
    recording. Raises :class:`~callrec.audio.AudioError` when the recording is not decodable audio and
    :class:`~callrec.audio.AudioToolError` when it needs ffmpeg and none works.
    """
    if not 0 <= search_ms <= MAX_SEARCH_MS:
        raise ValueError(f"search_ms must be between 0 and {MAX_SEARCH_MS}")
    rate = prompt.sample_rate
    template = prompt._template
    slack = PART_SLACK_MS * rate // 1000
    last_start = prompt._lead + search_ms * rate // 1000  # template start of a prompt file at search_ms
    filtered = _band_limit(_decode_opening(recording, frames=last_start + len(template) + slack), rate)
    if filtered.shape[1] < len(template):
        return AnnouncementCheck(verified=False, offset_ms=None, score=0.0)
    candidates = [filtered[0]] if len(filtered) == 1 else [filtered.mean(axis=0), *filtered]
    best = (-1.0, 0)
    for signal in candidates:
        scores = _ncc(signal[: last_start + len(template)], template)
        start = int(np.argmax(np.abs(scores)))
        polarity = math.copysign(1.0, scores[start])
        found = _check_parts(signal, prompt, start, polarity=polarity, slack=slack, latest=last_start)
        best = max(best, found)
    score, start = best
    score = min(max(score, 0.0), 1.0)
    if score < threshold:
        return AnnouncementCheck(verified=False, offset_ms=None, score=score)
    offset_ms = max(0, start - prompt._lead) * 1000 // rate
    return AnnouncementCheck(verified=True, offset_ms=offset_ms, score=score)


# --- signal processing ---------------------------------------------------------------------------


def _fast_len(n: int) -> int:
    """The smallest 5-smooth number >= n: sizes the FFT (pocketfft) handles at full speed."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _band_mask(size: int, rate: int) -> Samples:
    """Gain per rfft bin: 1 inside the telephone band, raised-cosine flanks, 0 outside."""
    freqs = np.fft.rfftfreq(size, 1.0 / rate)
    low, high = BAND_HZ
    half = _BAND_EDGE_HZ / 2
    rise = np.clip((freqs - (low - half)) / _BAND_EDGE_HZ, 0.0, 1.0)
    fall = np.clip(((high + half) - freqs) / _BAND_EDGE_HZ, 0.0, 1.0)
    mask: Samples = (0.5 - 0.5 * np.cos(np.pi * rise)) * (0.5 - 0.5 * np.cos(np.pi * fall))
    return mask


def _band_limit(audio: Samples, rate: int) -> Samples:
    """Each row of ``audio`` (channels x samples) band-limited to :data:`BAND_HZ`."""
    n = audio.shape[1]
    size = _fast_len(n + _PAD)
    spectrum = np.fft.rfft(audio, size, axis=1)
    spectrum *= _band_mask(size, rate)
    filtered: Samples = np.fft.irfft(spectrum, size, axis=1)[:, :n]
    return filtered


def _running_sum(x: Samples, width: int) -> Samples:
    totals = np.concatenate(([0.0], np.cumsum(x)))
    result: Samples = totals[width:] - totals[:-width]
    return result


def _ncc(signal: Samples, template: Samples) -> Samples:
    """NCC of a zero-mean, unit-norm ``template`` at every start where it fits inside ``signal``.

    Numerator by FFT correlation, denominator from running sums of the signal and its square
    (J. P. Lewis 1995); windows quieter than :data:`_SILENCE_RMS` score 0.
    """
    n, m = len(signal), len(template)
    size = _fast_len(n + m)
    spectrum = np.fft.rfft(signal, size)
    spectrum *= np.conj(np.fft.rfft(template, size))
    numerator = np.fft.irfft(spectrum, size)[: n - m + 1]
    del spectrum
    energy = _running_sum(signal * signal, m) - _running_sum(signal, m) ** 2 / m
    loud = energy > m * _SILENCE_RMS**2
    scores: Samples = np.zeros(n - m + 1)
    scores[loud] = numerator[loud] / np.sqrt(energy[loud])
    return scores


def _check_parts(
    signal: Samples, prompt: Prompt, start: int, *, polarity: float, slack: int, latest: int
) -> tuple[float, int]:
    """(weakest part's NCC, where the prompt's template starts) for the alignment ``start``.

    Each part may move up to ``slack`` samples from where ``start`` puts it, except that the first part,
    whose position is the start reported, stays at or before ``latest``: a prompt starting just after
    the search window is not in it. Parts are matched with the polarity the whole prompt was found with.
    """
    template = prompt._template
    weakest = math.inf
    first = start
    for index, (begin, end) in enumerate(prompt._parts):
        part = template[begin:end] - template[begin:end].mean()
        norm = float(np.linalg.norm(part))
        low = max(0, start + begin - slack)
        high = min(len(signal), start + end + slack)
        if index == 0:
            high = min(high, latest + end)
        if norm == 0.0 or high - low < end - begin:
            return 0.0, start
        scores = polarity * _ncc(signal[low:high], part / norm)
        shift = int(np.argmax(scores))
        weakest = min(weakest, float(scores[shift]))
        if index == 0:
            first = low + shift
    return weakest, first


def _sound_span(samples: Samples, rate: int) -> tuple[int, int]:
    """[start, end) of the 10 ms frames within :data:`_TRIM_DB` of the loudest one."""
    frame = rate // 100
    count = len(samples) // frame
    if count == 0:
        return 0, 0
    power = (samples[: count * frame].reshape(count, frame) ** 2).mean(axis=1)
    peak = float(power.max())
    if peak <= _SILENCE_RMS**2:
        return 0, 0
    loud = np.flatnonzero(power >= peak * 10 ** (-_TRIM_DB / 10))
    return int(loud[0]) * frame, (int(loud[-1]) + 1) * frame


def _equal_energy_parts(template: Samples, count: int) -> tuple[tuple[int, int], ...]:
    """Cut points that give each of ``count`` parts the same share of the template's energy."""
    cumulative = np.cumsum(template * template)
    cuts = [0, *(int(np.searchsorted(cumulative, cumulative[-1] * k / count)) for k in range(1, count))]
    cuts.append(len(template))
    return tuple(itertools.pairwise(cuts))


# --- decoding ------------------------------------------------------------------------------------


def _decode_opening(path: Path, *, frames: int) -> Samples:
    """Up to ``frames`` frames from the start of ``path`` at :data:`ANALYSIS_RATE`, channels x samples.

    A 16-bit PCM WAV already at that rate is read here (the usual PBX recording; no ffmpeg needed),
    ``frames`` frames of at most :data:`MAX_CHANNELS` channels. Anything else goes through
    :func:`callrec.audio.run_ffmpeg`, under caps for the opening only: told to stop after it
    (``-t``), with CPU time for that much audio, and to resample with its own filter
    (libswresample). pydub's ``AudioSegment.from_file`` is not used for the reasons given in
    :mod:`callrec.audio`: it needs ffprobe and it reads whole files.
    """
    if path.stat().st_size == 0:
        raise AudioError("empty", "the file is empty (0 bytes)")
    try:
        with wave.open(os.fspath(path), "rb") as reader:
            if reader.getsampwidth() == 2 and reader.getframerate() == ANALYSIS_RATE:
                _check_channels(reader.getnchannels())  # before reading: frames x channels bytes
                return _pcm16(reader.readframes(frames), reader.getnchannels())
    except (wave.Error, EOFError):
        pass  # not a plain PCM WAV: ffmpeg decodes it
    return _decode_with_ffmpeg(path, frames)


def _check_channels(channels: int) -> None:
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(
            "undecodable", f"the recording has {channels} channels; at most {MAX_CHANNELS} are read"
        )


def _pcm16(data: bytes, channels: int) -> Samples:
    _check_channels(channels)
    usable = len(data) - len(data) % (2 * channels)
    pcm = np.frombuffer(data[:usable], dtype="<i2").reshape(-1, channels).T
    samples: Samples = pcm.astype(np.float64) / 32768.0
    return samples


def _decode_with_ffmpeg(path: Path, frames: int) -> Samples:
    run = run_ffmpeg(
        path,
        ["-ar", str(ANALYSIS_RATE), "-c:a", "pcm_s16le", "-f", "wav"],
        # A little past the opening, so that ffmpeg's rounding never leaves it a frame short.
        caps=decode_caps(math.ceil(frames * 1000 / ANALYSIS_RATE) + 100),
        read=lambda stream: _read_wav_stream(stream, frames),
    )
    decoded = run.output
    if run.returncode < 0 and decoded is None:
        raise AudioToolError(f"ffmpeg was killed by signal {-run.returncode}")
    if decoded is None or decoded.shape[1] == 0:
        raise AudioError("undecodable", "the file is not audio in a format we can decode")
    return decoded


def _read_wav_stream(stream: IO[bytes], frames: int) -> Samples | None:
    """The first ``frames`` frames of the WAV ffmpeg writes to the pipe (its header carries no sizes)."""
    try:
        with wave.open(stream, "rb") as reader:
            _check_channels(reader.getnchannels())
            return _pcm16(reader.readframes(frames), reader.getnchannels())
    except (wave.Error, EOFError):
        return None
