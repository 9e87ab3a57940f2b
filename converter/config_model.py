"""The config's `model` and `files` sections: what is converted, and from which files.

    model: {arch: ocrnet, backbone: hrnet_w18, num_classes: 5, params?, flops_512x1024?}
        our own Paddle OCRNet on a backbone of converter/family.py, from a
        checkpoint (files: one entry of role `checkpoint`); params and FLOPs,
        when given, must be the architecture's.
    model: {arch: paddle-inference, num_classes: N, output_op: argmax|softmax|none, params?, flops_512x1024?}
        a Paddle inference model a user exported (PaddleSeg's export.py),
        any architecture (files: `inference-model` and `inference-params`,
        and `deploy-config` optionally).

A file's `source` is an http(s) URL to fetch it from, or a file:// URL of
the user's own copy (written by `init`).
"""
import re

ARCHS = ("ocrnet", "paddle-inference")
MAX_CLASSES = 255   # class maps are 8-bit
OUTPUT_OPS = ("argmax", "softmax", "none")
ROLES = {"ocrnet": {"checkpoint": 1, "training-config": None},
         "paddle-inference": {"inference-model": 1, "inference-params": 1, "deploy-config": None,
                              "training-config": None}}
_SHA384 = re.compile(r"^[0-9a-f]{96}$")
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def model_section(raw, get, error):
    """{arch, backbone, num_classes, params, flops_512x1024, output_op};
    get(mapping, key, where, kind) and error(text) are the config's own."""
    from converter.family import BACKBONES, flops, params

    model = get(raw, "model", "", dict)
    arch = model.get("arch")
    if arch not in ARCHS:
        raise error(f"model.arch: expected one of {', '.join(ARCHS)}, got {str(arch)[:40]!r}")
    num_classes = get(model, "num_classes", "model", int)
    if not 1 <= num_classes <= MAX_CLASSES:
        raise error(f"model.num_classes: expected 1..{MAX_CLASSES} (class maps are 8-bit)")
    out = {"arch": arch, "num_classes": num_classes, "backbone": None, "output_op": "argmax",
           "params": None, "flops_512x1024": None}
    for key in ("params", "flops_512x1024"):
        if key in model:
            out[key] = get(model, key, "model", int)
    if arch == "ocrnet":
        backbone = get(model, "backbone", "model", str)
        if backbone not in BACKBONES:
            raise error(f"model.backbone: expected one of {', '.join(BACKBONES)}, got {backbone[:40]!r}")
        out["backbone"] = backbone
        for key, value in (("params", params(backbone, num_classes)),
                           ("flops_512x1024", flops(backbone, num_classes))):
            if out[key] is not None and out[key] != value:
                raise error(f"model.{key}: {out[key]} is not OCRNet-{backbone}'s with {num_classes} classes "
                            f"({value})")
            out[key] = value
    else:
        output_op = get(model, "output_op", "model", str)
        if output_op not in OUTPUT_OPS:
            raise error(f"model.output_op: expected one of {', '.join(OUTPUT_OPS)}, got {output_op[:40]!r}")
        out["output_op"] = output_op
    return out


def check_roles(files, arch, error):
    wanted = ROLES[arch]
    for i, spec in enumerate(files):
        if spec.role not in wanted:
            raise error(f"files[{i}].role: {spec.role[:40]!r} is not a file of an {arch} model "
                        f"({', '.join(wanted)})")
    for role, count in wanted.items():
        if count is not None and sum(f.role == role for f in files) != count:
            raise error(f"files: exactly one entry must have role '{role}'")


def file_entry(entry, where, get, error, cls):
    name = get(entry, "name", where, str)
    if not _NAME.match(name) or name in (".", ".."):
        raise error(f"{where}.name: not a plain file name: {name[:60]!r}")
    size = get(entry, "size", where, int)
    if size <= 0:
        raise error(f"{where}.size: must be positive")
    sha = get(entry, "sha384", where, str).lower()
    if not _SHA384.match(sha):
        raise error(f"{where}.sha384: expected 96 hex digits")
    source = get(entry, "source", where, str)
    if not source.startswith(("https://", "http://", "file:///")):
        raise error(f"{where}.source: expected an http(s) URL or a file:/// URL of a local copy")
    return cls(name, size, sha, source, get(entry, "role", where, str))
