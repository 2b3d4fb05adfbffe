"""Validation of the disk tier's directory, done before any model is modified.

Rules (each failure is an ``OffloadDirError`` naming the directory):

* the directory exists, or its nearest existing ancestor is a writable directory so
  it can be created (mode 0700);
* it is a directory, writable by this process *and* has a write permission bit set:
  a directory whose mode has no write bit (e.g. ``chmod 555``) counts as read-only
  even for root, who could otherwise bypass the bits;
* a probe file can actually be created and removed there;
* ``shutil.disk_usage(dir).free`` is at least the bytes the plan will write.

Example:
    >>> import tempfile
    >>> from memscale.runtime.offload_dir import check_offload_dir
    >>> d = check_offload_dir(tempfile.mkdtemp(), required_bytes=1024)
    >>> d.is_dir()
    True
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from .._coerce import format_bytes
from ..errors import OffloadDirError

_ANY_WRITE_BIT = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH



def _writable(path: Path) -> bool:
    mode = path.stat().st_mode
    return bool(mode & _ANY_WRITE_BIT) and os.access(path, os.W_OK | os.X_OK)


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or "/")


def check_offload_dir(directory: str | os.PathLike[str], required_bytes: int,
                      what: str = "activations") -> Path:
    """Check (and create when missing) the disk tier's directory; return its absolute path.

    ``what`` names the bytes in the "too small" message (activations, optimizer state ...).

    If the directory had to be created and a later check fails, it is removed again,
    so a refused plan leaves the file system as it was.
    """
    if required_bytes < 0:
        raise OffloadDirError(f"required_bytes: {required_bytes} is negative; expected >= 0")
    path = Path(directory).expanduser().absolute()
    created: list[Path] = []
    try:
        if not path.exists():
            anchor = _nearest_existing(path)
            if not anchor.is_dir():
                raise OffloadDirError(f"offload directory {str(path)!r} cannot be created: "
                                      f"{str(anchor)!r} exists and is not a directory")
            if not _writable(anchor):
                raise OffloadDirError(f"offload directory {str(path)!r} does not exist and cannot "
                                      f"be created: {str(anchor)!r} is not writable; create it "
                                      "or choose another directory (offload.disk_dir)")
            missing = [p for p in (path, *path.parents) if not p.exists()]
            try:
                path.mkdir(mode=0o700, parents=True)
            except OSError as exc:
                raise OffloadDirError(f"offload directory {str(path)!r} cannot be created: {exc}") from exc
            created = missing
        if not path.is_dir():
            raise OffloadDirError(f"offload directory {str(path)!r} exists but is not a directory")
        if not _writable(path):
            mode = stat.S_IMODE(path.stat().st_mode)
            raise OffloadDirError(f"offload directory {str(path)!r} is not writable (mode "
                                  f"{mode:#o}); make it writable or choose another directory")
        try:
            fd, probe = tempfile.mkstemp(prefix=".memscale-probe-", dir=path)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise OffloadDirError(f"offload directory {str(path)!r} is not writable: {exc}") from exc
        free = shutil.disk_usage(path).free
        if free < required_bytes:
            raise OffloadDirError(f"offload directory {str(path)!r} has {format_bytes(free)} free but "
                                  f"the plan offloads {format_bytes(required_bytes)} of {what} "
                                  "there; free space or choose another directory")
        return path
    except OffloadDirError:
        for p in created:  # deepest first: undo exactly what this call created
            try:
                p.rmdir()
            except OSError:
                break
        raise
