"""A deadline for receiving a request's body: aiohttp's server has none.

Without one, a client that sends an upload a few bytes at a time (a "slow loris") holds a handler,
a connection and a spool file for as long as it likes. ``[ingest] upload_timeout`` bounds the whole
body; a body still incomplete then ends the request with 408, before anything is stored.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

from aiohttp import web

from callrec.appkeys import config_key
from callrec.errors import CallrecError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def with_body_deadline(handler: Handler) -> Handler:
    """``handler``, cancelled if its request's body has not fully arrived ``[ingest] upload_timeout``
    after the handler started; the client then gets 408 ``upload_timeout``.

    Only a handler still waiting for its body is cancelled: once the last byte is in, the deadline
    no longer applies, so work that follows (encrypting, storing, committing the job) is never cut
    half way.
    """

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        timeout = request.app[config_key].ingest.upload_timeout.total_seconds()
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            if not request.content.is_eof():
                expired = True
                task.cancel()

        timer = asyncio.get_running_loop().call_later(timeout, expire)
        try:
            return await handler(request)
        except asyncio.CancelledError:
            # Ours only if nobody else cancelled the task too (a server shutting down, a client gone).
            if expired and task.uncancel() == 0:
                raise CallrecError(
                    f"the request body did not arrive within {timeout:g} s ([ingest] upload_timeout)",
                    code="upload_timeout",
                    status=408,
                ) from None
            raise
        finally:
            timer.cancel()

    return wrapped
