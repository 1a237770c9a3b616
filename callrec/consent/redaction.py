"""PCI redaction: card details must not be kept in recordings (PCI DSS v4.0 requirement 3.3.1:
sensitive authentication data, including card verification codes, is not retained after
authorisation, even encrypted; recordings of a caller reading them out count).

Spans come from ``recording_paused``/``recording_resumed`` call events the provider did not
already cut, and from explicit ``redact`` spans in upload metadata. They are replaced by digital
silence before encryption, so the original never reaches storage.

:func:`redact_file` streams: one ffmpeg run (:func:`callrec.audio.run_ffmpeg`, under its caps on
duration, CPU time, memory and output size) decodes the recording, cuts it at the spans' first and
last samples (``asegment``), sets every sample inside a span to exactly zero (``volume=0`` in fixed
point, so no float round trip), joins the pieces again (``concat``) and encodes FLAC. ``concat``
takes the pieces in the order ``asegment`` produces them, so ffmpeg holds a few frames at a time
and memory does not grow with the length, the channels or the sample rate. A timeline
``enable='between(t,a,b)'`` would not do: it switches whole frames (up to 4,608 samples in FLAC),
not samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from callrec import audio

# Codecs whose samples are integers wider than 16 bits: stored as they are (24-bit FLAC). Everything
# else (lossy codecs, companded or float PCM) is stored as 16-bit FLAC, which holds all that G.711,
# AMR or an MP3 at telephone rates carry; left to itself ffmpeg would pick 24 bits for float input.
_WIDE_INTEGER_CODECS: Final = frozenset(
    {"flac", "alac", "wavpack", "pcm_s24le", "pcm_s24be", "pcm_s32le", "pcm_s32be"}
)


@dataclass(frozen=True, order=True)
class Span:
    start_ms: int
    end_ms: int

    def as_json(self) -> dict[str, int]:
        return {"start_ms": self.start_ms, "end_ms": self.end_ms}


class RedactionError(Exception):
    """The spans cannot be placed on the recording (e.g. its start time is unknown)."""


def merge(spans: list[Span]) -> list[Span]:
    """Sorted, with overlapping or touching spans joined."""
    out: list[Span] = []
    for span in sorted(spans):
        if out and span.start_ms <= out[-1].end_ms:
            out[-1] = Span(out[-1].start_ms, max(out[-1].end_ms, span.end_ms))
        else:
            out.append(span)
    return out


def spans_from_events(
    pauses: list[tuple[str, datetime, bool]], *, started_at: datetime | None, duration_ms: int
) -> list[Span]:
    """Turn (kind, at, cut_by_provider) pause/resume events into spans of the recording.

    A pause without a resume runs to the end of the recording. Pauses the provider already cut
    out of the audio need no redaction. Raises :class:`RedactionError` when a pause must be
    redacted but the recording's start time is unknown: guessing could leave card data in place.
    """
    spans: list[Span] = []
    open_at: datetime | None = None
    for kind, at, cut in sorted(pauses, key=lambda p: p[1]):
        if kind == "recording_paused" and not cut and open_at is None:
            open_at = at
        elif kind == "recording_resumed" and open_at is not None:
            spans.append(_span(open_at, at, started_at, duration_ms))
            open_at = None
    if open_at is not None:
        spans.append(_span(open_at, None, started_at, duration_ms))
    return merge([s for s in spans if s.end_ms > s.start_ms])


def _span(start: datetime, end: datetime | None, started_at: datetime | None, duration_ms: int) -> Span:
    if started_at is None:
        raise RedactionError("a pause must be redacted but the recording's start time is unknown")
    begin = int((start - started_at).total_seconds() * 1000)
    finish = duration_ms if end is None else int((end - started_at).total_seconds() * 1000)
    return Span(max(begin, 0), min(max(finish, 0), duration_ms))


def sample_spans(spans: list[Span], *, sample_rate: int, duration_ms: int) -> list[tuple[int, int | None]]:
    """``spans`` as [first, last) sample numbers, widened outwards to whole samples so that no part of
    a span stays audible, joined where they touch; ``last`` is None for a span that runs to the end
    of the recording (``duration_ms`` or later)."""
    out: list[tuple[int, int | None]] = []
    for span in merge(spans):
        if span.end_ms <= span.start_ms:
            continue
        first = min(span.start_ms, duration_ms) * sample_rate // 1000
        last = None if span.end_ms >= duration_ms else -(-span.end_ms * sample_rate // 1000)
        previous = out[-1] if out else None
        if previous is not None and previous[1] is not None and first <= previous[1]:
            out[-1] = (previous[0], last)
        else:
            out.append((first, last))
        if last is None:
            break
    return out


def filter_graph(samples: list[tuple[int, int | None]]) -> str:
    """The ffmpeg filter graph that silences ``samples`` (from :func:`sample_spans`): the audio is
    split at every span boundary, the pieces inside a span go through ``volume=0``, and all pieces
    are joined again in order (and their timestamps counted again from the samples)."""
    points: list[int] = []
    silent = [False]  # one flag per piece, the piece before the first point included
    for first, last in samples:
        if first == 0 and not points:
            silent[0] = True
        else:
            points.append(first)
            silent.append(True)
        if last is not None:
            points.append(last)
            silent.append(False)
    if not points:
        return "volume=volume=0:precision=fixed"  # everything is silenced
    pieces = [f"[p{i}]" for i in range(len(silent))]
    graph = [f"asegment=samples={'|'.join(str(p) for p in points)}{''.join(pieces)}"]
    joined = []
    for i, mute in enumerate(silent):
        if mute:
            graph.append(f"[p{i}]volume=volume=0:precision=fixed[z{i}]")
            joined.append(f"[z{i}]")
        else:
            joined.append(f"[p{i}]")
    # concat leaves gaps in the timestamps at the joins (the samples are all there); counting them
    # again from the samples keeps ffmpeg's -t, which goes by timestamps, a cap on samples.
    graph.append(f"{''.join(joined)}concat=n={len(silent)}:v=0:a=1,asetpts=N/SR/TB")
    return ";".join(graph)


def redact_file(
    src: Path, dst: Path, spans: list[Span], *, info: audio.AudioInfo, max_duration_ms: int, max_bytes: int
) -> None:
    """Write ``src`` with ``spans`` silenced to ``dst`` as FLAC (lossless; same channels and sample
    rate). ``info`` is what :func:`callrec.audio.probe_file` said about ``src``. Blocking: run it in a
    thread.

    Decodes at most a second past ``max_duration_ms``. Raises :class:`~callrec.audio.AudioError`
    ``too_large`` when the FLAC would be over ``max_bytes`` (nothing usable is left in ``dst``),
    ``undecodable`` when ffmpeg fails, or another code when a cap of
    :func:`~callrec.audio.run_ffmpeg` is hit; :class:`~callrec.audio.AudioToolError` when ffmpeg is
    missing or killed from outside.
    """
    graph = filter_graph(sample_spans(spans, sample_rate=info.sample_rate, duration_ms=info.duration_ms))
    options = ["-map_metadata", "-1", "-fflags", "+bitexact", "-af", graph]
    if info.codec not in _WIDE_INTEGER_CODECS:
        options += ["-sample_fmt", "s16"]
    options += ["-c:a", "flac", "-f", "flac"]
    try:
        run: audio.FfmpegRun[None] = audio.run_ffmpeg(
            src,
            options,
            caps=audio.decode_caps(max_duration_ms + 1000, output_bytes=max_bytes),
            output=dst,
        )
    except audio.AudioError as exc:
        over = exc.code == "too_large" and dst.exists() and dst.stat().st_size > max_bytes
        dst.unlink(missing_ok=True)
        if over:
            raise audio.AudioError(
                "too_large", f"the redacted recording would be over the limit of {max_bytes / 2**20:g} MiB"
            ) from None
        raise
    if run.returncode < 0:
        dst.unlink(missing_ok=True)
        raise audio.AudioToolError(f"ffmpeg was killed by signal {-run.returncode}")
    if run.returncode != 0:
        dst.unlink(missing_ok=True)
        raise audio.AudioError("undecodable", "ffmpeg could not decode and redact the audio")
