"""quantize stage: NNCF post-training quantization of the FP32 IR to INT8.

Like Open Model Zoo's omz_quantizer, a separate step from `make convert`:
`ocrnet-convert quantize` reads openvino/FP32 (checked against its record)
and writes openvino/INT8/<model>.xml/.bin with quantize.json.

Memory, not time, is what limits this on a 24 GB machine: NNCF's quantile
statistics fetch every activation of a calibration sample at once, and for a
full 1024x2048 input that peaked at 22.9 GB. The IR is shape-agnostic (its
resizes take their sizes from ShapeOf), so calibration runs on a copy
reshaped to a tile (config quantize.calibration_tile, 256x512: ~4 GB) fed
with tiles of the full-size inputs at their native scale, and the quantized
model is reshaped back to the full input before it is saved.

The `hrnet-fusion` ignored scope keeps the Adds of HRNet's multi-resolution
fusion in float: Intel's HRNet recipe (with a quantile range estimator),
because naive PTQ of those sums of differently scaled branches cost HRNet-18
up to 8.5 % mIoU. They are found by structure, not by name: an Add of two
activations one of which comes, through at most a bias Add, from an
Interpolate (upsampled lower-resolution branch) or a stride-2 Convolution
(downsampled higher-resolution branch). Residual Adds inside blocks have
neither. For HRNet_W48 that is 2 + 4x6 + 3x12 = 62 Adds.

With --cityscapes, nncf.quantize_with_accuracy_control reverts layers to
float until the tiles' mIoU against the ground truth is within --max-drop of
the FP32 IR's.
"""
import os
import resource
import time
from dataclasses import dataclass

import numpy as np

from converter.errors import ConverterError, StageError
from converter.layout import STAGES, Workdir
from converter.records import verified_record
from converter.stages import Written, run_stage
from converter.util.fsutil import describe_files
from converter.util.log import info

from converter.config import QUANTIZE_CHOICES as CHOICES


def fusion_adds(model):
    """Friendly names of the Adds of HRNet's multi-resolution fusion (see above)."""
    def kind(value):
        return value.get_node().get_type_name()

    def origin(value):
        node = value.get_node()
        if node.get_type_name() == "Add" and any(kind(node.input_value(i)) == "Constant" for i in range(2)):
            node = next(node.input_value(i).get_node() for i in range(2) if kind(node.input_value(i)) != "Constant")
        return node

    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Add" or any(kind(op.input_value(i)) == "Constant" for i in range(2)):
            continue
        for i in range(2):
            src = origin(op.input_value(i))
            if src.get_type_name() == "Interpolate" or (
                    src.get_type_name() == "Convolution" and max(src.get_strides()) == 2):
                names.append(op.get_friendly_name())
                break
    return names


# Ops through which NNCF moves a quantizer to the op that consumes their
# output (it quantizes a Convolution's input after the ReLU before it, not the
# ReLU's input): ignoring a tensor's readers must reach past them.
PASS_THROUGH = ("Relu", "Clamp", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Convert")


def readers_of(model, tensors):
    """Friendly names of the ops that read each named tensor, through
    PASS_THROUGH ops, up to the first ops that compute with it (what stays
    in float for --ignored-scope SCOPE,TENSOR...); an unknown name is an error."""
    readers, found = [], set()
    wanted = set(tensors)

    def reach(port, depth=0):
        for target in port.get_target_inputs():
            op = target.get_node()
            if op.get_type_name() == "ShapeOf" or op.get_friendly_name() in readers:
                continue
            readers.append(op.get_friendly_name())
            if op.get_type_name() in PASS_THROUGH and depth < 4:
                reach(op.output(0), depth + 1)
    for op in model.get_ordered_ops():
        for port in op.outputs():
            names = set(port.get_names()) & wanted
            if names:
                found |= names
                reach(port)
    missing = sorted(wanted - found)
    if missing:
        raise ConverterError(f"--ignored-scope: no tensor named {missing[0]!r} in the FP32 IR (diagnose names them)")
    return readers


class Tiles:
    """The calibration (or validation) tiles: each image resized to the full
    input, cut into tile-sized pieces in raster order, the first `limit`
    kept. Loaded lazily, one image at a time, so memory does not grow with
    the number of images."""

    def __init__(self, config, paths, full_hw, tile_hw, limit=None, labels=None):
        from converter.data.images import input_contract

        (self.H, self.W), (self.h, self.w) = full_hw, tile_hw
        if self.H % self.h or self.W % self.w:
            raise ConverterError(f"calibration tile {self.h}x{self.w} does not divide the input {self.H}x{self.W}")
        self.paths, self.labels = list(paths), labels
        self.contract = input_contract(config, "converted")
        per_image = (self.H // self.h) * (self.W // self.w)
        self.items = [(i, r, c) for i in range(len(self.paths))
                      for r in range(self.H // self.h) for c in range(self.W // self.w)][:limit]
        self.images_used = -(-len(self.items) // per_image)
        self._cached = (None, None)

    def _image(self, index):
        from converter.data.images import load_rgb, prepare, resize_rgb

        if self._cached[0] != index:
            x = prepare(resize_rgb(load_rgb(self.paths[index]), self.W, self.H), self.contract)
            gt = None
            if self.labels is not None:
                from converter.data.cityscapes import load_gt

                gt = load_gt(self.labels[index], (self.W, self.H))
            self._cached = (index, (x, gt))
        return self._cached[1]

    def tile(self, item):
        index, r, c = item
        x, gt = self._image(index)
        rows, cols = slice(r * self.h, (r + 1) * self.h), slice(c * self.w, (c + 1) * self.w)
        tile = np.ascontiguousarray(x[:, :, rows, cols])
        return tile if gt is None else (tile, gt[rows, cols])


def _check_readable(paths, pairs):
    """Decode every image (and ground truth) once before NNCF starts, so a
    bad file is a one-line error up front, not one in the middle of NNCF's
    progress output after minutes of statistics."""
    from converter.data.cityscapes import load_gt
    from converter.data.images import load_rgb

    for path in paths:
        load_rgb(path)
    for _, gt in pairs or ():
        load_gt(gt)


def _range_estimator(name):
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return {"mean_quantile": RangeEstimatorParametersSet.MEAN_QUANTILE,
            "minmax": RangeEstimatorParametersSet.MINMAX,
            "mean_minmax": RangeEstimatorParametersSet.MEAN_MINMAX}[name]


def _miou_fn(num_classes, tiles):
    """NNCF's validation function: it receives the raw items (get_data), so
    it cuts each tile and its ground truth itself; the dataset's transform
    (what NNCF feeds the model for ranking) yields the tile alone."""
    from converter.data.cityscapes import confusion_matrix, iou_per_class

    def validate(compiled, items):
        conf = np.zeros((num_classes, num_classes), np.int64)
        out = compiled.outputs[0]
        for item in items:
            tile, gt = tiles.tile(item)
            conf += confusion_matrix(gt, compiled({0: tile})[out][0], num_classes)
        ious = iou_per_class(conf)
        return float(np.nanmean(ious)) if np.isfinite(ious).any() else 0.0
    return validate


def options_from(config, **overrides):
    """The config's quantize defaults with the command line's choices on top."""
    opts = dict(config.quantize, ignored_tensors=[])
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "ignored_scope":
            value, *tensors = [v.strip() for v in value.split(",")]
            if not all(tensors):
                raise ConverterError("--ignored-scope: an empty tensor name")
            opts["ignored_tensors"] = sorted(set(tensors))
        if key in CHOICES and value not in CHOICES[key]:
            raise ConverterError(f"--{key.replace('_', '-')}: expected one of {', '.join(CHOICES[key])}")
        opts[key] = list(value) if key == "calibration_tile" else value
    return opts


@dataclass
class _Plan:
    """What a quantize run reads and its incremental key, worked out before anything heavy is loaded."""
    opts: dict
    shape: list            # the FP32 IR's static input shape
    fp32_xml: str
    built_from: dict       # {path in the workdir: sha256} of the FP32 IR
    paths: list            # calibration images
    pairs: list            # (image, label) pairs for accuracy control, or None
    max_drop: float
    max_iterations: int
    out_root: str
    key: str = ""


def _plan(config, workdir, *, images, options, cityscapes, split, max_drop, max_iterations):
    from converter.data.images import expand_image_args, sample_images
    from converter.util.incremental import stage_key, tool_versions

    ov_record = verified_record(workdir, "openvino")
    if "FP32" not in ov_record.files:
        raise StageError(f"{workdir.record('openvino')} lists no FP32 IR; rerun the openvino stage")
    pairs = None
    if cityscapes:
        from converter.data.cityscapes import find_pairs

        pairs = find_pairs(cityscapes, split)
    plan = _Plan(
        opts=options or options_from(config), shape=list(ov_record.input_shape),
        fp32_xml=workdir.ir("FP32", config.name),
        # the FP32 IR's sha256, as its record lists them (verified just now)
        built_from={os.path.join(STAGES["openvino"].folder, "FP32", name): meta["sha256"]
                    for name, meta in sorted(ov_record.files["FP32"].items())},
        paths=expand_image_args(images) if images else sample_images(), pairs=pairs,
        max_drop=config.max_miou_drop if max_drop is None else max_drop, max_iterations=max_iterations,
        out_root=workdir.stage_folder("quantize"))
    plan.key = stage_key({"stage": "quantize", "options": plan.opts, "shape": plan.shape,
                          "built_from": plan.built_from, "accuracy_control": bool(pairs),
                          "max_drop": plan.max_drop if pairs else None,
                          "max_iterations": max_iterations if pairs else None,
                          "tools": tool_versions("openvino", "nncf")},
                         plan.paths + [p for pair in pairs or () for p in pair])
    return plan, ov_record


def _import_nncf():
    try:
        import logging

        import nncf
        import openvino as ov
    except ImportError as exc:
        raise StageError(f"quantize needs nncf ({exc}); install the project with its lock file") from None
    nncf.set_log_level(logging.WARNING)  # not one INFO line per node left unquantized
    return nncf, ov


def _nncf_arguments(nncf, opts, calib, ignored):
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    return dict(
        preset=getattr(nncf.QuantizationPreset, opts["preset"].upper()),
        subset_size=len(calib.items), fast_bias_correction=opts["bias_correction"] == "fast",
        ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
        advanced_parameters=AdvancedQuantizationParameters(
            activations_range_estimator_params=_range_estimator(opts["range_estimator"])))


def _with_accuracy_control(nncf, ov, config, model, *, dataset, plan, arguments):
    """NNCF's accuracy-controlled quantization, and both mIoUs measured for the record."""
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    tile_hw = tuple(plan.opts["calibration_tile"])
    val = Tiles(config, [p[0] for p in plan.pairs], plan.shape[2:], tile_hw, labels=[p[1] for p in plan.pairs])
    info(f"quantize: accuracy control on {len(val.items)} labelled tile(s) from {len(plan.pairs)} image(s), "
         f"max mIoU drop {plan.max_drop}")
    arguments = dict(arguments, advanced_quantization_parameters=arguments.pop("advanced_parameters"))
    quantized = nncf.quantize_with_accuracy_control(
        model, dataset, nncf.Dataset(val.items, lambda item: val.tile(item)[0]),
        _miou_fn(config.num_classes, val), max_drop=plan.max_drop, drop_type=nncf.DropType.ABSOLUTE,
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            max_num_iterations=plan.max_iterations), **arguments)
    # NNCF logs but does not return its measurements: measure both on
    # the same labelled tiles, at the tile shape, for the record
    miou, core = _miou_fn(config.num_classes, val), ov.Core()
    before, after = (miou(core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), val.items)
                     for m in (model, quantized))
    return quantized, {"images": len(plan.pairs), "tiles": len(val.items), "max_drop": plan.max_drop,
                       "max_iterations": plan.max_iterations, "miou_fp32_ir": before, "miou_int8_ir": after,
                       "drop": before - after}


def _quantize(nncf, ov, config, model, *, calib, plan, ignored):
    """(the quantized model, the accuracy-control figures or None); NNCF's own failures as one StageError."""
    arguments = _nncf_arguments(nncf, plan.opts, calib, ignored)
    try:
        dataset = nncf.Dataset(calib.items, calib.tile)
        if plan.pairs:
            return _with_accuracy_control(nncf, ov, config, model, dataset=dataset, plan=plan, arguments=arguments)
        return nncf.quantize(model, dataset, **arguments), None
    except ConverterError:
        raise
    except Exception as exc:
        raise StageError(f"NNCF quantization failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") \
            from None


def _save(ov, config, quantized, plan, tmp):
    """Write the INT8 IR and its error profile into tmp; returns (files, profile, names)."""
    from converter.stages.ir_metadata import class_map_description, model_info, set_model_info
    from converter.engine.int8_profile import record as error_profile

    quantized.reshape({quantized.inputs[0]: plan.shape})
    set_model_info(quantized, model_info(config, class_map_description(config)))
    names = [config.name + ".xml", config.name + ".bin"]
    ov.save_model(quantized, os.path.join(tmp, names[0]), compress_to_fp16=False)
    files = describe_files(tmp, names)
    del quantized   # its weights are mapped from the file just written
    info("quantize: recording the error profile of every quantized tensor (the INT8 gate's reference)...")
    profile = error_profile(config, plan.fp32_xml, os.path.join(tmp, names[0]), plan.shape[2:],
                            tuple(plan.opts["calibration_tile"]))
    return files, profile, names


def _calibrate_and_quantize(nncf, ov, config, plan):
    """(the quantized model, its calibration, the fusion Adds and the named readers kept in float, accuracy)."""
    opts, tile_hw = plan.opts, tuple(plan.opts["calibration_tile"])
    _check_readable(plan.paths, plan.pairs)
    calib = Tiles(config, plan.paths, plan.shape[2:], tile_hw, limit=opts["subset_size"])
    info(f"quantize: {len(calib.items)} calibration tile(s) of {tile_hw[0]}x{tile_hw[1]} from "
         f"{calib.images_used} image(s); preset {opts['preset']}, {opts['bias_correction']} bias correction, "
         f"ignored scope {opts['ignored_scope']}, range estimator {opts['range_estimator']}")
    model = ov.Core().read_model(plan.fp32_xml)
    model.reshape({model.inputs[0]: [1, 3, *tile_hw]})
    fusion = fusion_adds(model) if opts["ignored_scope"] == "hrnet-fusion" else []
    readers = readers_of(model, opts.get("ignored_tensors") or [])
    quantized, accuracy = _quantize(nncf, ov, config, model, calib=calib, plan=plan,
                                    ignored=sorted(set(fusion) | set(readers)))
    return quantized, calib, fusion, readers, accuracy


def run(config, workdir, *, images=None, options=None, cityscapes=None, split="val", max_drop=None,
        max_iterations=8, force=False):
    """Quantize the workdir's FP32 IR; returns the StageResult."""
    start = time.perf_counter()
    workdir = Workdir.of(workdir)
    plan, ov_record = _plan(config, workdir, images=images, options=options, cityscapes=cityscapes, split=split,
                            max_drop=max_drop, max_iterations=max_iterations)

    def build(tmp):
        nncf, ov = _import_nncf()
        quantized, calib, fusion, readers, accuracy = _calibrate_and_quantize(nncf, ov, config, plan)
        fq = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
        files, profile, names = _save(ov, config, quantized, plan, tmp)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        info(f"quantize: {fq} FakeQuantize node(s), {len(fusion)} fusion Add(s) and {len(readers)} named reader(s) "
             f"kept in float; {round(time.perf_counter() - start, 1)} s, peak RSS {peak_mb} MB")
        return Written(files=files, names=names, fields=dict(
            weights=ov_record.weights, input=ov_record.input, output=dict(ov_record.output or {}),
            params={"input_shape": plan.shape, "built_from": plan.built_from, "options": plan.opts,
                    "calibration": {"images": [os.path.abspath(p) for p in plan.paths[:calib.images_used]],
                                    "tiles": len(calib.items), "tile": list(plan.opts["calibration_tile"])},
                    "ignored_adds": len(fusion), "ignored_readers": readers, "fake_quantize_nodes": fq,
                    "accuracy_control": accuracy, "nncf": nncf.__version__, "openvino": ov.__version__,
                    "error_profile": profile, "peak_rss_mb": peak_mb}))
    return run_stage("quantize", plan.out_root, key=plan.key, force=force, build=build, start=start)
