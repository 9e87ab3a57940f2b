"""Skip a stage whose inputs (by content hash) and parameters are unchanged.

A stage's key is the sha256 of its parameters, the sha256 of each input file,
and the versions of the tools involved. The stage record (export.json,
onnx.json, openvino.json) stores the key and the sha256 of every output; the
stage is up to date when the stored key equals the new one and every output
still has its recorded hash, and its record is then reused as it is.
`--force` ignores this.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable

from converter.util.fsutil import file_digest


def stage_key(params: dict, inputs: Iterable[str] = ()) -> str:
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for path in inputs:
        h.update(os.path.basename(path).encode() + b"\0" + file_digest(path).encode())
    return h.hexdigest()


def source_digest(paths: Iterable[str]) -> str:
    """Hash of our own source files that determine a stage's output."""
    h = hashlib.sha256()
    for path in sorted(paths):
        with open(path, "rb") as fh:
            h.update(os.path.basename(path).encode() + b"\0" + fh.read())
    return h.hexdigest()


def tool_versions(*names: str) -> dict[str, str | None]:
    import importlib.metadata

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out
