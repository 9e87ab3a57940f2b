"""Atomic file output and hashing.

Every artifact is written under a temporary name in the destination folder and
renamed into place, so a killed process never leaves a half-written file at a
final path.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from typing import Any, Callable, Iterable, Iterator, Union

from converter.errors import InputRefused

# a path as the standard library takes it (a layout.Workdir is one too)
StrPath = Union[str, "os.PathLike[str]"]


def file_digest(path: StrPath, algo: str = "sha256", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def open_regular(path: StrPath, flags: int = os.O_RDONLY) -> tuple[int, os.stat_result]:
    """(fd, stat) of path, opened only if it is a regular file.

    O_NONBLOCK makes the open itself return at once on a FIFO with no writer
    (a plain open waits for one forever) and on a device; what is not a
    regular file is then closed unread and refused with InputRefused. The
    flag is cleared again before the fd is returned. OSError passes through."""
    fd = os.open(path, flags | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputRefused("a folder, not a file" if stat.S_ISDIR(st.st_mode) else "not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_limited(path: StrPath, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, read once.

    A FIFO or device (which could block or never end) and a file larger than
    any `what` are refused with InputRefused before anything is read, and
    before an open that could block; a file that grows while being read is
    refused too. OSError passes through."""
    fd, st = open_regular(path)
    with os.fdopen(fd, "rb") as fh:
        if st.st_size > limit:
            raise InputRefused(f"{st.st_size} bytes is larger than any {what} ({limit} bytes)")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise InputRefused(f"grew larger than any {what} ({limit} bytes) while being read")
    return data


def write_bytes_atomic(path: StrPath, data: bytes) -> None:
    """data at path, or nothing there: a temporary file beside it, renamed.
    An I/O error (a full disk, a folder at path) names path, not the
    temporary file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if os.path.isdir(path) and not os.path.islink(path):
        raise IsADirectoryError(errno.EISDIR, "a folder is where a file goes", path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are for sharing
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OSError(exc.errno, exc.strerror or str(exc), path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask():
    current = os.umask(0)
    os.umask(current)
    return current


def write_json_atomic(path: StrPath, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_png_atomic(path: StrPath, image: Any) -> None:
    """image: a PIL Image, or an array Pillow can take."""
    import io

    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_stale_staging(parent: str, name: str) -> None:
    """Remove staging folders of `name` left by runs that are no longer alive
    (SIGKILL, power loss); a live run's folder carries its pid and is kept."""
    prefix, suffix = f".{name}.", ".staging"
    try:
        entries = os.listdir(parent)
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.startswith(prefix) and entry.endswith(suffix):
            pid = entry[len(prefix):-len(suffix)].split(".")[0]
            if not pid.isdigit() or not _pid_alive(int(pid)):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def disk_nearly_full(folder: str, margin: int = 64 << 20) -> bool:
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


@contextlib.contextmanager
def scratch_dir(final_dir: StrPath) -> Iterator[str]:
    """Yield a temporary folder beside final_dir (named with this run's pid,
    so that a later run removes it if this one is killed); it is removed
    when the block ends. A failure caused by a full disk (also inside C++
    writers) becomes DiskFullError naming final_dir."""
    from converter.errors import ConverterError, DiskFullError

    parent = os.path.dirname(os.path.abspath(final_dir))
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(os.path.abspath(final_dir))
    remove_stale_staging(parent, name)
    tmp = tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", suffix=".staging", dir=parent)
    try:
        yield tmp
    except (ConverterError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or disk_nearly_full(parent):
            raise DiskFullError(f"disk full while writing {final_dir} "
                                f"({shutil.disk_usage(parent).free} bytes free)") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(final_dir: StrPath, record: str | None = None) -> Iterator[str]:
    """Yield a temporary folder beside final_dir, to be filled with the
    stage's files (subfolders allowed). On success, the old record (if named)
    is removed first, then each file is moved into final_dir with os.replace.
    A run killed half-way through leaves files without their record, which
    every reader refuses (records.verified_record); the stage then writes its
    new record last. On failure nothing at final_dir changes (see scratch_dir)."""
    with scratch_dir(final_dir) as tmp:
        yield tmp
        if record:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(final_dir, record))
        for folder, _, names in sorted(os.walk(tmp)):
            target = os.path.join(final_dir, os.path.relpath(folder, tmp))
            os.makedirs(target, exist_ok=True)
            for file_name in sorted(names):
                os.replace(os.path.join(folder, file_name), os.path.join(target, file_name))


def describe_files(folder: str, names: Iterable[str]) -> dict[str, dict]:
    return {n: {"size": os.path.getsize(os.path.join(folder, n)),
                "sha256": file_digest(os.path.join(folder, n))} for n in names}


@contextlib.contextmanager
def workdir_lock(folder: StrPath, shared: bool = False, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an flock on folder/.ocrnet-convert.lock for the duration.

    Stages that write take it exclusively; readers (predict, evaluate) take
    it shared. A second run waits for the first, saying so, instead of
    reading or writing files the first is replacing."""
    import fcntl

    if shared and not os.path.isdir(folder):
        yield  # nothing there to read: the command says so; a reader creates no folder
        return
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ".ocrnet-convert.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            if log:
                log(f"waiting for another ocrnet-convert run on {folder} (pid {holder}) to finish...")
            fcntl.flock(fd, mode)
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
