"""model_api stage: the Model API flavour of every IR, checked against its parent.

Every openvino-model-api release checked (0.1.5 to 0.4.7) accepts a 3-D
class-map output when it loads a model, then fails in
SegmentationModel.postprocess (np.argmax over axis 2 of a 2-D map). So each
IR (FP32, FP16, and INT8 when `make quantize` has run) gets a twin: the same
graph, preprocessing and weights, ending in Softmax over the classes
([1, C, H, W] probabilities) instead of the ArgMax, which is what Model API's
soft prediction, soft_threshold and blur_strength are written for.

The twin is gated before it is published: on the bundled samples, at the
config's model_api.check_tile and INFERENCE_PRECISION_HINT f32, its output
must be probabilities (in [0, 1], summing to 1 over classes), the Softmax of
its parent's class scores to within PROBABILITY_TOLERANCE, and its argmax may
differ from the parent's class map only at near-ties (as the f32 parity gate).
The tail is shape-independent, so a tile is enough and keeps this stage at
seconds, not minutes. Files: openvino/model_api/<FP32|FP16|INT8>/.
"""
import os
import time

import numpy as np

from converter.errors import ParityFailure, StageError, StaleBuild
from converter.layout import Workdir, ir_path
from converter.records import check_built_from, record_files, verified_record
from converter.stages import Written, run_stage
from converter.util.fsutil import describe_files
from converter.util.log import info

# ops a class-map output may pass through after the ArgMax (TopK in OpenVINO)
_TAIL_OPS = ("Convert", "Squeeze", "Reshape", "Unsqueeze")
SUM_TOLERANCE = 1e-3  # |sum of probabilities - 1|, far above f32 rounding over 19 terms
# |flavour probability - float64 Softmax of the parent's scores|; measured at
# most 3.8e-7 (PaddleSeg exports of OCRNet, Deeplabv3, SegFormer; 4.7e-10 where
# the scores are 1e-13, 6e-8 on scores of 4e3)
PROBABILITY_TOLERANCE = 1e-5


def logits_of(model):
    """The output of the node feeding the class map's ArgMax (TopK): walks up
    from the model's only Result through the ops listed in _TAIL_OPS."""
    if len(model.outputs) != 1:
        raise StageError(f"expected an IR with one output, found {len(model.outputs)}")
    node = model.get_results()[0].input_value(0).get_node()
    for _ in range(8):
        if node.get_type_name() in ("TopK", "ArgMax"):
            return node.input_value(0)
        if node.get_type_name() not in _TAIL_OPS:
            break
        node = node.input_value(0).get_node()
    raise StageError(f"the IR's output does not end in an ArgMax over class scores (found {node.get_type_name()})")


def make_flavour(model, output_name, metadata, probabilities=False):
    """The same graph ending in Softmax over axis 1 instead of the ArgMax;
    probabilities: the ArgMax's input already is (a softmax export), so the
    graph ends there."""
    import openvino as ov
    from openvino import opset13 as ops

    logits = logits_of(model)
    if probabilities:
        softmax = ops.convert(logits, ov.Type.f32)   # an identity on f32 scores, a name of its own
    else:
        softmax = ops.softmax(logits, 1)
    softmax.set_friendly_name(output_name)
    result = ops.result(softmax)
    result.set_friendly_name(output_name + "/result")
    flavour = ov.Model([result], model.get_parameters(), model.get_friendly_name())
    flavour.outputs[0].get_tensor().set_names({output_name})
    from converter.stages.ir_metadata import set_model_info

    return set_model_info(flavour, metadata)


def probabilities_description(config, output_name):
    return (f"{output_name}: float32 [1, {config.num_classes}, H, W], the probability of each class at each pixel "
            f"(Softmax over axis 1); its argmax is the class map")


def parents(workdir, stem):
    """({precision: parent IR .xml (relative)} for every IR built and current,
    {precision: why it is left out}, {parent file (relative): sha256} as the
    records just verified say, the openvino record)."""
    workdir = Workdir.of(workdir)
    records = {"openvino": verified_record(workdir, "openvino")}
    found, left_out = {"FP32": ir_path("FP32", stem), "FP16": ir_path("FP16", stem)}, {}
    if os.path.lexists(workdir.record("quantize")):
        # a tampered INT8 build is an error (verified_record); a stale one is left out
        quantized = verified_record(workdir, "quantize")
        try:
            check_built_from(workdir, "quantize", quantized)
            records["quantize"] = quantized
            found["INT8"] = ir_path("INT8", stem)
        except StaleBuild as exc:
            left_out["INT8"] = str(exc)
    parent_files = {rel[:-4] + ext for rel in found.values() for ext in (".xml", ".bin")}
    digests = {}
    for stage, record in records.items():
        for path, meta in record_files(workdir.stage_folder(stage), stage, record):
            if os.path.relpath(path, workdir) in parent_files:
                digests[os.path.relpath(path, workdir)] = meta["sha256"]
    return found, left_out, digests, records["openvino"]


def _compiled(core, path_or_model, shape, threads, with_logits=False):
    import openvino as ov

    model = core.read_model(path_or_model) if isinstance(path_or_model, str) else path_or_model
    model.reshape({model.inputs[0]: ov.PartialShape(list(shape))})
    if with_logits:
        model.add_outputs([logits_of(model)])
    return core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                             "INFERENCE_PRECISION_HINT": "f32"})


def _expected_probabilities(scores, scores_are_probabilities):
    """What the flavour must output for its parent's class scores ([C, H, W]):
    their Softmax over the classes, in float64 (or the scores themselves, for
    a program that already ends in probabilities)."""
    scores = np.asarray(scores, np.float64)
    if scores_are_probabilities:
        return scores
    shifted = np.exp(scores - scores.max(0))
    return shifted / shifted.sum(0)


def _figures(parent, twin, images, num_classes, scores_are_probabilities):
    """Per-check figures over the images: agreement, flips and their margins,
    the probabilities' distance from the expected ones, and their range."""
    from converter.engine.gates import compare

    figures = {"agreement_min": 1.0, "disagree": 0, "max_flip_margin": 0.0, "max_probability_error": 0.0,
               "max_sum_error": 0.0, "min": 1.0, "max": 0.0, "scores_abs_max": 0.0}
    for x in images:
        out = parent.create_infer_request().infer({0: x})
        classes, scores = out[parent.outputs[0]][0], out[parent.outputs[1]][0]
        probs = twin.create_infer_request().infer({0: x})[twin.outputs[0]][0]
        if probs.shape != scores.shape:
            raise ParityFailure(f"the Model API flavour's output is {list(probs.shape)}, "
                                f"expected {list(scores.shape)} (class scores)")
        m = compare(classes, probs.argmax(0), scores, None, num_classes)
        expected = _expected_probabilities(scores, scores_are_probabilities)
        figures["scores_abs_max"] = max(figures["scores_abs_max"], float(np.abs(scores).max()))
        figures["agreement_min"] = min(figures["agreement_min"], m["agreement"])
        figures["disagree"] += m["disagree"]
        figures["max_flip_margin"] = max(figures["max_flip_margin"], m.get("max_flip_margin", 0.0))
        figures["max_probability_error"] = max(figures["max_probability_error"],
                                               float(np.abs(probs - expected).max()))
        figures["max_sum_error"] = max(figures["max_sum_error"],
                                       float(np.abs(probs.sum(0, dtype=np.float64) - 1).max()))
        figures["min"] = min(figures["min"], float(probs.min()))
        figures["max"] = max(figures["max"], float(probs.max()))
    return figures


def check(config, parent_xml, flavour_model, images, threads=2, *, scores_are_probabilities=False):
    """Gate a flavour (an ov.Model or an .xml path) against its parent IR on
    images (float32 [1,3,h,w] inputs of the converted side). Returns the
    figures; raises ParityFailure when the gate fails.

    The gate: the output is probabilities; they are the Softmax of the
    parent's class scores to within PROBABILITY_TOLERANCE; and every pixel
    whose argmax differs from the parent's class map is a near-tie (top-2
    margin of the parent's scores < gates.tie_bound). Agreement itself is reported, not
    gated: where the scores tie to within f32's resolution of a probability
    (untrained weights give scores of 1e-13), the Softmax's argmax picks
    among equal values, which is not an error of the flavour."""
    import openvino as ov
    from converter.engine.gates import tie_bound

    core = ov.Core()
    shape = images[0].shape
    parent = _compiled(core, parent_xml, shape, threads, with_logits=True)
    twin = _compiled(core, flavour_model, shape, threads)
    figures = _figures(parent, twin, images, config.num_classes, scores_are_probabilities)
    tie = tie_bound(config, figures["scores_abs_max"])
    if not figures["max_flip_margin"] < tie:
        raise ParityFailure(f"the Model API flavour's argmax disagrees with its parent {parent_xml} on "
                            f"{figures['disagree']} pixel(s), one with a top-2 margin of "
                            f"{figures['max_flip_margin']:.4g} (near-tie bound {tie:.4g})")
    if not (figures["max_sum_error"] <= SUM_TOLERANCE and figures["min"] >= 0 and figures["max"] <= 1):
        raise ParityFailure(f"the Model API flavour's output is not per-class probabilities: values in "
                            f"[{figures['min']:.4g}, {figures['max']:.4g}], sums off 1 by up to "
                            f"{figures['max_sum_error']:.3g}")
    if not figures["max_probability_error"] <= PROBABILITY_TOLERANCE:  # NaN fails too
        raise ParityFailure(f"the Model API flavour disagrees with its parent {parent_xml}: its probabilities "
                            f"differ from the Softmax of the parent's class scores by up to "
                            f"{figures['max_probability_error']:.3g} (tolerance {PROBABILITY_TOLERANCE})")
    return figures


def check_images(config, hw=None):
    """The bundled samples at the check tile (or hw), as the converted models take them."""
    from converter.data.images import input_contract, load_rgb, prepare, resize_rgb, sample_images

    h, w = hw or config.model_api["check_tile"]
    contract = input_contract(config, "converted")
    return [(os.path.basename(p), prepare(resize_rgb(load_rgb(p), w, h), contract)) for p in sample_images()]


def _flavour_of(core, parent_xml, rel, *, output, metadata, probabilities):
    try:
        return make_flavour(core.read_model(parent_xml), output, metadata, probabilities=probabilities)
    except StageError:
        raise
    except Exception as exc:
        raise StageError(f"cannot derive the Model API flavour of {rel}: {str(exc).splitlines()[0]}") from None


def _check_hw(core, parent_xml, tile):
    """The check tile, or, for an IR that cannot take it (a program exported at a
    static size, whose reshapes hold that size), the IR's own input size."""
    import openvino as ov

    model = core.read_model(parent_xml)
    try:
        model.reshape({model.inputs[0]: ov.PartialShape([1, 3, *tile])})
        return list(tile)
    except Exception:
        shape = model.inputs[0].get_partial_shape()
        if shape.is_dynamic:
            raise StageError(f"{parent_xml}: the IR takes neither the check tile {list(tile)} nor a static "
                             "input size") from None
        info(f"model_api: {os.path.basename(parent_xml)} cannot be reshaped to the check tile {list(tile)}; "
             f"checked at its own size {list(shape.to_shape())[2:]}")
        return list(shape.to_shape())[2:]


def _build_flavours(config, workdir, tmp, *, found, metadata, threads):
    """Each parent's flavour, written and gated as written; (files, names, checks, the images)."""
    import openvino as ov

    core, files, checks, names = ov.Core(), {}, {}, []
    hw = _check_hw(core, workdir.file(next(iter(found.values()))), config.model_api["check_tile"])
    images = check_images(config, hw)
    stem_files = [config.name + ".xml", config.name + ".bin"]
    for precision, rel in found.items():
        parent_xml = workdir.file(rel)
        info(f"model_api: {precision}: Softmax flavour of {rel}, checked on {len(images)} samples at {hw}...")
        flavour = _flavour_of(core, parent_xml, rel, output=config.model_api["output"], metadata=metadata,
                              probabilities=config.output_op == "softmax")
        os.makedirs(os.path.join(tmp, precision))
        xml = os.path.join(tmp, precision, stem_files[0])
        # the parents' weights are stored as they are (FP16 ones stay f16)
        ov.save_model(flavour, xml, compress_to_fp16=False)
        # gate the files as written, not the in-memory graph
        checks[precision] = check(config, parent_xml, xml, [x for _, x in images], threads,
                                  scores_are_probabilities=config.output_op == "softmax")
        files[precision] = describe_files(os.path.join(tmp, precision), stem_files)
        names += [os.path.join(precision, n) for n in stem_files]
    return files, names, checks, images


def run(config, workdir, *, threads=None, force=False):
    """The Model API flavour of every IR built and current, each gated against its parent."""
    from converter.stages.ir_metadata import model_info
    from converter.util.incremental import stage_key, tool_versions

    start = time.perf_counter()
    workdir = Workdir.of(workdir)
    found, left_out, built_from, ov_record = parents(workdir, config.name)
    for precision, why in left_out.items():
        info(f"model_api: {precision} left out: {why}")
    output = config.model_api["output"]
    metadata = model_info(config, probabilities_description(config, output))
    # the parents by the sha256 their records hold, verified a moment ago
    key = stage_key({"stage": "model_api", "parents": built_from, "settings": config.model_api,
                     "model_info": metadata, "gate": [config.tie_margin, PROBABILITY_TOLERANCE],
                     "tools": tool_versions("openvino")})

    def build(tmp):
        import openvino as ov

        files, names, checks, images = _build_flavours(config, workdir, tmp, found=found, metadata=metadata,
                                                       threads=threads or os.cpu_count() or 2)
        shape = ov_record.params.get("input_shape")
        return Written(files=files, names=names, fields=dict(
            weights=ov_record.weights, input=ov_record.input,
            output={"name": output, "shape": [shape[0], config.num_classes, shape[2], shape[3]], "dtype": "float32"},
            params={"built_from": built_from, "left_out": left_out, "openvino": ov.__version__,
                    "check": {"images": [name for name, _ in images], "tile": [int(v) for v in images[0][1].shape[2:]],
                              "precision_hint": "f32", "tie_margin": config.tie_margin,
                              "probability_tolerance": PROBABILITY_TOLERANCE, "results": checks}}))
    return run_stage("model_api", workdir.stage_folder("model_api"), key=key, force=force, build=build, start=start,
                     why="same parent IRs and parameters")
