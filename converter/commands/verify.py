"""package --verify: a bounded, streaming check of a release archive.

The archive is read once, as a stream, by a tar reader of our own (not
tarfile, which reads GNU long names, pax headers and sparse maps into memory
before anyone can look at them). Every header is checked before its data is
read: its type (regular files and folders only; a GNU long name of at most
MAX_NAME bytes), its name (relative, inside one top folder, printable, not
both a file and a folder), and its declared size against a budget:

- the release's small files (SHA256SUMS, MANIFEST.json, the card, LICENSE,
  NOTICE, the parity report) have a size cap each;
- a model file (under onnx/ or openvino/) must be listed in MANIFEST.json,
  which must come before it (package writes it first), with exactly the
  size declared in its header, and at most MAX_MODEL bytes;
- the whole archive at most MAX_TOTAL bytes and MAX_MEMBERS members.

Data is hashed in chunks as it streams. At the end, the archive must hold
exactly the release's file set: the fixed files, every packaged file the
MANIFEST lists (the IRs of both flavours, the ONNX), each with its sha256,
and SHA256SUMS listing every other member, no more and no fewer.
"""
import gzip
import hashlib
import json
import os
import re
import zlib

from converter.errors import ChecksumError, ConverterError

BLOCK = 512
CHUNK = 1 << 20
MAX_MEMBERS = 1000
MAX_NAME = 1024
MAX_MODEL = 4 << 30
MAX_TOTAL = 16 << 30
SMALL = {"SHA256SUMS": 1 << 20, "MANIFEST.json": 16 << 20, "README.md": 1 << 20, "LICENSE": 1 << 20,
         "NOTICE": 1 << 20, "UNVERIFIED.txt": 1 << 20, "parity/report.json": 64 << 20, "parity/report.md": 16 << 20}
REQUIRED = ("LICENSE", "NOTICE", "MANIFEST.json", "README.md", "SHA256SUMS")
_PACKAGED = re.compile(r"^(onnx/[^/]+\.onnx|openvino/(model_api/)?(FP32|FP16|INT8)/[^/]+\.(xml|bin))$")
_SUMS_LINE = re.compile(r"^([0-9a-f]{64})  (\S[^\n]*)$")


class _Refused(Exception):
    pass


def _fail(why):
    raise _Refused(why)


def _octal(field, what):
    if field and field[0] & 0x80:   # base-256: never written by a tar of a release
        _fail(f"a header's {what} is in base-256")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if not re.fullmatch(rb"[0-7]+", text):
        _fail(f"a header's {what} is not an octal number")
    return int(text, 8)


def _checksum_ok(header):
    stored = _octal(header[148:156], "checksum")
    return stored == sum(header[:148]) + 8 * 32 + sum(header[156:])


class _Stream:
    """Bytes of the decompressed archive, never more than asked for."""

    def __init__(self, fh):
        self.gz, self.read_total = gzip.GzipFile(fileobj=fh, mode="rb"), 0

    def read(self, n):
        data = self.gz.read(n)
        self.read_total += len(data)
        if self.read_total > MAX_TOTAL + (MAX_MEMBERS + 8) * 2 * BLOCK:
            _fail(f"more than {MAX_TOTAL >> 30} GiB uncompressed")
        return data

    def exact(self, n):
        data = self.read(n)
        if len(data) != n:
            _fail("truncated")
        return data


def _member_name(raw, top):
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        _fail("a member name is not UTF-8")
    shown = repr(name[:80])
    name = name.rstrip("/")
    parts = name.split("/")
    if (not name or name.startswith("/") or ".." in parts or "" in parts or "\\" in name
            or not name.isprintable()):
        _fail(f"member {shown} has an absolute, escaping or unprintable name")
    if top is not None and parts[0] != top:
        _fail(f"member {shown} is outside the archive's folder {top}")
    return name, parts


def _headers(stream):
    """Yield (name, type, size) of each member; the caller reads its data."""
    long_name = None
    while True:
        header = stream.exact(BLOCK)
        if header == b"\0" * BLOCK:
            return
        if not _checksum_ok(header):
            _fail("a header's checksum is wrong (not a tar archive, or damaged)")
        kind, size = header[156:157], _octal(header[124:136], "size")
        if kind == b"L":
            if size > MAX_NAME or long_name is not None:
                _fail("a GNU long name that is too long, or two in a row")
            long_name = stream.exact(-(-size // BLOCK) * BLOCK)[:size].rstrip(b"\0")
            continue
        if kind not in (b"0", b"\0", b"5"):
            _fail(f"a member of type {kind!r} (a link, device, sparse file or extended header)")
        raw = long_name if long_name is not None else header[:100].split(b"\0", 1)[0]
        if header[257:263] == b"ustar\0" and long_name is None and header[345:500].strip(b"\0"):
            raw = header[345:500].split(b"\0", 1)[0] + b"/" + raw
        long_name = None
        yield raw, ("dir" if kind == b"5" else "file"), size


def _limit(rel, size, manifest):
    if rel in SMALL:
        return SMALL[rel]
    if _PACKAGED.match(rel):
        if manifest is None:
            _fail(f"member {rel} comes before MANIFEST.json")
        listed = manifest.get(rel)
        if listed is None:
            _fail(f"member {rel} is not listed in MANIFEST.json")
        if listed["size"] != size:
            _fail(f"member {rel} declares {size} bytes, MANIFEST.json {listed['size']}")
        return MAX_MODEL
    _fail(f"member {rel} is not a file of a release")


def _parse_manifest(data):
    try:
        files = json.loads(data)["files"]
        listed = {f["path"]: {"sha256": f["sha256"], "size": f["size"]} for f in files}
    except (ValueError, KeyError, TypeError, RecursionError):
        _fail("MANIFEST.json is not a manifest")
    if not all(isinstance(p, str) and isinstance(m["sha256"], str) and type(m["size"]) is int and m["size"] >= 0
               for p, m in listed.items()):
        _fail("MANIFEST.json is not a manifest")
    return listed


def _parse_sums(data):
    listed = {}
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        _fail("SHA256SUMS is not text")
    if lines[-1] != "":
        _fail("SHA256SUMS does not end with a newline")
    for line in lines[:-1]:
        m = _SUMS_LINE.match(line)
        if not m or m.group(2) in listed:
            _fail("SHA256SUMS has a malformed or repeated line")
        listed[m.group(2)] = m.group(1)
    return listed


def _read(stream):
    top, files, dirs, kept, manifest, total = None, {}, set(), {}, None, 0
    for n, (raw, kind, size) in enumerate(_headers(stream)):
        if n >= MAX_MEMBERS:
            _fail(f"more than {MAX_MEMBERS} members")
        name, parts = _member_name(raw, top)
        top = top or parts[0]
        rel = "/".join(parts[1:])
        if kind == "dir":
            if size or rel in files or rel in dirs:
                _fail(f"folder {name[:80]!r} has data, repeats, or is also a file")
            dirs.add(rel)
            continue
        if not rel or rel in files or rel in dirs or any("/".join(parts[1:i]) in files for i in range(2, len(parts))):
            _fail(f"member {name[:80]!r} repeats, or is both a file and a folder")
        limit = _limit(rel, size, manifest)
        total += size
        if size > limit or total > MAX_TOTAL:
            _fail(f"member {rel} declares {size} bytes, more than a release holds")
        digest, keep, left = hashlib.sha256(), rel in ("SHA256SUMS", "MANIFEST.json"), size
        chunks = []
        while left:
            chunk = stream.exact(min(CHUNK, left))
            digest.update(chunk)
            left -= len(chunk)
            if keep:
                chunks.append(chunk)
        stream.exact(-size % BLOCK)
        files[rel] = digest.hexdigest()
        if rel == "MANIFEST.json":
            manifest = _parse_manifest(b"".join(chunks))
        elif rel == "SHA256SUMS":
            kept[rel] = b"".join(chunks)
    if any(d and d not in {"/".join(f.split("/")[:i]) for f in files for i in range(1, f.count("/") + 1)}
           for d in dirs):
        _fail("a folder holds no file")
    return files, manifest, kept


def _check_set(files, manifest, sums):
    missing = [r for r in REQUIRED if r not in files]
    if missing:
        _fail(f"no {missing[0]} member")
    listed = _parse_sums(sums)
    for rel in sorted(set(files) - {"SHA256SUMS"}):
        if rel not in listed:
            _fail(f"member {rel} is not listed in SHA256SUMS")
        if listed[rel] != files[rel]:
            _fail(f"member {rel} does not match its SHA256SUMS entry")
    for rel in sorted(set(listed) - set(files)):
        _fail(f"member {rel} is listed in SHA256SUMS but missing")
    release = sorted(p for p in manifest if _PACKAGED.match(p))
    if not any(p.endswith(".xml") for p in release):
        _fail("MANIFEST.json lists no IR")
    checked = 0
    for rel in release:
        if rel not in files:
            _fail(f"member {rel} is listed in MANIFEST.json but missing")
    for rel, digest in files.items():
        if rel in manifest:
            checked += 1
            if manifest[rel]["sha256"] != digest:
                _fail(f"member {rel} does not match MANIFEST.json")
    return len(listed), checked


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def trusted_sha256(value):
    """The archive's sha256 the user trusts: 64 hex digits, or the first
    word of a file of at most 4 KiB (the .sha256 that package publishes)."""
    from converter.errors import InputRefused
    from converter.util.fsutil import read_limited

    text = value.strip().lower()
    if not _HEX64.match(text):
        try:
            words = read_limited(value, 4096, "sha256 file").decode("ascii", "replace").split()
        except (InputRefused, OSError) as exc:
            raise ConverterError(f"--sha256 {value}: neither 64 hex digits nor a readable .sha256 file "
                                 f"({getattr(exc, 'strerror', None) or exc})") from None
        text = words[0].lower() if words else ""
        if not _HEX64.match(text):
            raise ConverterError(f"--sha256 {value}: its first word is not a sha256 (64 hex digits)")
    return text


def verify(archive, trusted=None):
    """A one-line verdict, or ChecksumError (exit 5) naming what is wrong.

    Without `trusted` this proves only that the archive agrees with itself:
    anyone who edits a member can recompute MANIFEST.json and SHA256SUMS. With
    it (the sha256 published beside the archive, from a source the user
    trusts), the archive must be exactly those bytes."""
    from converter.util.fsutil import file_digest

    if not os.path.isfile(archive):
        raise ConverterError(f"{archive}: not a file")
    if trusted is not None and file_digest(archive) != trusted:
        raise ChecksumError(f"{archive}: its sha256 is not the one you trust ({trusted[:12]}...): "
                            "not the published archive")
    try:
        with open(archive, "rb") as fh:
            files, manifest, kept = _read(_Stream(fh))
        if manifest is None:
            _fail("no MANIFEST.json member")
        if "SHA256SUMS" not in kept:
            _fail("no SHA256SUMS member")
        count, checked = _check_set(files, manifest, kept["SHA256SUMS"])
    except _Refused as exc:
        raise ChecksumError(f"{archive}: {exc}") from None
    except (EOFError, OSError, zlib.error) as exc:
        raise ChecksumError(f"{archive}: not a readable .tar.gz ({type(exc).__name__})") from None
    return (f"OK: {os.path.basename(archive)}: {count} members match SHA256SUMS, "
            f"{checked} of them MANIFEST.json" + ("; the archive is the one whose sha256 you trust" if trusted
                                                  else " (consistent with itself; --sha256 checks it is the "
                                                       "published one)"))
