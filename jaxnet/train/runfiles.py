"""The files of a run folder: a lock against two runs writing into the same folder, atomic
text writes, and the clean-up of temporary files left by writers that were killed.

* :func:`hold_folder`: a context manager holding ``<folder>/.jaxnet.lock``, created atomically
  (``O_CREAT | O_EXCL``) with the holder's pid. A lock whose pid is no longer running (a run
  killed with SIGKILL) is stale: it is taken over. A live holder raises
  :class:`FolderInUseError` naming its pid. Re-entrant within one process.
* :func:`atomic_write_text`: write a temporary file in the same folder, fsync, rename.
* :func:`temp_prefix` / :func:`remove_stale_temp_files`: temporary files are named
  ``.<name>.tmp-<pid>-<random>``; those of dead writers are deleted by the next write.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Union

from jaxnet.errors import FaultError

__all__ = [
    "LOCK_NAME", "FolderInUseError", "hold_folder", "pid_alive", "atomic_write_text",
    "temp_prefix", "remove_stale_temp_files",
]

LOCK_NAME = ".jaxnet.lock"
_EMPTY_LOCK_GRACE_S = 10.0   # a lock file without a pid yet: its writer is between create and write
_LEGACY_TEMP_AGE_S = 3600.0  # temporary files without a pid in their name: removed after an hour

_held: dict[str, int] = {}
_held_guard = threading.Lock()

PathLike = Union[str, os.PathLike]


class FolderInUseError(FaultError):
    """Another live process holds the folder's lock. ``pid``: that process; ``path``: the lock file."""

    def __init__(self, message: str, *, pid: int, path: str):
        super().__init__(message)
        self.pid, self.path = pid, path


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (``os.kill(pid, 0)``)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:  # pragma: no cover - e.g. platforms without signals
        return True
    return True


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().split()
    except OSError:
        return None
    try:
        return int(text[0]) if text else None
    except ValueError:
        return None


def _try_create(path: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return True


def _acquire(folder: str) -> str:
    path = os.path.join(folder, LOCK_NAME)
    for _ in range(5):
        if _try_create(path):
            return path
        pid = _read_pid(path)
        if pid is None:
            try:
                age = time.time() - os.stat(path).st_mtime
            except FileNotFoundError:
                continue  # removed meanwhile: try again
            if age < _EMPTY_LOCK_GRACE_S:
                time.sleep(0.05)
                continue
        elif pid_alive(pid) and pid != os.getpid():
            raise FolderInUseError(
                f"the folder {folder!r} is in use by another run (pid {pid}; lock file {path}); "
                f"wait for it to finish or choose another output folder",
                pid=pid, path=path,
            )
        # a stale lock (its process is gone): take it over
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    pid = _read_pid(path) or -1
    raise FolderInUseError(
        f"the folder {folder!r} is in use by another run (pid {pid}; lock file {path})", pid=pid, path=path
    )


@contextlib.contextmanager
def hold_folder(folder: PathLike) -> Iterator[str]:
    """Hold ``folder``'s lock for the duration of the block (the folder must exist).

    Yields the lock file's path. Raises :class:`FolderInUseError` if a live process holds it,
    ``OSError`` if the lock file cannot be created (e.g. a read-only folder).
    """
    folder = os.fspath(folder)
    key = os.path.realpath(folder)
    with _held_guard:
        nested = key in _held
        if nested:
            _held[key] += 1
    if nested:
        try:
            yield os.path.join(folder, LOCK_NAME)
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    path = _acquire(folder)
    with _held_guard:
        _held[key] = 1
    try:
        yield path
    finally:
        with _held_guard:
            del _held[key]
        if _read_pid(path) == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(path)


def temp_prefix(path: PathLike) -> str:
    """The prefix of this process's temporary files for ``path``: ``.<name>.tmp-<pid>-``."""
    return f".{os.path.basename(os.fspath(path))}.tmp-{os.getpid()}-"


def remove_stale_temp_files(path: PathLike) -> list[str]:
    """Delete ``.<name>.tmp-<pid>-*`` files next to ``path`` whose pid is not running (and
    ``.<name>.tmp-*`` files without a pid older than an hour). Returns the paths removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    stem = f".{os.path.basename(path)}.tmp-"
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if not name.startswith(stem):
            continue
        full = os.path.join(directory, name)
        head = name[len(stem):].split("-", 1)[0]
        if head.isdigit() and len(name) > len(stem) + len(head) and name[len(stem) + len(head)] == "-":
            stale = int(head) != os.getpid() and not pid_alive(int(head))
        else:
            try:
                stale = now - os.stat(full).st_mtime > _LEGACY_TEMP_AGE_S
            except OSError:
                continue
        if stale:
            try:
                os.unlink(full)
                removed.append(full)
            except OSError:
                pass
    return removed


def atomic_write_text(path: PathLike, text: str) -> None:
    """Replace ``path`` with ``text``: a temporary file in the same folder, fsync'ed, renamed
    over it; the old content stays if anything fails before the rename."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):
            os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
