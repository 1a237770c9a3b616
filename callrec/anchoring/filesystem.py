"""Anchors in an append-only file: one JSON line per anchor.

Each anchor is one ``write`` to a descriptor opened with ``O_APPEND`` (the kernel puts it at the
end, whatever other writers do), then ``fsync``; the directory is fsynced too when the file is
created. callrec never rewrites or truncates the file. A line cut short by a crash is reported by
``callrec audit verify`` as a line that is not an anchor, and the next anchor starts on a new line.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from callrec.anchoring import AnchorError, AnchorsRead
from callrec.anchoring.record import Anchor

# An anchor line is about 300 bytes; anything far longer is not one (and is not read into memory whole).
_MAX_LINE = 4096


class FileAnchorStore:
    def __init__(self, path: Path) -> None:
        self._path = path

    @property
    def path(self) -> Path:
        return self._path

    @property
    def description(self) -> str:
        return f"file {self._path}"

    async def put(self, anchor: Anchor) -> str:
        line = (anchor.to_json() + "\n").encode()
        try:
            await asyncio.to_thread(self._append, line)
        except OSError as exc:
            raise AnchorError(f"anchor file {self._path}: {exc.strerror or type(exc).__name__}") from None
        return str(self._path)

    def _append(self, line: bytes) -> None:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        created = not self._path.exists()
        fd = os.open(self._path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # after a torn last line, start a line of our own
            view = memoryview(line)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            dir_fd = os.open(self._path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)  # make the new file's name durable too
            finally:
                os.close(dir_fd)

    async def read_all(self) -> AnchorsRead:
        try:
            return await asyncio.to_thread(self._read)
        except OSError as exc:
            raise AnchorError(f"anchor file {self._path}: {exc.strerror or type(exc).__name__}") from None

    def _read(self) -> AnchorsRead:
        anchors: list[Anchor] = []
        bad: list[int] = []
        try:
            f = open(self._path, "rb")
        except FileNotFoundError:
            return AnchorsRead([])
        with f:
            number = 0
            while True:
                line = f.readline(_MAX_LINE + 1)
                if not line:
                    break
                number += 1
                if len(line) > _MAX_LINE:
                    bad.append(number)
                    while line and not line.endswith(b"\n"):  # skip the rest of the long line
                        line = f.readline(_MAX_LINE)
                    continue
                if not line.strip():
                    continue
                try:
                    anchors.append(Anchor.from_json(line))
                except ValueError:
                    bad.append(number)
        problems = []
        if bad:
            shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
            problems.append(f"anchor file {self._path}: {len(bad)} line(s) are not anchors (line {shown})")
        return AnchorsRead(anchors, problems)
