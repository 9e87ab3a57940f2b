"""The artifact layout, and reading the stage records (export.json,
onnx.json, openvino.json)."""
import json
import os

from .errors import StageError

CARD_SHAPE = (1, 3, 1024, 2048)

# Converted model files, relative to the workdir.
MODEL_STEM = "ocrnet-hrnet-w48-paddle"
ONNX_NAME = MODEL_STEM + ".onnx"
ONNX_PATH = os.path.join("onnx", ONNX_NAME)


def ir_path(precision):
    """The IR's .xml for "FP32" or "FP16"."""
    return os.path.join("openvino", precision, MODEL_STEM + ".xml")


def converted_input_shape(workdir, required=False):
    """The static [N,C,H,W] the converted models were built for, from the
    openvino or onnx record; the model card's shape when neither exists
    (or a StageError when required)."""
    for path in (os.path.join(workdir, "openvino", "openvino.json"), os.path.join(workdir, "onnx", "onnx.json")):
        if os.path.isfile(path):
            with open(path) as fh:
                return tuple(json.load(fh)["input_shape"])
    if required:
        raise StageError(f"missing {os.path.join(workdir, 'openvino', 'openvino.json')}: run make convert first")
    return CARD_SHAPE


def export_weights(workdir):
    """The weights' provenance recorded by the export stage, or None."""
    path = os.path.join(workdir, "paddle", "export.json")
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh).get("weights")
