"""Writing outputs so that a result is never lost or faked (the one place for it).

Every output (labels, probabilities, overlays, OME-Zarr stores, model files,
training checkpoints, bioimage.io packages) is written under a hidden
temporary sibling name, ``.NAME.HOST-PID-RANDOM.partial.EXT``, and renamed to
its real name only once it is complete:

- a run killed at any moment (SIGTERM at a job's time limit, SIGKILL, Ctrl+C)
  never leaves something under the output's name, so a rerun sees no output and
  redoes it instead of skipping it; the unfinished sibling of a dead process is
  removed by the next run that writes the same output;
- an existing output is replaced (``overwrite``) only after the new one is
  complete: a run that fails keeps the old result;
- without ``overwrite``, publishing never replaces a file that appeared
  meanwhile (a hard link, not a rename, puts it in place);
- files are created with the permissions of the umask (normally 0644), not the
  0600 of temporary files, so colleagues and cluster workers can read them.

:func:`check_outputs` refuses an output that is an input (also through another
spelling of the same path, or inside a zarr store) and outputs that collide;
:func:`exclusive_lock` lets one writer at a time work on a path.

Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "OutputExistsError",
    "OutputLockedError",
    "SameFileError",
    "partial_path",
    "remove_path",
    "remove_stale_partials",
    "publish",
    "atomic_output",
    "open_atomic",
    "OutputSet",
    "check_outputs",
    "same_path",
    "exclusive_lock",
    "check_folder_writable",
]

_SUFFIXES = (".ome.zarr", ".ome.tiff", ".ome.tif")
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[0-9a-f]{8}"
                      r"\.partial(?P<ext>(\.[^.]+)*)$")


class OutputExistsError(FileExistsError):
    """The output exists and overwriting it was not asked for."""


class OutputLockedError(OSError):
    """Another process is writing the same output."""


class SameFileError(ValueError):
    """An output would replace an input, or two outputs are the same file."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _ending(name: str) -> str:
    lower = name.lower()
    for ending in _SUFFIXES:
        if lower.endswith(ending):
            return name[-len(ending):]
    return Path(name).suffix


def partial_path(path: str | os.PathLike) -> Path:
    """A new hidden sibling of ``path`` to write into, with the same file name ending.

    >>> partial_path("out/cells.tif").name.endswith(".partial.tif")
    True
    """
    path = Path(path)
    tag = f"{_host()}-{os.getpid()}-{secrets.token_hex(4)}"
    return path.with_name(f".{path.name}.{tag}.partial{_ending(path.name)}")


def remove_path(path: str | os.PathLike) -> None:
    """Delete a file, a link or a folder (a zarr store); nothing if there is none."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=False)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # pragma: no cover - other systems
        return True
    return True


def remove_stale_partials(path: str | os.PathLike) -> list[Path]:
    """Remove unfinished siblings of ``path`` left by dead processes of this machine.

    Returns what was removed. Siblings of live processes (another writer), or
    of other machines (which cannot be checked from here), are kept.
    """
    path = Path(path)
    removed: list[Path] = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    host = _host()
    for sibling in siblings:
        m = _PARTIAL.match(sibling.name)
        if m is None or m["name"] != path.name or m["host"] != host:
            continue
        if _pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            remove_path(sibling)
            removed.append(sibling)
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        os.fsync(f.fileno())


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def publish(tmp: str | os.PathLike, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Put the complete ``tmp`` in place under the name ``path``.

    A file is fsynced and linked (no ``overwrite``: fails if ``path`` exists) or
    renamed over the old one. A folder (zarr store) replaces an old one by two
    renames; the old one is deleted only once the new one is in place.

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is false (``tmp`` is kept).
    """
    tmp, path = Path(tmp), Path(path)
    if tmp.is_dir():
        if _exists(path):
            if not overwrite:
                raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
            old = path.with_name(f".{path.name}.{_host()}-{os.getpid()}-"
                                 f"{secrets.token_hex(4)}.partial{_ending(path.name)}")
            os.rename(path, old)  # the old output stays whole until the new one is there
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            remove_path(old)
        else:
            os.rename(tmp, path)
    else:
        _fsync_file(tmp)
        if overwrite and not path.is_dir():
            os.replace(tmp, path)
        else:
            if path.is_dir() and not path.is_symlink():
                if not overwrite:
                    raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
                remove_path(path)
            try:
                os.link(tmp, path)  # exclusive: fails if path appeared meanwhile
            except FileExistsError:
                raise OutputExistsError(
                    f"{path} exists; pass --overwrite to replace it") from None
            except OSError as err:  # no hard links on this file system
                if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP,
                                     errno.EXDEV, errno.EMLINK):
                    raise
                if _exists(path):
                    raise OutputExistsError(
                        f"{path} exists; pass --overwrite to replace it") from None
                os.rename(tmp, path)
            else:
                tmp.unlink()
    _fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary sibling path to write ``path`` into; published when the block ends.

    If the block raises (or the process is interrupted), the temporary sibling
    is removed and an existing ``path`` is left as it was.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_output(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    if _exists(path) and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = partial_path(path)
    try:
        yield tmp
        publish(tmp, path, overwrite=overwrite)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_path(tmp)
        raise


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "wb", *,
                overwrite: bool = False) -> Iterator[IO[Any]]:
    """:func:`atomic_output` as an open file (``"wb"`` or ``"w"``), fsynced before publishing."""
    if mode not in ("wb", "w"):
        raise ValueError(f"open_atomic writes new files: mode 'wb' or 'w', not {mode!r}")
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, mode.replace("w", "x")) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


class OutputSet:
    """Several outputs of one run, published together once all are complete.

    ``tmp = outputs.add(path)`` gives where to write each; :meth:`commit` puts
    them all in place (after checking that none appeared meanwhile), and
    :meth:`discard` removes the unfinished ones. Use it as a context manager:
    leaving the block by an exception discards.
    """

    def __init__(self, *, overwrite: bool = False) -> None:
        self.overwrite = overwrite
        self._items: list[tuple[Path, Path]] = []

    def add(self, path: str | os.PathLike) -> Path:
        """Reserve ``path``; returns the temporary sibling to write it into."""
        path = Path(path)
        if _exists(path) and not self.overwrite:
            raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(path)
        tmp = partial_path(path)
        self._items.append((tmp, path))
        return tmp

    def commit(self) -> list[Path]:
        """Publish every output that was written; returns their paths."""
        if not self.overwrite:
            for _, path in self._items:
                if _exists(path):
                    raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
        done = []
        for tmp, path in self._items:
            if _exists(tmp):
                done.append(publish(tmp, path, overwrite=self.overwrite))
        self._items = []
        return done

    def discard(self) -> None:
        """Remove the unfinished outputs."""
        for tmp, _ in self._items:
            with contextlib.suppress(OSError):
                remove_path(tmp)
        self._items = []

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        self.discard()  # after commit() nothing is left to discard


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two spellings name the same file or folder (links and ``..`` resolved)."""
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(inner: Path, outer: Path) -> bool:
    return inner != outer and outer in inner.parents


def check_outputs(inputs: Sequence[str | os.PathLike | None],
                  outputs: Sequence[tuple[str, str | os.PathLike | None]]) -> None:
    """Refuse outputs that would replace an input or each other.

    Parameters
    ----------
    inputs : sequence of paths
        Files or folders (zarr stores) read by the run; None entries are ignored.
    outputs : sequence of (what, path)
        The outputs with a word for the message (``"labels"``, ``"--probabilities"``).

    Raises
    ------
    SameFileError
        With a one-line message naming both.
    """
    outs = [(what, Path(p)) for what, p in outputs if p is not None]
    for source in (Path(p) for p in inputs if p is not None):
        real = _real(source)
        for what, out in outs:
            real_out = _real(out)
            if same_path(source, out) or _inside(real, real_out) or _inside(real_out, real):
                raise SameFileError(
                    f"the {what} output {out} would replace the input {source}; "
                    "write the output to another file name"
                )
    for i, (what, out) in enumerate(outs):
        for other_what, other in outs[i + 1:]:
            if same_path(out, other):
                raise SameFileError(
                    f"the {what} and {other_what} outputs are the same file {out}; "
                    "give each its own file name"
                )


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str = "writing") -> Iterator[Path]:
    """Hold the lock of ``path`` (a hidden ``.NAME.lock`` sibling) while the block runs.

    A second process that asks for the same lock fails at once with
    :class:`OutputLockedError`. The lock is released when the block ends or the
    process dies (SIGKILL included), so it never needs cleaning up by hand.
    Creating the lock file also shows early that the folder is writable
    (``PermissionError`` otherwise).
    """
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: an exclusive lock file
        fcntl = None
    while True:
        if fcntl is None:  # pragma: no cover
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                raise OutputLockedError(
                    f"another process is {what} {path} (lock file {lock}; delete it if no "
                    "process is); wait for it to finish or choose another file name"
                ) from None
            break
        fd = os.open(lock, os.O_CREAT | os.O_WRONLY, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputLockedError(
                f"another process is {what} {path}; wait for it to finish or choose another "
                "file name"
            ) from None
        try:  # the lock file may have been removed by its last holder meanwhile
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{_host()} {os.getpid()}\n".encode())
        yield lock
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def check_folder_writable(folder: str | os.PathLike, what: str = "the output") -> None:
    """Create ``folder`` if needed and check that files can be written in it.

    Raises a PermissionError with a one-line message naming the folder.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".{_host()}-{os.getpid()}-{secrets.token_hex(4)}.partial"
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        os.close(fd)
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"cannot write {what} in the folder {folder} ({err.strerror or err}); choose a "
            "folder you can write to"
        ) from None
