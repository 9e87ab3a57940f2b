"""Load and validate the model's metadata file (configs/*.yaml).

Every problem is reported as a ConfigError naming the field, e.g.
`files[0].sha384: expected 96 hex digits`.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import reprlib
from dataclasses import dataclass, field
from typing import Any, Optional

from converter.errors import ConfigError

def package_path(*parts: str) -> str:
    """A data file shipped inside the package (configs/, samples/), found the
    same way in a checkout, an editable install and a wheel. Wheels install
    unpacked, so the resource is a real file on disk."""
    from importlib import resources

    return os.path.join(str(resources.files("converter")), *parts)


DEFAULT_CONFIG = package_path("configs", "ocrnet-hrnet-w48-paddle.yaml")
MAX_CONFIG_BYTES = 1 << 20  # ours is 4 KB; /dev/zero or a huge file is not a config
MAX_CLASS_NAME = 100
MAX_CONVERTED_PIXELS = 16 << 20   # 8x a Cityscapes frame; memory grows with the pixels


@dataclass(frozen=True)
class FileSpec:
    name: str
    size: int
    sha384: str
    source: str
    role: str


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple
    dtype: str
    layout: str = ""
    color: str = ""


@dataclass
class ModelConfig:
    path: str
    sha256: str
    name: str
    license: str
    files: list
    num_classes: int
    params: int                  # None when unknown (a user's inference model of any architecture)
    flops_512x1024: int          # likewise
    original_input: TensorSpec
    original_output: TensorSpec
    mean: tuple
    scale: tuple
    converted_input: TensorSpec
    converted_output: TensorSpec
    onnx_opset: int
    published_accuracy: Optional[dict]  # the accuracy its publisher reports (mIoU, per class), or None
    min_agreement: float
    tie_margin: float
    class_names: tuple = ()
    palette: tuple = ()        # one (r, g, b) per class
    budgets: dict = field(default_factory=dict)   # reduced precision -> {rel_p99, rel_max}
    max_miou_drop: float = 0.01                   # task budget, absolute mIoU, with labels
    quantize: dict = field(default_factory=dict)  # the quantize stage's defaults
    model_api: dict = field(default_factory=dict)  # the model_api stage's output name and check tile
    arch: str = "ocrnet"          # config_model.ARCHS
    backbone: Optional[str] = None  # converter.family.BACKBONES, for arch ocrnet
    output_op: str = "argmax"     # what a paddle-inference model outputs: argmax, softmax or none
    raw: dict = field(repr=False, default_factory=dict)

    # -- what the preprocessing facts imply ------------------------------
    @property
    def channel_order(self) -> list[int]:
        """Indices that turn the converted input's channels into the
        original's order: [2, 1, 0] for BGR -> RGB, [0, 1, 2] when equal."""
        src, dst = self.converted_input.color, self.original_input.color
        return [src.index(c) for c in dst]

    @property
    def converted_shape(self) -> tuple[int, ...]:
        return tuple(self.converted_input.shape)

    def baked(self) -> dict:
        """The preprocessing the converted models carry inside the graph,
        and the names of their input and output."""
        return {"input": self.converted_input.name, "output": self.converted_output.name,
                "order": self.channel_order, "mean": list(self.mean), "scale": list(self.scale)}

    def normalisation_text(self) -> str:
        """(v - mean) / scale, in words, for records and the model card."""
        def one(values):
            return f"{values[0]:g}" if len(set(values)) == 1 else "[" + ", ".join(f"{v:g}" for v in values) + "]"
        return f"(v - {one(self.mean)}) / {one(self.scale)}"

    def file(self, role: str) -> FileSpec:
        for spec in self.files:
            if spec.role == role:
                return spec
        raise ConfigError(f"files: no entry with role '{role}'")

    @property
    def checkpoint(self) -> FileSpec:
        return self.file("checkpoint")

    @property
    def architecture(self) -> str:
        """In words, for messages and the model card."""
        if self.arch == "ocrnet":
            return f"OCRNet-{self.backbone} with {self.num_classes} classes"
        return f"a Paddle inference model with {self.num_classes} classes (output {self.output_op})"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 60, 60


def _shown(value):
    """A short repr: a YAML alias bomb's value is exponentially large
    expanded, and an error message must not expand it."""
    return _REPR.repr(value)


def _get(mapping, key, where, kind):
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping")
    if key not in mapping:
        raise ConfigError(f"{where}.{key}: missing" if where else f"{key}: missing")
    value = mapping[key]
    path = f"{where}.{key}" if where else key
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{path}: expected an integer, got {_shown(value)}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{path}: expected a number, got {_shown(value)}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{path}: expected a finite number, got {_shown(value)}")
    if kind in (str, list, dict) and not isinstance(value, kind):
        raise ConfigError(f"{path}: expected a {kind.__name__}, got {_shown(value)}")
    return float(value) if kind is float else value


def _tensor(mapping, where):
    shape = _get(mapping, "shape", where, list)
    if not shape or not all(isinstance(d, int) and (d > 0 or d == -1) for d in shape):
        raise ConfigError(f"{where}.shape: expected positive integers or -1, got {_shown(shape)}")
    dtype = _get(mapping, "dtype", where, str)
    if dtype not in ("float32", "int32", "int64"):
        raise ConfigError(f"{where}.dtype: unsupported '{dtype}'")
    color = mapping.get("color", "")
    if color and color not in ("RGB", "BGR"):
        raise ConfigError(f"{where}.color: expected RGB or BGR, got {_shown(color)}")
    return TensorSpec(_get(mapping, "name", where, str), tuple(shape), dtype, mapping.get("layout", ""), color)


def _classes(raw, num_classes):
    entries = _get(raw, "classes", "", list)
    if len(entries) != num_classes:
        raise ConfigError(f"classes: expected {num_classes} entries (model.num_classes), got {len(entries)}")
    names, colours = [], []
    for i, entry in enumerate(entries):
        name = _get(entry, "name", f"classes[{i}]", str)
        if not name.strip() or not name.isprintable() or len(name) > MAX_CLASS_NAME:
            raise ConfigError(f"classes[{i}].name: expected a printable name of 1..{MAX_CLASS_NAME} characters, "
                              f"got {_shown(name)}")
        colour = _get(entry, "color", f"classes[{i}]", list)
        if len(colour) != 3 or not all(type(v) is int and 0 <= v <= 255 for v in colour):
            raise ConfigError(f"classes[{i}].color: expected three integers 0..255")
        names.append(name)
        colours.append(tuple(colour))
    if len(set(names)) != len(names):
        raise ConfigError("classes: names must be unique")
    return tuple(names), tuple(colours)


def _file(entry, where):
    from converter.config_model import file_entry

    return file_entry(entry, where, _get, ConfigError, FileSpec)


def _triple(mapping, key, where):
    values = _get(mapping, key, where, list)
    if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                   for v in values):
        raise ConfigError(f"{where}.{key}: expected three finite numbers")
    if key == "scale" and any(v == 0 for v in values):
        raise ConfigError(f"{where}.{key}: must not be zero")
    return tuple(float(v) for v in values)


def validate(raw: Any, path: str = "<config>", digest: str = "") -> ModelConfig:
    if not isinstance(raw, dict):
        raise ConfigError("<root>: expected a mapping")
    from converter.config_model import check_roles, model_section

    model = model_section(raw, _get, ConfigError)
    files = [_file(e, f"files[{i}]") for i, e in enumerate(_get(raw, "files", "", list))]
    check_roles(files, model["arch"], ConfigError)
    original = _get(raw, "original", "", dict)
    pre = _get(original, "preprocessing", "original", dict)
    converted = _get(raw, "converted", "", dict)
    num_classes = model["num_classes"]
    class_names, palette = _classes(raw, num_classes)
    published_accuracy = _published_accuracy(raw, class_names)
    parity = _get(raw, "parity", "", dict)
    min_agreement = _get(parity, "min_agreement", "parity", float)
    if not 0 < min_agreement <= 1:
        raise ConfigError("parity.min_agreement: expected a fraction in (0, 1]")
    tie_margin = _get(parity, "tie_margin", "parity", float)
    if tie_margin < 0:
        raise ConfigError("parity.tie_margin: must not be negative")
    budgets = _budgets(_get(parity, "budgets", "parity", dict))
    max_drop = _get(parity, "max_miou_drop", "parity", float)
    if not 0 <= max_drop <= 1:
        raise ConfigError("parity.max_miou_drop: expected a fraction in [0, 1]")
    opset = _get(converted, "onnx_opset", "converted", int)
    if not 7 <= opset <= 21:
        raise ConfigError(f"converted.onnx_opset: {opset} is outside 7..21")
    return _check_interfaces(ModelConfig(
        path=path, sha256=digest,
        name=_model_name(raw), license=_get(raw, "license", "", str),
        files=files, num_classes=num_classes, params=model["params"], flops_512x1024=model["flops_512x1024"],
        arch=model["arch"], backbone=model["backbone"], output_op=model["output_op"],
        original_input=_tensor(_get(original, "input", "original", dict), "original.input"),
        original_output=_tensor(_get(original, "output", "original", dict), "original.output"),
        mean=_triple(pre, "mean", "original.preprocessing"),
        scale=_triple(pre, "scale", "original.preprocessing"),
        converted_input=_tensor(_get(converted, "input", "converted", dict), "converted.input"),
        converted_output=_tensor(_get(converted, "output", "converted", dict), "converted.output"),
        onnx_opset=opset,
        published_accuracy=published_accuracy,
        min_agreement=min_agreement, tie_margin=tie_margin, class_names=class_names, palette=palette,
        budgets=budgets, max_miou_drop=max_drop, quantize=_quantize(_get(raw, "quantize", "", dict), model["arch"]),
        model_api=_model_api(_get(raw, "model_api", "", dict)), raw=raw))


PRECISIONS = ("f32", "bf16", "fp16", "int8")  # each has a numeric budget
QUANTIZE_CHOICES = {"preset": ("mixed", "performance"), "bias_correction": ("fast", "full"),
                     "ignored_scope": ("hrnet-fusion", "none"),
                     "range_estimator": ("mean_quantile", "minmax", "mean_minmax")}


def _budgets(raw):
    if set(raw) != set(PRECISIONS):
        raise ConfigError(f"parity.budgets: expected exactly {', '.join(PRECISIONS)}, got {', '.join(map(str, raw))}")
    out = {}
    for precision in PRECISIONS:
        where = f"parity.budgets.{precision}"
        entry = _get(raw, precision, "parity.budgets", dict)
        p99, worst = _get(entry, "rel_p99", where, float), _get(entry, "rel_max", where, float)
        if not 0 < p99 <= worst:
            raise ConfigError(f"{where}: expected 0 < rel_p99 <= rel_max")
        out[precision] = {"rel_p99": p99, "rel_max": worst}
    return out


def _model_name(raw):
    """The stem of every artifact's file name: a plain name."""
    name = _get(raw, "name", "", str)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        raise ConfigError(f"name: {_shown(name)} is not a plain file-name stem (letters, digits, '.', '_', '-')")
    return name


def _published_accuracy(raw, class_names):
    """The accuracy the model's publisher reports (optional: a user's own
    model has none). Its old key, `reference`, is read for one release, with
    a notice: "reference" is the Paddle backend parity compares with."""
    key = "published_accuracy"
    if "reference" in raw and key not in raw:
        from converter.util.log import info

        info("notice: the config's 'reference' section is now 'published_accuracy'; the old name goes in the "
             "next release")
        key = "reference"
    if key not in raw:
        return None
    published = _get(raw, key, "", dict)
    miou = _get(published, "miou", key, float)
    if not 0 <= miou <= 1:
        raise ConfigError(f"{key}.miou: expected a number in [0, 1]")
    per_class = _get(published, "per_class_iou", key, dict)
    if set(per_class) != set(class_names):
        raise ConfigError(f"{key}.per_class_iou: expected one entry for each of the classes' names")
    per_class = {name: per_class[name] for name in class_names}  # a mapping's order is not data
    for cls, iou in per_class.items():
        if not isinstance(iou, (int, float)) or isinstance(iou, bool) or not 0 <= iou <= 1:
            raise ConfigError(f"{key}.per_class_iou.{cls}: expected a number in [0, 1]")
    dataset = published.get("dataset", "")
    return {"miou": miou, "per_class_iou": per_class, "dataset": dataset if isinstance(dataset, str) else ""}


def _quantize(raw, arch):
    out = {}
    for key, choices in QUANTIZE_CHOICES.items():
        value = _get(raw, key, "quantize", str)
        if value not in choices:
            raise ConfigError(f"quantize.{key}: expected one of {', '.join(choices)}, got {_shown(value)}")
        out[key] = value
    if out["ignored_scope"] == "hrnet-fusion" and arch != "ocrnet":
        raise ConfigError("quantize.ignored_scope: hrnet-fusion finds HRNet's fusion Adds; this model is not an "
                          "HRNet (use none)")
    out["calibration_tile"] = _tile(raw, "quantize", "calibration_tile")
    subset = _get(raw, "subset_size", "quantize", int)
    if subset <= 0:
        raise ConfigError("quantize.subset_size: must be positive")
    out["subset_size"] = subset
    return out


def _tile(raw, section, key):
    tile = _get(raw, key, section, list)
    if len(tile) != 2 or not all(type(v) is int and v > 0 and v % 32 == 0 for v in tile):
        raise ConfigError(f"{section}.{key}: expected [H, W], positive multiples of 32")
    return list(tile)


def _model_api(raw):
    output = _get(raw, "output", "model_api", str)
    if not output or not output.replace("_", "").replace(".", "").isalnum():
        raise ConfigError("model_api.output: expected a tensor name of letters, digits, '_' and '.'")
    return {"output": output, "check_tile": _tile(raw, "model_api", "check_tile")}


def _check_interfaces(cfg):
    for where, spec in (("original.input", cfg.original_input), ("converted.input", cfg.converted_input)):
        if not spec.color:
            raise ConfigError(f"{where}.color: missing (RGB or BGR)")
        if spec.dtype != "float32" or len(spec.shape) != 4 or spec.shape[1] != 3:
            raise ConfigError(f"{where}: expected float32 [N, 3, H, W]")
    n, _, h, w = cfg.converted_input.shape
    if n != 1 or h <= 0 or w <= 0 or h % 32 or w % 32:
        raise ConfigError(f"converted.input.shape: expected a static [1, 3, H, W] with H and W multiples of 32, "
                          f"got {list(cfg.converted_input.shape)}")
    if h * w > MAX_CONVERTED_PIXELS:
        raise ConfigError(f"converted.input.shape: {h}x{w} is more than {MAX_CONVERTED_PIXELS >> 20} megapixels "
                          "(at 2048x1024, 2 megapixels, a conversion already peaks at about 3.7 GB)")
    return cfg


def load_config(path: str | None = None) -> ModelConfig:
    import yaml

    path = path or DEFAULT_CONFIG
    from converter.errors import InputRefused
    from converter.util.fsutil import read_limited

    try:
        data = read_limited(path, MAX_CONFIG_BYTES, "config")
    except InputRefused as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    from converter.util.yaml_bounded import safe_load

    try:
        raw = safe_load(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return validate(raw, path, hashlib.sha256(data).hexdigest())
