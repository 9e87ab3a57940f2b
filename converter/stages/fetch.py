"""fetch stage: get the files the config lists, verified, resumable, cached.

Order of sources for each file: already at the output path and verified; the
content-addressed cache (keyed by sha384); a local folder (--from); the
network (the config's URL, or --mirror URL + file name).

A download streams into `<name>.part` beside the target and resumes from it
with an HTTP Range request, within a run (after a dropped connection) and
across runs (after a kill). Size and sha384 are checked before the file is
renamed to its final name, so a later stage never sees an unverified file.
"""
import errno
import http.client
import os
import shutil
import socket
import sys
import time
import stat
import urllib.parse

from converter.errors import ChecksumError, FetchError
from converter.util.cache import cache_path, default_cache_dir
from converter.util.fsutil import file_digest

CHUNK = 1 << 16
RETRY_STATUSES = {429, 500, 502, 503, 504}
CONNECT_FAILURES = ("cannot connect to", "connection to")  # prefixes of _open's connect-phase errors
NO_NETWORK_HINT = ("no network? Use --mirror URL or --from DIR, or pass a local "
                   "checkpoint with --weights PATH")


def file_sha384(path):
    return file_digest(path, "sha384")


def _regular_size(path):
    """Size of path, 0 when absent; refuse a symlink or a non-regular file,
    which a hostile local user could plant to redirect our writes."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(st.st_mode):
        raise FetchError(f"refusing to write through {path}: it is a "
                         f"{'symbolic link' if stat.S_ISLNK(st.st_mode) else 'special file'}")
    return st.st_size


def _open_for_write(path, append=False):
    """A binary file object that never follows a symlink: appended to (a
    regular .part being resumed) or newly created (O_EXCL)."""
    flags = os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    if append:
        flags |= os.O_APPEND
    else:
        if _regular_size(path) or os.path.lexists(path):
            os.unlink(path)
        flags |= os.O_CREAT | os.O_EXCL
    try:
        return os.fdopen(os.open(path, flags, 0o644), "ab" if append else "wb")
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EEXIST):
            raise FetchError(f"refusing to write {path}: another file appeared there") from None
        raise


def verify(path, spec, delete_bad=True):
    """Raise unless path has the spec's size and sha384."""
    size = os.path.getsize(path)
    if size != spec.size:
        if delete_bad:
            os.unlink(path)
        raise ChecksumError(f"size mismatch for {spec.name}: expected {spec.size} bytes, got {size}"
                            + ("; the bad file was deleted" if delete_bad else ""))
    got = file_sha384(path)
    if got != spec.sha384:
        if delete_bad:
            os.unlink(path)
        raise ChecksumError(f"sha384 mismatch for {spec.name}: expected {spec.sha384}, got {got}"
                            + ("; the bad file was deleted" if delete_bad else ""))


class Progress:
    """tqdm on a TTY, JSON lines with --json, silence otherwise."""

    def __init__(self, mode):
        self.mode = mode  # "bar", "json" or "quiet"
        self.bar = None
        self._last = 0.0

    def emit(self, **event):
        if self.mode == "json":
            import json
            print(json.dumps(event, sort_keys=True), flush=True)

    def start(self, name, total, done):
        self.emit(event="start", file=name, total=total, resume_from=done)
        if self.mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, unit="B", unit_scale=True,
                            unit_divisor=1024, desc=name, file=sys.stderr)

    def update(self, name, done, total, step):
        if self.bar is not None:
            self.bar.update(step)
        now = time.monotonic()
        if self.mode == "json" and (now - self._last > 0.5 or done == total):
            self._last = now
            self.emit(event="progress", file=name, bytes=done, total=total)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _Retry(Exception):
    """A transient failure: retry after a backoff."""


def _open(url, offset, timeouts, redirects=5):
    """Return (response, connection) for a GET of url from byte offset."""
    for _ in range(redirects + 1):
        check_url(url)  # also each redirect target
        parts = urllib.parse.urlsplit(url)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname, parts.port, timeout=timeouts[0])
        try:
            conn.connect()
        except socket.gaierror:
            raise FetchError(f"cannot resolve host {parts.hostname}: {NO_NETWORK_HINT}") from None
        except (socket.timeout, TimeoutError):
            raise _Retry(f"connection to {parts.hostname} timed out") from None
        except OSError as exc:
            raise _Retry(f"cannot connect to {parts.hostname}: {exc.strerror or exc}") from None
        conn.sock.settimeout(timeouts[1])
        headers = {"User-Agent": "ocrnet-convert", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("GET", path or "/", headers=headers)
            resp = conn.getresponse()
        except (socket.timeout, TimeoutError, OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _Retry(f"request to {parts.hostname} failed: {exc}") from None
        if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
            url = urllib.parse.urljoin(url, resp.getheader("Location"))
            conn.close()
            continue
        return resp, conn
    raise FetchError(f"too many redirects for {url}")


def _check_status(resp, url, offset, part):
    """The response's offset to write from: a retry for what may pass, a FetchError for what will not."""
    if resp.status in RETRY_STATUSES:
        delay = resp.getheader("Retry-After")
        raise _Retry(f"HTTP {resp.status} {resp.reason} from {url}" + (f" (retry after {delay}s)" if delay else ""))
    if resp.status == 416 and offset:
        os.unlink(part)  # our .part is not a prefix the server knows
        raise _Retry("server rejected the resume range; starting over")
    if resp.status not in (200, 206):
        raise FetchError(f"HTTP {resp.status} {resp.reason} for {url}")
    return 0 if resp.status == 200 else offset   # a 200 to a Range request sends the whole file


def _stream(resp, url, *, part, offset, spec, progress, timeouts, received):
    """Append the response's body to part, counting every block in received[0]
    (a retry keeps what an attempt got); returns the size of part after."""
    done = offset
    with _open_for_write(part, append=bool(offset)) as fh:
        while True:
            try:
                # read1: what has arrived, so a stall loses nothing already received
                block = resp.read1(CHUNK)
            except (socket.timeout, TimeoutError):
                raise _Retry(f"read from {url} timed out after {timeouts[1]}s") from None
            except (OSError, http.client.HTTPException) as exc:
                raise _Retry(f"connection lost while reading {url}: {exc}") from None
            if not block:
                return done
            if done + len(block) > spec.size:
                raise ChecksumError(f"size mismatch for {spec.name}: server sent more than "
                                    f"the expected {spec.size} bytes")
            fh.write(block)
            done += len(block)
            received[0] += len(block)
            progress.update(spec.name, done, spec.size, len(block))


def _attempt(url, part, *, offset, spec, progress, timeouts, received):
    """One request from offset, or _Retry."""
    resp, conn = _open(url, offset, timeouts)
    try:
        offset = _check_status(resp, url, offset, part)
        progress.start(spec.name, spec.size, offset)
        done = _stream(resp, url, part=part, offset=offset, spec=spec, progress=progress, timeouts=timeouts,
                       received=received)
        progress.close()
        if done < spec.size:
            length = resp.getheader("Content-Length")
            if not (length is not None and length.strip().isdigit() and offset + int(length) == done):
                raise _Retry(f"connection closed after {done} of {spec.size} bytes")
            # else the server's file is shorter: verify() will say so
    finally:
        progress.close()
        conn.close()


def _back_off(why, attempt, *, spec, progress, retries, sleep):
    """Wait before the next attempt, or give up with a FetchError."""
    if attempt > retries:
        reason = str(why)
        if reason.startswith(CONNECT_FAILURES):
            # never reached the server: most likely no network at all
            raise FetchError(f"{reason}: {NO_NETWORK_HINT}") from None
        raise FetchError(f"giving up on {spec.name} after {retries} retries: {reason}") from None
    delay = min(0.5 * 2 ** (attempt - 1), 30.0)
    progress.emit(event="retry", file=spec.name, attempt=attempt, reason=str(why), delay=delay)
    if progress.mode == "bar":
        print(f"{spec.name}: {why}; retrying in {delay:.1f}s", file=sys.stderr)
    sleep(delay)


def _download(url, part, spec, *, progress, timeouts, retries, sleep=time.sleep):
    """Stream url into part, resuming; return the number of bytes received."""
    received = [0]
    attempt = 0
    while True:
        offset = _regular_size(part)
        if offset > spec.size:
            os.unlink(part)
            offset = 0
        if offset == spec.size:
            return received[0]
        try:
            _attempt(url, part, offset=offset, spec=spec, progress=progress, timeouts=timeouts, received=received)
            return received[0]
        except _Retry as why:
            attempt += 1
            _back_off(why, attempt, spec=spec, progress=progress, retries=retries, sleep=sleep)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise FetchError(f"disk full while writing {part} ({spec.size} bytes needed)") from None
            raise


def _check_space(folder, needed):
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise FetchError(f"not enough disk space in {folder}: {needed} bytes needed, {free} free")


def _copy_to(src, dst):
    """Copy src into a new file dst (O_EXCL, no symlink followed)."""
    with open(src, "rb") as fin, _open_for_write(dst) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def _place(src, dst, move):
    """Put a verified file at dst atomically (rename, or a copy under a temp
    name then a rename). Never a hard link: the cache and the user's copy must
    not be one file, or editing one would edit the other."""
    tmp = f"{dst}.tmp-{os.getpid()}"
    try:
        if move:
            os.replace(src, dst)
            return
        _copy_to(src, tmp)
        os.replace(tmp, dst)
    except OSError as exc:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if exc.errno == errno.ENOSPC:
            raise FetchError(f"disk full while writing {dst}") from None
        raise


def _to_cache(path, spec, cache_dir):
    if not cache_dir:
        return
    target = cache_path(cache_dir, spec.sha384)
    if os.path.exists(target):
        return
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _place(path, target, move=False)
    except (OSError, FetchError):
        pass  # a cache that cannot be written is not a reason to fail the fetch


def fetch_file(spec, output_dir, cache_dir=None, *, mirror=None, from_dir=None, progress=None,
               timeouts=(10.0, 30.0), retries=4, sleep=time.sleep):
    """Make output_dir/spec.name a verified copy; return (path, record)."""
    progress = progress or Progress("quiet")
    os.makedirs(output_dir, exist_ok=True)
    final = os.path.join(output_dir, spec.name)
    record = {"file": spec.name, "size": spec.size, "sha384": spec.sha384, "bytes_transferred": 0}
    if os.path.isfile(final):
        try:
            verify(final, spec, delete_bad=False)
            _to_cache(final, spec, cache_dir)
            return final, dict(record, source="present")
        except ChecksumError:
            os.unlink(final)  # stale or damaged; fetch it again
    cached = cache_path(cache_dir, spec.sha384) if cache_dir else None
    if cached and os.path.isfile(cached):
        try:
            verify(cached, spec)
            _place(cached, final, move=False)
            return final, dict(record, source="cache", cache=cached)
        except ChecksumError:
            pass  # verify() deleted the damaged cache entry
    part = final + ".part"
    local = local_source(spec)
    if from_dir or (local and not mirror):
        if from_dir:
            local = os.path.join(from_dir, spec.name)
        if not os.path.isfile(local):
            raise FetchError(f"{spec.name} not found " + (f"in --from folder {from_dir}" if from_dir else
                                                          f"at its source {spec.source}"))
        _check_space(output_dir, spec.size)
        try:
            _copy_to(local, part)
        except OSError as exc:
            if os.path.lexists(part) and not os.path.islink(part):
                os.unlink(part)
            if exc.errno == errno.ENOSPC:
                raise FetchError(f"disk full while copying {spec.name} to {output_dir}") from None
            raise FetchError(f"cannot copy {local}: {exc.strerror}") from None
        verify(part, spec)
        _to_cache(part, spec, cache_dir)
        _place(part, final, move=True)
        return final, dict(record, source="local", origin=local)
    url = (mirror.rstrip("/") + "/" + spec.name) if mirror else spec.source
    check_url(url)
    have = _regular_size(part)
    _check_space(output_dir, max(spec.size - have, 0))
    received = _download(url, part, spec, progress=progress, timeouts=timeouts, retries=retries, sleep=sleep)
    verify(part, spec)
    _to_cache(part, spec, cache_dir)
    _place(part, final, move=True)
    progress.emit(event="done", file=spec.name, path=final, bytes_transferred=received)
    return final, dict(record, source="download", url=url, bytes_transferred=received)


def local_source(spec):
    """The path of a file:// source (a user's own copy, as `init` records it), else None."""
    if not spec.source.startswith("file://"):
        return None
    return urllib.parse.unquote(urllib.parse.urlparse(spec.source).path)


def run_fetch(config, output_dir, cache_dir=None, *, mirror=None, from_dir=None, progress_mode="quiet",
              roles=None, timeouts=(10.0, 30.0), retries=4):
    """Fetch every file of the config (or those with the given roles)."""
    progress = Progress(progress_mode)
    records = []
    for spec in config.files:
        if roles and spec.role not in roles:
            continue
        _, rec = fetch_file(spec, output_dir, cache_dir, mirror=mirror, from_dir=from_dir, progress=progress,
                            timeouts=timeouts, retries=retries)
        records.append(rec)
    paths = [os.path.join(output_dir, r["file"]) for r in records]
    return paths, {"stage": "fetch", "files": records}


def cached_checkpoint(config, cache_dir):
    """Path of the checkpoint in the cache after verifying its size and
    sha384, or None when there is none. A bad entry is deleted and reported
    (ChecksumError): a cache is trusted only as far as its hashes."""
    spec = config.checkpoint
    path = cache_path(cache_dir, spec.sha384)
    if not os.path.lexists(path):
        return None
    if not os.path.isfile(path) or os.path.islink(path):
        os.unlink(path)
        raise ChecksumError(f"cache entry {path} was not a regular file; deleted it")
    try:
        verify(path, spec)
    except ChecksumError as exc:
        raise ChecksumError(f"cached checkpoint {path} is corrupt ({exc})") from None
    return path


def check_url(url):
    """A one-line FetchError for a URL that urllib cannot use (bad port,
    unclosed IPv6 bracket, no host, another scheme)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        raise FetchError(f"malformed URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"malformed URL {url!r}: expected http(s)://host[:port]/...")



def run(config, workdir, *, output=None, cache_dir=None, mirror=None, from_dir=None, progress_mode="quiet",
        roles=None, timeouts=(10.0, 30.0), retries=4):
    """The fetch stage into workdir/download (or output)."""
    from converter.layout import Workdir
    from converter.stages import StageResult

    paths, record = run_fetch(config, output or Workdir.of(workdir).download, cache_dir or default_cache_dir(),
                              mirror=mirror, from_dir=from_dir, progress_mode=progress_mode, roles=roles,
                              timeouts=timeouts, retries=retries)
    return StageResult("fetch", paths, record)
