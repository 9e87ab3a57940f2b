"""The user's cache folder: content-addressed entries, and this machine's secret.

Entries are files named by their own sha384 (`<cache>/sha384/<2 hex>/<sha384>`),
so an entry is trusted only as far as its bytes hash to its name: readers
verify on every use and delete a bad entry.

The secret (`<cache>/results.key`, 32 random bytes, mode 0600, created on
first use) seals what this machine writes and later trusts again, such as
the validate engine's stored per-image results: a result whose seal does not
verify was not written here, or was changed since.
"""
from __future__ import annotations

import os
import sys

SECRET_NAME = "results.key"
SECRET_BYTES = 32


def default_cache_dir() -> str:
    """$OCRNET_CONVERT_CACHE, else the platform's user cache folder:
    $XDG_CACHE_HOME or ~/.cache on Linux, ~/Library/Caches on macOS,
    %LOCALAPPDATA% on Windows; always with an `ocrnet-convert` subfolder."""
    if os.environ.get("OCRNET_CONVERT_CACHE"):
        return os.environ["OCRNET_CONVERT_CACHE"]
    if sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Caches")
    elif os.name == "nt":
        base = os.environ.get("LOCALAPPDATA", os.path.expanduser("~\\AppData\\Local"))
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "ocrnet-convert")


def cache_path(cache_dir: str, sha384: str) -> str:
    return os.path.join(cache_dir, "sha384", sha384[:2], sha384)


def machine_secret(cache_dir: str | None = None) -> bytes:
    """This user's secret on this machine, created (0600, O_EXCL) if absent.
    A secret file that is not a regular file of the right size is refused:
    it would let anyone who planted it forge seals."""

    from converter.errors import ConverterError

    folder = cache_dir or default_cache_dir()
    path = os.path.join(folder, SECRET_NAME)
    os.makedirs(folder, exist_ok=True)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(SECRET_BYTES))
    except FileExistsError:
        pass
    from converter.errors import InputRefused
    from converter.util.fsutil import open_regular

    try:
        fd, st = open_regular(path, flags)   # a FIFO planted here must not hang validate
    except InputRefused as exc:
        raise ConverterError(f"{path}: not a results key of this tool ({exc}); delete it to make a new one") from None
    except OSError as exc:
        raise ConverterError(f"cannot read the results key {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        secret = fh.read(SECRET_BYTES + 1)
    if len(secret) != SECRET_BYTES or (st.st_mode & 0o077):
        raise ConverterError(f"{path}: not a results key of this tool (expected {SECRET_BYTES} bytes, mode 0600); "
                             "delete it to make a new one")
    return secret
