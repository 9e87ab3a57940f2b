"""onnx stage: Paddle inference model -> ONNX with the preprocessing baked in.

paddle2onnx (pinned 1.3.1) converts artifacts/paddle/. We then put three ops in
front of the graph, so that the ONNX model takes raw pixels in the converted
input's channel order, as the config says (BGR 0..255): Gather(order, axis 1)
reorders the channels, then Sub(mean) and Div(scale) reproduce exactly the
original's (v - mean) / scale. The input is fixed to the requested static
shape.

Opset 13: Resize with coordinate_transformation_mode half_pixel (needed for
bilinear with align_corners=False) exists from opset 11; 13 is the newest
opset every op of this model maps to in paddle2onnx 1.3.1 and is fully
supported by ONNX Runtime and OpenVINO's ONNX frontend.

Output: the config's converted output, int32 [1,H,W] (ArgMax's int64 cast back
to the int32 that paddle.argmax(dtype='int32') gives in the original).
"""
import json
import os
import re
import time

import numpy as np

from converter.errors import StageError
from converter.layout import Workdir, onnx_path
from converter.stages import Written, run_stage
from converter.util.fsutil import describe_files
from converter.util.log import info
from converter.util.no_install import no_runtime_installs

INTERNAL_INPUT = "x_rgb_normalized"


def channel_constant(values):
    """A per-channel constant as the graph holds it: one scalar when the
    three agree (so the default config gives the graph it always gave),
    else [1, 3, 1, 1] to broadcast over NCHW."""
    values = np.asarray(values, np.float32)
    return np.array(values[0]) if (values == values[0]).all() else values.reshape(1, 3, 1, 1)


def check_paddle_export(workdir):
    """The export's folder and record, its files verified against it."""
    from converter.records import verified_record

    folder = Workdir.of(workdir).paddle
    record = verified_record(workdir, "export")
    if record.params.get("without_argmax"):
        raise StageError(f"{folder} holds a --without-argmax export; convert an export with argmax")
    for name in (program_name(record), "model.pdiparams"):
        if name not in record.files:
            raise StageError(f"{Workdir.of(workdir).record('export')} does not list {name}")
    return folder, record


def program_name(export_record):
    """model.json for a Paddle 3 PIR export, else model.pdmodel."""
    return "model.json" if "model.json" in export_record.files else "model.pdmodel"


def prepend_preprocessing(model, shape, pre):
    """Rename the graph input, and feed it from the converted input (raw
    0..255 in the config's channel order) through the channel reordering and
    normalisation: pre is ModelConfig.baked()."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    old = graph.input[0].name
    for node in graph.node:
        node.input[:] = [INTERNAL_INPUT if n == old else n for n in node.input]
    consts = [
        numpy_helper.from_array(np.array(pre["order"], np.int64), "pre_channel_order"),
        numpy_helper.from_array(channel_constant(pre["mean"]), "pre_mean"),
        numpy_helper.from_array(channel_constant(pre["scale"]), "pre_scale"),
    ]
    nodes = [
        helper.make_node("Gather", [pre["input"], "pre_channel_order"], ["pre_rgb"], name="pre_bgr_to_rgb", axis=1),
        helper.make_node("Sub", ["pre_rgb", "pre_mean"], ["pre_centered"], name="pre_sub_mean"),
        helper.make_node("Div", ["pre_centered", "pre_scale"], [INTERNAL_INPUT], name="pre_div_scale"),
    ]
    graph.initializer.extend(consts)
    new_nodes = nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(pre["input"], TensorProto.FLOAT, list(shape)))
    out = graph.output[0]
    if out.name != pre["output"]:
        raise StageError(f"paddle2onnx named the output {out.name!r}; the config says {pre['output']!r}")
    out.type.tensor_type.shape.Clear()
    for dim in (shape[0], shape[2], shape[3]):
        out.type.tensor_type.shape.dim.add().dim_value = dim
    del graph.value_info[:]
    reorder = "channel reversal" if list(pre["order"]) == [2, 1, 0] else "channel order"
    graph.doc_string = (f"Input {pre['input']}: float32 NCHW, {pre['color']}, 0..255; {reorder} and "
                        f"{pre['normalisation']} are inside the graph.")
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:   # onnx raises InferenceError, and others from its C++ checker
        raise ShapeInferenceFailed(_first_node_error(exc)) from None


class ShapeInferenceFailed(StageError):
    """paddle2onnx's graph fails ONNX's strict shape inference; the message names the op and node."""


def _first_node_error(exc):
    """'AveragePool node AveragePool.4: Attribute strides must only contain positive values' from onnx's
    multi-line report, whose first lines are often only a consequence of a later one."""
    import re

    text = str(exc)
    found = re.findall(r"\(op_type:([^,]+), node name: ([^)]*)\): \[(\w+)\] ([^\n]*)", text)
    real = [f for f in found if "expected to have type but instead is null" not in f[3]] or found
    if not real:
        return f"ONNX shape inference failed on paddle2onnx's output: {text.strip().splitlines()[0][:200]}"
    op, node, kind, message = real[0]
    return f"ONNX shape inference failed on paddle2onnx's output at {op} node {node!r}: {message[:200]} ({kind})"


def _paddle2onnx(program_path, params_path, opset):
    with no_runtime_installs():
        import paddle2onnx

        try:
            return paddle2onnx.export(program_path, params_path, save_file=None, opset_version=opset,
                                      auto_upgrade_opset=False, verbose=False, enable_onnx_checker=True,
                                      enable_experimental_op=False, enable_optimize=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StageError(f"paddle2onnx 1.3.1 failed: {first[:300]}") from None


def _onnx_from(raw, paddle_dir, shape, pre, producer="paddle2onnx 1.3.1"):
    import onnx

    model = onnx.load_from_string(raw)
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise StageError(f"{producer} produced a graph with {len(model.graph.input)} inputs and "
                         f"{len(model.graph.output)} outputs from {paddle_dir}; expected one of each")
    model.producer_name = f"ocrnet-convert ({producer})"
    return prepend_preprocessing(model, shape, pre)


def _paddle2onnx_pir(program, params_path, opset, where):
    """paddle2onnx 2.x, in the Paddle 3 toolchain's interpreter: the ONNX bytes."""
    import tempfile

    from converter.runners import paddle3

    with tempfile.TemporaryDirectory(prefix="ocrnet-p2o-") as tmp:
        program_path = program if isinstance(program, str) else os.path.join(tmp, "model.json")
        if not isinstance(program, str):
            with open(program_path, "w") as fh:
                json.dump(program, fh)
        out = os.path.join(tmp, "model.onnx")
        paddle3.convert(program_path, params_path, out, opset=opset, where=where)
        with open(out, "rb") as fh:
            return fh.read()


def _pir_hint(message):
    """What the user can do about paddle2onnx 2.x's refusal."""
    if "static input shape" in message:
        return "; export the model at a static size (PaddleSeg: tools/export.py --input_shape 1 3 H W)"
    wanted = re.search(r"opset_version to (\d+)", message)
    if wanted:
        # paddle2onnx 2.1.0 names no op here (MaskFormer: its sequence ops)
        return (f"; paddle2onnx names no op, only the opset: set converted.onnx_opset: {wanted.group(1)} in the "
                "config to convert at that opset")
    return "; the ONNX opset is the config's converted.onnx_opset"


def convert_pir_to_onnx(paddle_dir, shape, opset, pre):
    """convert_to_onnx for a PIR export (model.json), by paddle2onnx 2.x."""
    from converter.runners import paddle3
    from converter.runners.pir_program import read_pir, with_static_input

    producer = f"paddle2onnx {paddle3.versions()['paddle2onnx']}, Paddle 3 toolchain"
    program_path, params_path = (os.path.join(paddle_dir, n) for n in ("model.json", "model.pdiparams"))
    graph = read_pir(program_path)
    try:
        raw = _paddle2onnx_pir(program_path, params_path, opset, program_path)
        return _onnx_from(raw, paddle_dir, shape, pre, producer), "as exported"
    except StageError as exc:
        # ShapeInferenceFailed, or paddle2onnx refusing a dynamic shape
        # ("[OP: pd_op.pool2d] Adaptive only support static input shape")
        info(f"onnx: {exc}; converting again with the program's input fixed to {list(shape)}")
    try:
        raw = _paddle2onnx_pir(with_static_input(graph, list(shape)), params_path, opset, program_path)
    except StageError as exc:
        raise StageError(f"{exc} (also with the program's input fixed to {list(shape)}){_pir_hint(str(exc))}") \
            from None
    return _onnx_from(raw, paddle_dir, shape, pre, producer), f"input fixed to {list(shape)}"


def convert_to_onnx(paddle_dir, shape, opset, pre):
    """(ONNX model, how the program was given to paddle2onnx): as exported,
    or, when that graph fails shape inference, with its input fixed to the
    static shape (runners.paddle_program.with_static_input)."""
    import tempfile

    from converter.util.paddle_env import import_paddle
    from converter.runners.paddle import check_program
    from converter.runners.paddle_program import with_static_input

    import_paddle()
    program_path, params_path = (os.path.join(paddle_dir, n) for n in ("model.pdmodel", "model.pdiparams"))
    desc = check_program(program_path)
    try:
        return _onnx_from(_paddle2onnx(program_path, params_path, opset), paddle_dir, shape, pre), "as exported"
    except ShapeInferenceFailed as exc:
        info(f"onnx: {exc}; converting again with the program's input fixed to {list(shape)}")
    with tempfile.TemporaryDirectory(prefix="ocrnet-static-") as tmp:
        static = os.path.join(tmp, "model.pdmodel")
        with open(static, "wb") as fh:
            fh.write(with_static_input(desc, shape, program_path))
        raw = _paddle2onnx(static, params_path, opset)
    return _onnx_from(raw, paddle_dir, shape, pre), f"input fixed to {list(shape)}"


def _text(values):
    return f"{values[0]:g}" if len(set(values)) == 1 else str(values)


def _save_checked(model, tmp, stem):
    """Write the model, then have the checker and ONNX Runtime read the file as written; its name."""
    import onnx

    onnx_name = os.path.basename(onnx_path(stem))
    path = os.path.join(tmp, onnx_name)
    onnx.save_model(model, path)
    try:
        onnx.checker.check_model(path, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise StageError(f"onnx checker rejected the model: {str(exc).splitlines()[0]}") from None
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3   # errors only: paddle2onnx 2.x leaves unused constants, which ORT warns of
    try:
        ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:   # onnxruntime's Fail, InvalidGraph, ...: the converter wrote a graph ORT rejects
        raise StageError(f"ONNX Runtime cannot load the converted model: {str(exc).strip().splitlines()[0][:300]}"
                         ) from None
    return onnx_name


def _tools(pir):
    """The converters' versions, which the ONNX bytes depend on."""
    from converter.util.incremental import tool_versions

    if pir:
        from converter.runners import paddle3

        return dict(paddle3.versions(), onnx_here=tool_versions("onnx")["onnx"])
    return tool_versions("paddlepaddle", "paddle2onnx", "onnx")


def run(config, workdir, *, shape=None, force=False):
    """The ONNX model, converted from the export by paddle2onnx, its preprocessing baked in."""
    from converter.util.incremental import stage_key

    start = time.perf_counter()
    shape = tuple(shape or config.converted_shape)
    paddle_dir, export_record = check_paddle_export(workdir)
    pir = program_name(export_record) == "model.json"
    key = stage_key({"stage": "onnx", "shape": list(shape), "opset": config.onnx_opset, "pre": config.baked(),
                     "tools": _tools(pir)},
                    [os.path.join(paddle_dir, n) for n in (program_name(export_record), "model.pdiparams")])

    def build(tmp):
        info(f"onnx: converting {paddle_dir} with paddle2onnx (opset {config.onnx_opset}), input {list(shape)}...")
        pre = dict(config.baked(), color=config.converted_input.color, normalisation=config.normalisation_text())
        model, program_input = (convert_pir_to_onnx if pir else convert_to_onnx)(paddle_dir, shape,
                                                                                 config.onnx_opset, pre)
        onnx_name = _save_checked(model, tmp, config.name)
        preprocessing = f"Gather{pre['order']} axis 1, Sub {_text(pre['mean'])}, Div {_text(pre['scale'])}"
        return Written(files=describe_files(tmp, [onnx_name]), names=[onnx_name], fields=dict(
            weights=export_record.weights,
            input={"name": pre["input"], "dtype": "float32", "layout": "NCHW",
                   "color": config.converted_input.color, "range": "0..255"},
            output={"name": model.graph.output[0].name, "dtype": "int32", "shape": [shape[0], shape[2], shape[3]]},
            params={"opset": config.onnx_opset, "input_shape": list(shape), "paddle_program": program_input,
                    "preprocessing": preprocessing, "converter": model.producer_name,
                    "route": ("PIR model.json -> paddle2onnx 2.x (Paddle 3 toolchain)" if pir
                              else "model.pdmodel -> paddle2onnx 1.3.1")}))
    return run_stage("onnx", Workdir.of(workdir).stage_folder("onnx"), key=key, force=force, build=build,
                     start=start)
