"""PCI redaction: card details must not be kept in recordings (PCI DSS v4.0 requirement 3.3.1:
sensitive authentication data, including card verification codes, is not retained after
authorisation, even encrypted; recordings of a caller reading them out count).

Spans come from ``recording_paused``/``recording_resumed`` call events the provider did not
already cut, and from explicit ``redact`` spans in upload metadata. They are replaced by digital
silence with pydub before encryption, so the original never reaches storage.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydub import AudioSegment

from callrec import audio


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


def redact_file(src: Path, dst: Path, spans: list[Span], *, container: str) -> None:
    """Write ``src`` with ``spans`` silenced to ``dst`` as PCM WAV. Blocking: run it in a thread."""
    with tempfile.TemporaryDirectory(dir=dst.parent) as work:
        source = src
        if container != "wav":
            source = Path(work) / "decoded.wav"
            audio.decode_to_wav(src, source)
        try:
            segment = AudioSegment.from_wav(str(source))
        except Exception:  # pydub reads WAV itself; a compressed WAV goes through ffmpeg first
            source = Path(work) / "decoded.wav"
            audio.decode_to_wav(src, source)
            segment = AudioSegment.from_wav(str(source))
        for span in merge(spans):
            end = min(span.end_ms, len(segment))
            if end <= span.start_ms:
                continue
            silence = AudioSegment.silent(duration=end - span.start_ms, frame_rate=segment.frame_rate)
            silence = silence.set_channels(segment.channels).set_sample_width(segment.sample_width)
            segment = segment[: span.start_ms] + silence + segment[end:]
        segment.export(str(dst), format="wav")
