"""Fetching from providers: only allow-listed hosts (no SSRF), bounded size and time.

``[ingest] media_hosts`` lists the hosts media and provider API calls may go to. Plain HTTP
and loopback addresses are accepted only for hosts explicitly listed there (as tests do with
a local fake provider); everything else must be HTTPS to a listed host.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from callrec.errors import BadRequest


class MediaError(Exception):
    """A download that failed; ``permanent`` when retrying cannot help (404, too large)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_media_url(url: str, allowed_hosts: tuple[str, ...]) -> str:
    """Validate a provider-supplied URL; raises BadRequest (code media_host_not_allowed)."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise BadRequest("the media URL is malformed", code="media_url_invalid") from None
    if parts.scheme not in ("https", "http") or not host or parts.username or parts.password:
        raise BadRequest("the media URL must be an http(s) URL without credentials", code="media_url_invalid")
    if host not in {h.lower() for h in allowed_hosts}:
        raise BadRequest("the media URL's host is not in [ingest] media_hosts", code="media_host_not_allowed")
    if parts.scheme == "http" and not _is_loopback(host):
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
