"""Writing files so that a crash or a concurrent reader never sees half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a part.

    The bytes go to a hidden temporary file in the same folder, are flushed to disk, and are then moved
    into place with :func:`os.replace` (or :func:`os.link` when ``overwrite`` is false, which fails
    atomically if the name was taken meanwhile). The temporary file never survives.

    Raises:
        FileExistsError: ``overwrite`` is false and ``path`` exists.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; the web server may run as another user
        if overwrite:
            os.replace(tmp_name, target)
        else:
            _link_exclusive(tmp_name, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)


def _link_exclusive(tmp_name: str, target: Path) -> None:
    """Move a finished temporary file to ``target`` unless ``target`` exists."""
    try:
        os.link(tmp_name, target)  # atomic "create if absent": raises FileExistsError
    except FileExistsError:
        raise
    except OSError:
        # Some file systems have no hard links: fall back to check-then-replace (a tiny race window).
        if target.exists():
            raise FileExistsError(f"{target} already exists") from None
        os.replace(tmp_name, target)
