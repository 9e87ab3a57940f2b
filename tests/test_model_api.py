"""The model_api stage: a Softmax twin of each IR, gated against its parent."""
import json

import numpy as np
import pytest

from tests.support import SMALL_HW, at_build_size, lite_config
from converter.data.images import input_contract, prepare, sample_images
from converter.errors import ParityFailure, StageError
from converter.stages import model_api

STEM = "ocrnet-lite"


@pytest.fixture(scope="module")
def sample_input():
    config = lite_config()
    return prepare(at_build_size(sample_images()[0]), input_contract(config, "converted"))


def _infer(xml_or_model, x, extra_logits=False):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(xml_or_model) if isinstance(xml_or_model, str) else xml_or_model
    if extra_logits:
        model.add_outputs([model_api.logits_of(model)])
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled.create_infer_request().infer({0: x})
    return [out[o] for o in compiled.outputs]


def test_the_flavour_is_the_softmax_of_its_parents_logits(lite_build, sample_input):
    record = json.loads((lite_build / "openvino" / "model_api" / "model_api.json").read_text())
    assert sorted(record["files"]) == ["FP16", "FP32"]
    assert record["output"] == {"name": "probabilities", "shape": [1, 19, 128, 256], "dtype": "float32"}
    for precision in ("FP32", "FP16"):
        assert record["check"]["results"][precision]["agreement_min"] == 1.0
        assert record["check"]["results"][precision]["max_probability_error"] < 1e-6
        classes, logits = _infer(str(lite_build / "openvino" / precision / f"{STEM}.xml"), sample_input, True)
        (probs,) = _infer(str(lite_build / "openvino" / "model_api" / precision / f"{STEM}.xml"), sample_input)
        # numpy's softmax of the parent's logits, computed here
        shifted = np.exp(logits - logits.max(1, keepdims=True))
        expected = shifted / shifted.sum(1, keepdims=True)
        assert probs.shape == (1, 19, *SMALL_HW)
        np.testing.assert_allclose(probs, expected, atol=1e-5)
        assert (probs.argmax(1) == classes).all()


def _twin(parent_xml, tail):
    """A flavour built by hand with another tail, for the negative controls."""
    import openvino as ov
    from openvino import opset13 as ops

    model = ov.Core().read_model(parent_xml)
    node = tail(ops, model_api.logits_of(model))
    return ov.Model([ops.result(node)], model.get_parameters())


@pytest.mark.parametrize("tail, why", [
    (lambda ops, logits: ops.softmax(logits, 3), "disagrees"),           # over the width, not the classes
    (lambda ops, logits: logits, "not per-class probabilities"),          # scores, argmax intact
    (lambda ops, logits: ops.softmax(ops.multiply(logits, ops.constant(np.float32(-1))), 1), "disagrees"),
    # argmax intact, the probabilities 1 % too sharp: only the comparison with the Softmax trips
    (lambda ops, logits: ops.softmax(ops.multiply(logits, ops.constant(np.float32(1.01))), 1), "differ from the Softmax"),
])
def test_the_check_trips_on_a_wrong_tail(lite_build, sample_input, tail, why):
    config = lite_config()
    parent = str(lite_build / "openvino" / "FP32" / f"{STEM}.xml")
    # the control, the stage's own tail passing the same check on this parent, is
    # the stage's record (test_the_flavour_is_the_softmax_of_its_parents_logits)
    with pytest.raises(ParityFailure, match=why):
        model_api.check(config, parent, _twin(parent, tail), [sample_input])


def test_an_ir_without_an_argmax_is_refused(lite_build):
    import openvino as ov

    flavour = ov.Core().read_model(str(lite_build / "openvino" / "model_api" / "FP32" / f"{STEM}.xml"))
    with pytest.raises(StageError, match="does not end in an ArgMax"):
        model_api.logits_of(flavour)


def _scaled_parent(parent_xml, factor, path):
    """The parent IR with its class scores multiplied by factor before the
    ArgMax: factor 1e-13 gives the all-tie scores of untrained weights."""
    import openvino as ov
    from openvino import opset13 as ops

    model = ov.Core().read_model(parent_xml)
    logits = model_api.logits_of(model)
    argmax = next(iter(logits.get_target_inputs()))
    argmax.replace_source_output(ops.multiply(logits, ops.constant(np.float32(factor))).output(0))
    ov.save_model(model, str(path), compress_to_fp16=False)
    return str(path)


def test_a_flavour_of_all_tie_scores_passes_on_its_probabilities(lite_build, sample_input, tmp_path):
    config = lite_config()
    parent = _scaled_parent(str(lite_build / "openvino" / "FP32" / f"{STEM}.xml"), 1e-13, tmp_path / "tie.xml")
    good = model_api.make_flavour(__import__("openvino").Core().read_model(parent), "p", {})
    figures = model_api.check(config, parent, good, [sample_input])
    # the argmax among equal probabilities is the first class: most pixels
    # differ from the parent's map, each of them a tie
    assert figures["agreement_min"] < config.min_agreement
    assert figures["max_flip_margin"] < 1e-11 and figures["max_probability_error"] < 1e-6
    # negative control: the same parent, a flavour ending in the Softmax of the unscaled scores
    with pytest.raises(ParityFailure, match="differ from the Softmax"):
        model_api.check(config, parent, _twin(parent, lambda ops, z: ops.softmax(
            ops.multiply(z, ops.constant(np.float32(1e13))), 1)), [sample_input])
