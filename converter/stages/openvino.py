"""openvino stage: OpenVINO IR in FP32 and FP16, preprocessing baked in.

By default openvino.convert_model reads the Paddle inference model directly
(artifacts/paddle/model.pdmodel), as the reference Open Model Zoo conversion
did, and PrePostProcessor adds the channel reversal and the config's mean and
scale in front, so the IR takes the converted input of the config (BGR
0..255). `--from onnx` converts the ONNX file
instead (which already contains the same preprocessing), for cross-checks.
FP16 is the same model saved with compress_to_fp16 (weights in FP16;
computation precision is chosen by the device at run time).
"""
import os
import time

from converter.errors import StageError
from converter.stages import Written, run_stage
from converter.util.fsutil import describe_files
from converter.util.log import info
from converter.stages.onnx import check_paddle_export
from converter.layout import Workdir
from converter.records import verified_record


def _per_channel(values):
    # one value when the three agree: the default config's graph stays as it was
    return values[0] if len(set(values)) == 1 else list(values)


def build_ir(source_path, shape, pre, from_onnx=False):
    """Return an ov.Model whose input (pre["input"], f32 NCHW, raw 0..255 in
    the converted channel order) goes through the channel reordering and
    normalisation of pre (ModelConfig.baked()) before the network. Tests pass
    a wrong pre on purpose, as negative controls."""
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
        if list(pre["order"]) == [2, 1, 0]:
            steps.reverse_channels()
        elif list(pre["order"]) != [0, 1, 2]:
            raise StageError(f"channel order {pre['order']} is neither a reversal nor the identity")
        if any(pre["mean"]):
            steps.mean(_per_channel(pre["mean"]))
        steps.scale(_per_channel(pre["scale"]))
        model = ppp.build()
    model.inputs[0].get_tensor().set_names({pre["input"]})
    names = set(model.outputs[0].get_names())
    if pre["output"] not in names:
        model.outputs[0].get_tensor().set_names(names | {pre["output"]})
    return model


def _choose_source(workdir, source):
    """paddle for a legacy export, onnx for a PIR one (OpenVINO reads no PIR
    program: openvino#30911), unless asked; asking for paddle on PIR is an error."""
    from converter.stages.onnx import program_name

    pir = program_name(verified_record(workdir, "export")) == "model.json"
    if pir and source == "paddle":
        raise StageError("OpenVINO reads no Paddle 3 PIR program (model.json; openvino#30911): the IR of a PIR "
                         "export is read from its ONNX model (--read-from onnx, the default for it)")
    return source or ("onnx" if pir else "paddle")


def _source(config, workdir, source):
    """(the model the IR is read from, the export's record, the input files of the key)."""
    if source == "onnx":
        src = workdir.onnx(config.name)
        verified_record(workdir, "onnx")  # its export is checked below, for the weights' provenance
        return src, verified_record(workdir, "export"), [src]
    from converter.runners.paddle import check_program

    folder, export_record = check_paddle_export(workdir)
    src = os.path.join(folder, "model.pdmodel")
    check_program(src)
    return src, export_record, [src, os.path.join(folder, "model.pdiparams")]


def _convert(src, shape, pre, source, metadata):
    from converter.stages.ir_metadata import set_model_info

    info(f"openvino: converting {src}, input {list(shape)}...")
    try:
        return set_model_info(build_ir(src, shape, pre, from_onnx=(source == "onnx")), metadata)
    except StageError:
        raise
    except Exception as exc:
        raise StageError(f"OpenVINO conversion failed: {_what_failed(str(exc))}") from None


def _what_failed(text):
    """The ops OpenVINO's frontend could not convert (its report's summary lines),
    else its first line: the first line alone is a C++ source location."""
    summary = [ln.strip("- ").strip() for ln in text.split("Summary:", 1)[-1].splitlines()
               if ln.strip().startswith("--")] if "Summary:" in text else []
    return "; ".join(summary)[:400] if summary else text.strip().splitlines()[0][:300]


def _save(model, tmp, stem):
    """Both precisions, in the one staging folder. Returns (files, names)."""
    import openvino as ov

    files, names = {}, []
    stem_files = [stem + ".xml", stem + ".bin"]
    for precision in ("FP32", "FP16"):
        os.makedirs(os.path.join(tmp, precision))
        ov.save_model(model, os.path.join(tmp, precision, stem_files[0]), compress_to_fp16=(precision == "FP16"))
        files[precision] = describe_files(os.path.join(tmp, precision), stem_files)
        names += [os.path.join(precision, n) for n in stem_files]
    return files, names


def _fields(config, model, *, export_record, source, shape, pre):
    import openvino as ov

    return dict(
        weights=export_record.weights,
        input={"name": pre["input"], "dtype": "float32", "layout": "NCHW",
               "color": config.converted_input.color, "range": "0..255"},
        output={"name": pre["output"], "shape": [shape[0], shape[2], shape[3]],
                "dtype": str(model.outputs[0].get_element_type().get_type_name())},
        params={"source": source, "input_shape": list(shape), "openvino": ov.__version__,
                "preprocessing": ("baked in the ONNX graph" if source == "onnx"
                                  else f"PrePostProcessor: channel order {pre['order']}, "
                                  f"{config.normalisation_text()}"),
                "precisions": {"FP32": "weights f32", "FP16": "weights compressed to f16 (compress_to_fp16)"}})


def run(config, workdir, *, shape=None, source=None, force=False):
    """The FP32 and FP16 IRs, read from the export (source "paddle") or the ONNX model ("onnx");
    None: the export for a legacy program, the ONNX model for a PIR one."""
    from converter.stages.ir_metadata import class_map_description, model_info
    from converter.util.incremental import stage_key, tool_versions

    start = time.perf_counter()
    workdir = Workdir.of(workdir)
    shape, pre = tuple(shape or config.converted_shape), config.baked()
    source = _choose_source(workdir, source)
    src, export_record, inputs = _source(config, workdir, source)
    metadata = model_info(config, class_map_description(config))
    key = stage_key({"stage": "openvino", "shape": list(shape), "source": source, "pre": pre, "model_info": metadata,
                     "tools": tool_versions("openvino")}, inputs)

    def build(tmp):
        model = _convert(src, shape, pre, source, metadata)
        files, names = _save(model, tmp, config.name)
        return Written(files=files, names=names, fields=_fields(config, model, export_record=export_record,
                                                                source=source, shape=shape, pre=pre))
    return run_stage("openvino", workdir.stage_folder("openvino"), key=key, force=force, build=build, start=start)
