"""One writer per library: an exclusive lock on a file in the home that holds the writer's pid.

The OS drops the lock when its process dies (even by SIGKILL), so a stale lock file left by a
dead writer is simply taken over.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from vitsearch.errors import LibraryLockedError
from vitsearch.machine.fileio import lock


class WriterLock:
    def __init__(self, home: Path) -> None:
        self.path = home / "writer.lock"
        self._handle: IO[str] | None = None

    def acquire(self) -> WriterLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115  held open for the lock's lifetime
        try:
            lock(handle)
        except OSError:
            handle.close()
            pid = holder_pid(self.path)
            raise LibraryLockedError(
                f"another vitsearch process (pid {pid or '?'}) is writing to this library; "
                "wait for it to finish or stop it"
            ) from None
        if not _same_file(handle, self.path):
            # A writer that let go between our open and our lock removed the file (its library
            # stayed empty): our lock is on a file nobody else can find; take the one there now.
            handle.close()
            return self.acquire()
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def release(self, remove: bool = False) -> None:
        """Let go of the lock; with ``remove``, delete its file first, while still held."""
        if self._handle is not None:
            if remove:
                self.path.unlink(missing_ok=True)
            self._handle.seek(0)
            self._handle.truncate()
            self._handle.close()
            self._handle = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder_pid(path: Path) -> int | None:
    """The pid of the live writer, or None when nobody holds the lock."""
    try:
        with open(path) as handle:
            try:
                lock(handle, shared=True)
            except OSError:
                text = path.read_text().strip()
                return int(text) if text.isdigit() else None
            return None
    except FileNotFoundError:
        return None


def _same_file(handle, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), path.stat())
    except FileNotFoundError:
        return False
