"""One way to replace a file so readers see the old content or the new, never half of it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def temp_path(final: Path) -> Path:
    """Where ``final``'s new content is written before the rename (never read there:
    readers skip hidden ``.tmp`` files)."""
    return final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_atomic(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Writes ``text`` to a unique temporary file beside ``path`` (``mode`` whatever the
    umask), fsyncs it and renames it over ``path``; the temporary file never outlives a
    failure."""
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
