"""Waveform peaks for the recording page, computed with pydub from the decrypted audio.

Drawn server-side as an SVG, so the page needs no script. The decrypted audio lives only in a
private spool file for the time of the computation.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from aiohttp import web
from pydub import AudioSegment

from callrec import audio
from callrec.appkeys import config_key, keys_key, store_key
from callrec.crypto import envelope
from callrec.db import recordings
from callrec.ingest.webhooks import spool_dir

BUCKETS = 480
MAX_DURATION_MS = 3 * 3600 * 1000


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
            source = plain
            if rec.format != "wav" or rec.codec not in ("pcm_s16le", "pcm_u8", "pcm_s24le", "pcm_s32le"):
                source = Path(work) / "decoded.wav"
                audio.decode_to_wav(plain, source)
            return peaks(AudioSegment.from_wav(str(source)))

        return await asyncio.to_thread(compute)


def peaks(segment: AudioSegment, buckets: int = BUCKETS) -> list[float]:
    """The loudest sample of each of ``buckets`` equal slices, 0..1, on the mono mix."""
    mono = segment.set_channels(1) if segment.channels > 1 else segment
    full_scale = float(mono.max_possible_amplitude) or 1.0
    step = max(len(mono) / buckets, 1.0)
    out: list[float] = []
    for i in range(buckets):
        piece = mono[int(i * step) : int((i + 1) * step)]
        if len(piece) == 0:
            break
        out.append(round(min(piece.max / full_scale, 1.0), 4))
    return out
