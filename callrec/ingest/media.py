"""Fetching from providers: only allow-listed hosts and ports (no SSRF), bounded size and time.

``[ingest] media_hosts`` (a :class:`~callrec.config.HostAllowList`, parsed at start-up) lists
where recording media may be fetched from: ``host`` for the scheme's default port, ``host:port``
for another. Plain HTTP is accepted only for loopback hosts listed there (tests use a local fake
provider); everything else must be HTTPS. Provider API calls (call look-ups, deletions) never go
to a URL from a callback: they go to the tenant's configured ``*_api_base``.
Redirects are never followed, so the URL checked is the URL fetched.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from yarl import URL

from callrec.config import HostAllowList, is_loopback
from callrec.errors import BadRequest


class MediaError(Exception):
    """A download that failed; ``permanent`` when retrying cannot help (404, too large)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def check_media_url(url: str, allowed: HostAllowList) -> str:
    """``url`` if it may be fetched: an absolute http(s) URL without user info whose host and
    port are in ``allowed``, over HTTPS unless the host is loopback. Raises BadRequest with code
    ``media_url_invalid`` or ``media_host_not_allowed``.

    The URL is parsed by yarl, as aiohttp parses it when it connects, so that the host and port
    checked here are the ones the request goes to (urllib and yarl disagree on some inputs).
    """
    if not url or len(url) > 2048 or any(c.isspace() or not c.isprintable() for c in url):
        raise BadRequest("the media URL is malformed", code="media_url_invalid")
    try:
        parsed = URL(url)
        host, port = parsed.raw_host, parsed.port
    except ValueError:
        raise BadRequest("the media URL is malformed", code="media_url_invalid") from None
    if (
        parsed.scheme not in ("https", "http")
        or not host
        or port is None
        or "@" in (parsed.raw_authority or "")
    ):
        raise BadRequest("the media URL must be an http(s) URL without credentials", code="media_url_invalid")
    if not allowed.allows(scheme=parsed.scheme, host=host, port=port):
        raise BadRequest(
            f"the URL's host and port are not in {allowed.key or 'the allow-list'}",
            code="media_host_not_allowed",
        )
    if parsed.scheme == "http" and not is_loopback(host):
        raise BadRequest("media must be fetched over HTTPS", code="media_url_invalid")
    return url


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    sha256: str
    content_type: str


async def download(
    session: aiohttp.ClientSession,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    max_bytes: int,
    timeout: aiohttp.ClientTimeout,
    directory: Path,
) -> Downloaded:
    """Stream ``url`` to a private temp file, hashing as it goes; the caller removes the file."""
    fd, name = tempfile.mkstemp(dir=directory, prefix="media-", suffix=".part")
    path = Path(name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async with session.get(url, headers=headers, timeout=timeout, allow_redirects=False) as resp:
                if resp.status in (404, 410):
                    raise MediaError(
                        f"the provider has no media at that URL (HTTP {resp.status})", permanent=False
                    )
                if resp.status in (401, 403):
                    raise MediaError(f"the provider refused our credentials (HTTP {resp.status})")
                if resp.status != 200:
                    raise MediaError(f"media download failed with HTTP {resp.status}")
                declared = resp.content_length
                if declared is not None and declared > max_bytes:
                    raise MediaError(
                        f"media is {declared} bytes, over the {max_bytes}-byte limit", permanent=True
                    )
                async for chunk in resp.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > max_bytes:
                        raise MediaError(f"media is over the {max_bytes}-byte limit", permanent=True)
                    digest.update(chunk)
                    out.write(chunk)
                if declared is not None and size != declared:
                    raise MediaError(f"media download was cut short ({size} of {declared} bytes)")
                content_type = resp.headers.get("Content-Type", "")
    except BaseException:
        # Synchronous on purpose: this must run even when the task is being cancelled.
        path.unlink(missing_ok=True)  # noqa: ASYNC240
        raise
    return Downloaded(path=path, size=size, sha256=digest.hexdigest(), content_type=content_type)
