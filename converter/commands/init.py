"""init: a config for the user's own model.

    ocrnet-convert init (--weights CKPT | --inference-model DIR) --output CONFIG.yaml
                        [--paddleseg-config TRAIN.yml] [--labels FILE] [--input-shape 1,3,H,W] [--name NAME]

The shipped config is the template (gates, budgets, quantize and Model API
defaults, the converted interface); what the model itself says replaces its
model, files, classes and preprocessing. The config written passes the same
validation as the shipped one, or nothing is written.
"""
import copy
import os

from converter.config_model import MAX_CLASSES
from converter.errors import ConfigError, ConverterError

DEFAULT_HW = (512, 1024)


def _palette(num_classes):
    """Cityscapes' colours for 19 classes (the shipped config's), Pascal VOC's
    for 21, else VOC's bit-interleaving rule, which gives any count a fixed,
    distinct palette."""
    if num_classes == 19:
        from converter.config import load_config

        return [list(c) for c in load_config().palette]
    colours = []
    for i in range(num_classes):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append([r, g, b])
    return colours


def _read_labels(path):
    from converter.errors import InputRefused
    from converter.util.fsutil import read_limited

    try:
        text = read_limited(path, 1 << 20, "labels file").decode("utf-8-sig")   # a BOM is no part of a name
    except (InputRefused, OSError, UnicodeDecodeError) as exc:
        raise ConverterError(f"--labels {path}: {getattr(exc, 'strerror', None) or exc}") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise ConverterError(f"--labels {path}: a class name appears twice")
    return names


def _labels(path, num_classes):
    if path is None:
        return [f"class_{i}" for i in range(num_classes)]
    names = _read_labels(path)
    if len(names) != num_classes:
        raise ConverterError(f"--labels {path}: {len(names)} names for a model of {num_classes} classes")
    return names


def _check_class_count(count, source):
    """Before a name or a colour is made for each class: a count read from
    outside (a training YAML's num_classes of 10**9) is bounded first."""
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_CLASSES:
        raise ConverterError(f"{source}: {str(count)[:20]} classes; a model converted here has 1 to {MAX_CLASSES} "
                             "(class maps are 8-bit)")


def _static_hw(shape, hint):
    """The converted models' static H, W: --input-shape, else the training
    config's or deploy.yaml's size (rounded up to a multiple of 32), else 512x1024."""
    if shape:
        return shape[2], shape[3]
    if hint:
        return tuple(-(-v // 32) * 32 for v in hint)
    return DEFAULT_HW


def _from_checkpoint(args, train):
    from converter.commands.init_sources import from_checkpoint

    facts = from_checkpoint(args.weights)
    if train:
        if train["backbone_type"] and train["backbone"] != facts["backbone"]:
            raise ConverterError(f"--paddleseg-config says {train['backbone_type']}, the checkpoint is "
                                 f"{facts['backbone']}")
        if train["num_classes"] not in (None, facts["num_classes"]):
            raise ConverterError(f"--paddleseg-config says {train['num_classes']} classes, the checkpoint has "
                                 f"{facts['num_classes']}")
    from converter.family import flops, params

    b, n = facts["backbone"], facts["num_classes"]
    _check_class_count(n, args.weights)
    model = {"arch": "ocrnet", "backbone": b, "num_classes": n, "params": params(b, n), "flops_512x1024": flops(b, n)}
    return model, [facts["file"]], "x", "argmax_0.tmp_0", "int32", None


def _from_inference_model(args, train):
    from converter.commands.init_sources import from_inference_model

    facts = from_inference_model(args.inference_model)
    classes = facts["classes"] or (train or {}).get("num_classes")
    if classes is None and args.labels:
        classes = len(_read_labels(args.labels))
    if classes is None:
        raise ConverterError(f"{args.inference_model}: the program leaves the class count open; pass "
                             "--paddleseg-config or --labels")
    _check_class_count(classes, args.paddleseg_config if not facts["classes"] else args.inference_model)
    model = {"arch": "paddle-inference", "num_classes": classes, "output_op": facts["output_op"]}
    dims = facts.get("input_dims") or []
    if len(dims) == 4 and min(dims[2:]) > 0:
        model["static_input"] = list(dims[2:])   # init's own mark, not written to the config
    if facts["params"]:
        model["params"] = facts["params"]
    output = facts["output"] if facts["output_op"] == "argmax" else facts["free_name"]
    norm = (facts["mean"], facts["std"]) if facts["mean"] else None
    return model, facts["files"], facts["input"], output, facts["dtype"], (norm, _size_of(args, facts))


def _size_of(args, facts):
    """deploy.yaml's size; a program exported at a static size converts at that size only
    (its reshapes hold it: at another, the converted graph does not load)."""
    dims = facts.get("input_dims") or []
    if len(dims) != 4 or min(dims[2:]) <= 0:
        return facts["input_shape"]
    if args.input_shape and list(args.input_shape[2:]) != list(dims[2:]):
        raise ConverterError(f"--input-shape: {args.inference_model} was exported at a static "
                             f"{dims[2]}x{dims[3]}; it converts at that size (omit --input-shape)")
    return list(dims[2:])


def build(args):
    """The config as a mapping, validated."""
    from converter.commands.init_sources import from_training_config
    from converter.config import DEFAULT_CONFIG, validate
    from converter.util.fsutil import read_limited

    import yaml

    train = from_training_config(args.paddleseg_config) if args.paddleseg_config else None
    if args.weights:
        model, files, inp, out, dtype, extra = _from_checkpoint(args, train)
    else:
        model, files, inp, out, dtype, extra = _from_inference_model(args, train)
    norm, size_hint = (extra or (None, None))
    if train and train["mean"]:
        norm = (train["mean"], train["std"])
    mean, std = norm or ([0.5] * 3, [0.5] * 3)
    raw = copy.deepcopy(yaml.safe_load(read_limited(DEFAULT_CONFIG, 1 << 20, "config")))
    names = _labels(args.labels, model["num_classes"])
    h, w = _static_hw(args.input_shape, (train or {}).get("size") or size_hint)
    name = args.name or os.path.splitext(os.path.basename(args.output))[0]
    raw.update(name=name, description="From " + (os.path.basename(args.weights) if args.weights
                                                  else os.path.abspath(args.inference_model))
               + " (config written by ocrnet-convert init).",
               license="as the model's owner licenses it", files=files, model=model,
               classes=[{"name": n, "color": c} for n, c in zip(names, _palette(model["num_classes"]))])
    raw.pop("published_accuracy", None)
    raw.pop("reference", None)   # its old name
    raw["original"] = {"input": {"name": inp, "shape": [-1, 3, -1, -1], "dtype": "float32", "layout": "NCHW",
                                 "color": "RGB"},
                       "output": {"name": out, "shape": [-1, -1, -1], "dtype": dtype},
                       "preprocessing": {"mean": [round(v * 255, 6) for v in mean],
                                         "scale": [round(v * 255, 6) for v in std]}}
    raw["converted"].update(input=dict(raw["converted"]["input"], name=inp, shape=[1, 3, h, w]),
                            output=dict(raw["converted"]["output"], name=out, shape=[1, h, w], dtype=dtype))
    if model["arch"] != "ocrnet":
        raw["quantize"]["ignored_scope"] = "none"
    static = model.pop("static_input", None)
    if static:
        # a program exported at a static size takes no other (not even rounded
        # to 32): convert, calibrate and check at it
        h, w = static
        raw["converted"]["input"]["shape"] = [1, 3, h, w]
        raw["converted"]["output"]["shape"] = [1, h, w]
        raw["quantize"]["calibration_tile"] = [h, w]
        raw["model_api"]["check_tile"] = [h, w]
    try:
        validate(raw, args.output)
    except ConfigError as exc:
        raise ConfigError(f"the config init would write does not validate: {exc}") from None
    return raw


def _inputs(args):
    """The files init reads: a config written over one of them would destroy it."""
    named = [p for p in (args.weights, args.labels, args.paddleseg_config) if p]
    if args.inference_model and os.path.isdir(args.inference_model):
        named += [os.path.join(args.inference_model, n) for n in sorted(os.listdir(args.inference_model))]
    return [p for p in named if os.path.lexists(p)]


def _check_output(args):
    """--output is a new file, or (with --force) a regular file that is none of
    init's inputs; said before anything is read or written."""
    import stat

    path = args.output
    if not os.path.basename(path):
        raise ConverterError(f"--output {path} names a folder; name the config file to write")
    if not os.path.lexists(path):
        return
    st = os.stat(path) if os.path.exists(path) else os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        raise ConverterError(f"--output {path} is a folder; name the config file to write")
    if not stat.S_ISREG(st.st_mode):
        raise ConverterError(f"--output {path} exists and is not a regular file (a FIFO, a device or a dangling "
                             "link); name a new file")
    for source in _inputs(args):
        if os.path.exists(source) and os.path.samefile(source, path):
            raise ConverterError(f"--output {path} is one of init's inputs ({source}); name a new file")
    if not args.force:
        raise ConverterError(f"--output {path} exists; pass --force to replace it")


def run_init(args):
    import yaml

    from converter.util.fsutil import write_bytes_atomic

    if bool(args.weights) == bool(args.inference_model):
        raise ConverterError("init takes one of --weights CKPT and --inference-model DIR")
    _check_output(args)
    raw = build(args)
    text = ("# Written by ocrnet-convert init; validated on load by converter/config.py.\n"
            + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True, width=110, default_flow_style=None))
    write_bytes_atomic(args.output, text.encode())
    return raw
