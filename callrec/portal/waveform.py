"""Waveform peaks for the recording page, computed from the decrypted audio.

Drawn server-side as an SVG, so the page needs no script. The decrypted audio lives only in a
private spool file for the time of the computation. ffmpeg decodes it (through
:func:`callrec.audio.run_ffmpeg`, under its caps) to 16-bit mono on a pipe, read here a block at a
time: memory stays the same whatever the length, channels or sample rate of the recording.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import IO, Final

import numpy as np
from aiohttp import web

from callrec import audio
from callrec.appkeys import config_key, keys_key, store_key
from callrec.crypto import envelope
from callrec.db import recordings
from callrec.ingest.webhooks import spool_dir

BUCKETS = 480
MAX_DURATION_MS = 3 * 3600 * 1000
_BLOCK_BYTES: Final = 1 << 20
_FULL_SCALE: Final = 32768.0


async def peaks_for(app: web.Application, rec: recordings.Recording) -> list[float] | None:
    if rec.wrapped_key is None or rec.object_key is None or (rec.duration_ms or 0) > MAX_DURATION_MS:
        return None
    kek = await app[keys_key].kek(rec.tenant)
    handle = await asyncio.to_thread(
        envelope.unwrap_key, rec.wrapped_key, kek, tenant=rec.tenant, recording_id=str(rec.id)
    )
    reader = await app[store_key].open_reader(rec.object_key, version_id=rec.object_version)
    with tempfile.TemporaryDirectory(dir=spool_dir(app[config_key]), prefix="wave-") as work:
        plain = Path(work) / "audio"

        def compute() -> list[float]:
            try:
                stream = envelope.decrypt_stream(reader, handle, tenant=rec.tenant, recording_id=str(rec.id))
                with plain.open("wb") as out:
                    while chunk := stream.read(envelope.CHUNK_SIZE):
                        out.write(chunk)
            finally:
                reader.close()
            return file_peaks(plain, duration_ms=rec.duration_ms or 0, sample_rate=rec.sample_rate or 8000)

        return await asyncio.to_thread(compute)


def file_peaks(path: Path, *, duration_ms: int, sample_rate: int, buckets: int = BUCKETS) -> list[float]:
    """The loudest sample of each of ``buckets`` equal slices of ``path``, 0..1, on the mono mix.

    ``duration_ms`` and ``sample_rate`` are the recording's (from its row) and size the slices;
    ffmpeg decodes at most :data:`MAX_DURATION_MS`, so a file longer than its row says cannot make
    this run longer. Blocking: run it in a thread. Raises what :func:`callrec.audio.run_ffmpeg` and
    a failed decode raise (:class:`~callrec.audio.AudioError`, :class:`~callrec.audio.AudioToolError`).
    """
    duration_ms = min(max(duration_ms, 1), MAX_DURATION_MS)
    frames = max(duration_ms * sample_rate // 1000, 1)
    per_bucket = max(-(-frames // buckets), 1)
    run = audio.run_ffmpeg(
        path,
        ["-ar", str(sample_rate), "-ac", "1", "-c:a", "pcm_s16le", "-f", "s16le"],
        caps=audio.decode_caps(duration_ms + 1000),
        read=lambda stream: _bucket_peaks(stream, per_bucket, buckets),
    )
    if run.returncode < 0:
        raise audio.AudioToolError(f"ffmpeg was killed by signal {-run.returncode}")
    if run.returncode != 0 or run.output is None:
        raise audio.AudioError("undecodable", "the stored audio could not be decoded for its waveform")
    return run.output


def _bucket_peaks(stream: IO[bytes], per_bucket: int, buckets: int) -> list[float]:
    """Peaks of consecutive slices of ``per_bucket`` samples of raw 16-bit mono, at most ``buckets``."""
    out: list[float] = []
    loudest = 0
    filled = 0  # samples in the current slice
    pending = b""
    while block := stream.read(_BLOCK_BYTES):
        if len(out) >= buckets:
            continue  # read to the end (at most the decode cap), so that ffmpeg finishes cleanly
        data = pending + block
        usable = len(data) - len(data) % 2
        pending = data[usable:]
        samples = np.abs(np.frombuffer(data[:usable], dtype="<i2").astype(np.int32))
        at = 0
        while at < len(samples) and len(out) < buckets:
            take = min(per_bucket - filled, len(samples) - at)
            loudest = max(loudest, int(samples[at : at + take].max()))
            filled += take
            at += take
            if filled == per_bucket:
                out.append(round(min(loudest / _FULL_SCALE, 1.0), 4))
                loudest, filled = 0, 0
    if filled and len(out) < buckets:
        out.append(round(min(loudest / _FULL_SCALE, 1.0), 4))
    return out
