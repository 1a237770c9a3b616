"""aiohttp's server logger, as callrec's web server uses it.

aiohttp logs every request its HTTP parser refuses (a bad header byte, a duplicated Content-Type, a
malformed chunk) at ERROR with a traceback, and quotes the offending bytes, which may be part of a
body holding a phone number (DESIGN.md rule 3). A client that hangs up in the middle of its body is
logged the same way. Neither is a fault of ours: the client got its 400, or left. They become one
line at INFO, with the exception's class and no bytes; anything else is logged as aiohttp does.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError

log = logging.getLogger("aiohttp.server")


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, BadHttpMessage | RequestPayloadError):
            self.logger.info("refused a malformed HTTP request (%s)", type(exc).__name__)
        elif isinstance(exc, ConnectionResetError):
            self.logger.info("a client closed its connection before its request was read")
        else:
            self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


def handler_args() -> Mapping[str, Any]:
    """``web.Application(handler_args=...)``: the server logger above for this app's connections."""
    return {"logger": ServerLog(log, {})}
