"""openvino stage: OpenVINO IR in FP32 and FP16, preprocessing baked in.

By default openvino.convert_model reads the Paddle inference model directly
(artifacts/paddle/model.pdmodel), as the reference Open Model Zoo conversion
did, and PrePostProcessor adds reverse_channels, mean(127.5) and scale(127.5)
in front, so the IR takes BGR 0..255. `--from onnx` converts the ONNX file
instead (which already contains the same preprocessing), for cross-checks.
FP16 is the same model saved with compress_to_fp16 (weights in FP16;
computation precision is chosen by the device at run time).
"""
import os
import time

from converter.errors import StageError
from converter.util.fsutil import describe_files, staging_dir, write_json_atomic
from converter.util.log import info
from converter.stages.onnx import check_paddle_export
from converter.records import MODEL_STEM as IR_NAME, ONNX_PATH, record_files, verified_record
OUTPUT_NAME = "argmax_0.tmp_0"


def build_ir(source_path, shape, from_onnx=False, mean=127.5, scale=127.5, reverse=True):
    """Return an ov.Model with input x [shape] f32 NCHW BGR 0..255.

    mean/scale/reverse exist for negative controls in tests; the pipeline
    always uses the defaults.
    """
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    model = ov.convert_model(source_path)
    model.reshape({model.inputs[0]: ov.PartialShape(list(shape))})
    if not from_onnx:
        ppp = PrePostProcessor(model)
        inp = ppp.input()
        inp.tensor().set_element_type(ov.Type.f32).set_layout(ov.Layout("NCHW"))
        inp.model().set_layout(ov.Layout("NCHW"))
        steps = inp.preprocess()
        if reverse:
            steps.reverse_channels()
        if mean:
            steps.mean(mean)
        steps.scale(scale)
        model = ppp.build()
    model.inputs[0].get_tensor().set_names({"x"})
    names = set(model.outputs[0].get_names())
    if OUTPUT_NAME not in names:
        model.outputs[0].get_tensor().set_names(names | {OUTPUT_NAME})
    return model


def run_openvino(config, workdir, shape, source="paddle", force=False):
    from converter.util.incremental import current_record, stage_key, tool_versions

    start = time.perf_counter()
    if source == "onnx":
        src = os.path.join(workdir, ONNX_PATH)
        verified_record(workdir, "onnx")
        export_record, inputs = {}, [src]
    else:
        from converter.runners.paddle import check_program

        folder, export_record = check_paddle_export(workdir)
        src = os.path.join(folder, "model.pdmodel")
        check_program(src)
        inputs = [src, os.path.join(folder, "model.pdiparams")]
    out_root = os.path.join(workdir, "openvino")
    record_path = os.path.join(out_root, "openvino.json")
    key = stage_key({"stage": "openvino", "shape": list(shape), "source": source,
                     "tools": tool_versions("openvino")}, inputs)
    record = None if force else current_record(out_root, "openvino", key)
    if record:
        info("openvino: up to date (same inputs and parameters); skipped. Use --force to redo.")
        return [p for p, _ in record_files(out_root, "openvino", record)], dict(record, skipped=True)
    import openvino as ov

    info(f"openvino: converting {src}, input {list(shape)}...")
    try:
        model = build_ir(src, shape, from_onnx=(source == "onnx"))
    except StageError:
        raise
    except Exception as exc:
        raise StageError(f"OpenVINO conversion failed: {str(exc).splitlines()[0]}") from None
    paths, files = [], {}
    # Both precisions are staged together and published as one step, the
    # record last: a run killed half-way leaves no record beside a mix of
    # old and new IRs, and every reader refuses files without their record.
    with staging_dir(out_root, record="openvino.json") as tmp:
        names = [IR_NAME + ".xml", IR_NAME + ".bin"]
        for precision in ("FP32", "FP16"):
            os.makedirs(os.path.join(tmp, precision))
            ov.save_model(model, os.path.join(tmp, precision, IR_NAME + ".xml"),
                          compress_to_fp16=(precision == "FP16"))
            files[precision] = describe_files(os.path.join(tmp, precision), names)
            paths += [os.path.join(out_root, precision, n) for n in names]
    record = {
        "stage": "openvino", "key": key, "source": source, "input_shape": list(shape), "openvino": ov.__version__,
        "input": {"name": "x", "dtype": "float32", "layout": "NCHW", "color": "BGR", "range": "0..255"},
        "output": {"name": OUTPUT_NAME, "shape": [shape[0], shape[2], shape[3]],
                   "dtype": str(model.outputs[0].get_element_type().get_type_name())},
        "preprocessing": ("baked in the ONNX graph" if source == "onnx"
                          else "PrePostProcessor: reverse_channels, mean 127.5, scale 127.5"),
        "precisions": {"FP32": "weights f32", "FP16": "weights compressed to f16 (compress_to_fp16)"},
        "weights": export_record.get("weights"), "files": files,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(record_path, record)
    return paths, record
