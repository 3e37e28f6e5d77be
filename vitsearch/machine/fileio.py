"""Files written whole or not at all, and locks on files, for every layer that keeps files."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from vitsearch.errors import DiskFullError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]  # lock() checks for it: Windows locks nothing


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or the user's quota on it


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to. When the block ends it replaces ``path``
    in one rename, so a reader sees the old file or the new one, never half of one; when the
    block fails it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden and unique: threads of one process may replace the same file at once, and the
    # watcher ignores dot files.
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield temp
        os.replace(temp, path)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise DiskFullError(path.parent) from None
        raise


def write_atomically(path: Path, data: bytes | str) -> None:
    with replacing(path) as temp:
        if isinstance(data, str):
            temp.write_text(data)
        else:
            temp.write_bytes(data)


def lock(handle: IO, shared: bool = False, wait: bool = False) -> None:
    """Lock the open file ``handle`` (OSError when another process holds it and not
    ``wait``). The OS drops the lock when its process dies, even by SIGKILL."""
    if fcntl is None:
        import msvcrt

        # Windows knows only exclusive locks; a reader's "shared" probe is one too.
        msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
        return
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    fcntl.flock(handle.fileno(), mode if wait else mode | fcntl.LOCK_NB)


@contextmanager
def held(path: Path) -> Iterator[None]:
    """An exclusive lock on the file ``path`` for the block, waiting for another process's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        lock(handle, wait=True)
        yield
