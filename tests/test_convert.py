"""onnx and openvino stages at the lite build's 1x3x128x256: interface, baked preprocessing, controls."""
import os
import subprocess
import sys

import numpy as np
import pytest

from converter.data.images import sample_images
from tests.support import converted_input, original_input
from tests.support import SMALL_HW, SMALL_SHAPE as SHAPE, at_build_size, lite_cli

ONNX = "onnx/ocrnet-lite.onnx"
IR32 = "openvino/FP32/ocrnet-lite.xml"
IR16 = "openvino/FP16/ocrnet-lite.xml"


def _images():
    """One sample street image and two seeded random RGB images, uint8 at the build's size."""
    rng = np.random.default_rng(123)
    height, width = SMALL_HW
    yield at_build_size(sample_images()[2])
    for _ in range(2):
        yield rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def reference_maps(lite_build):
    from converter.runners import make_runner
    runner = make_runner("paddle", str(lite_build / "paddle"))
    return [(rgb, runner.infer(original_input(rgb))["argmax_0.tmp_0"]) for rgb in _images()]


def _agreement(runner, reference_maps):
    scores = []
    for rgb, ref in reference_maps:
        out = runner.infer(converted_input(rgb))["argmax_0.tmp_0"]
        assert out.shape == ref.shape and out.dtype == np.int32
        scores.append(float((out == ref).mean()))
    return min(scores)


def test_onnx_interface_and_checker(lite_build):
    import onnx
    path = str(lite_build / ONNX)
    onnx.checker.check_model(path, full_check=True)
    model = onnx.load(path, load_external_data=False)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "x" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 128, 256]
    assert out.name == "argmax_0.tmp_0" and out.type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 128, 256]
    assert [n.op_type for n in model.graph.node[:3]] == ["Gather", "Sub", "Div"]


@pytest.mark.parametrize("ir", [IR32, IR16])
def test_ir_interface(lite_build, ir):
    import openvino as ov
    model = ov.Core().read_model(str(lite_build / ir))
    (inp,), (out,) = model.inputs, model.outputs
    assert inp.get_any_name() == "x" and inp.get_element_type() == ov.Type.f32
    assert list(inp.get_shape()) == [1, 3, 128, 256]
    assert "argmax_0.tmp_0" in out.get_names() and list(out.get_shape()) == [1, 128, 256]
    assert out.get_element_type() == ov.Type.i32


def test_onnx_with_baked_preprocessing_matches_original(lite_build, reference_maps):
    from converter.runners import make_runner
    assert _agreement(make_runner("onnxruntime", str(lite_build / ONNX)), reference_maps) >= 0.9999


def test_ir_fp32_with_baked_preprocessing_matches_original(lite_build, reference_maps):
    from converter.runners import make_runner
    runner = make_runner("openvino", str(lite_build / IR32), precision="f32")
    assert "32" in runner.info["effective_precision"]
    assert _agreement(runner, reference_maps) >= 0.9999


def _mean_zero_runner(lite_build):
    import openvino as ov
    from converter.stages.openvino import build_ir
    from tests.support import lite_config
    pre = dict(lite_config().baked(), mean=[0.0] * 3)  # the config's preprocessing, one part broken
    model = build_ir(str(lite_build / "paddle" / "model.pdmodel"), (1, 3, *SMALL_HW), pre)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    class _Runner:
        def infer(self, x):
            return {"argmax_0.tmp_0": compiled(x)[0]}
    return _Runner()


@pytest.mark.parametrize("broken", ["no-reverse", "mean-0"])
def test_negative_controls_are_detected(request, lite_build, reference_maps, broken):
    from converter.runners import make_runner
    if broken == "no-reverse":
        runner = make_runner("openvino", str(request.getfixturevalue("no_reverse_build") / IR32))
    else:
        runner = _mean_zero_runner(lite_build)
    assert _agreement(runner, reference_maps) < 0.99


def test_ir_from_onnx_equals_ir_from_paddle(lite_build, tmp_path, reference_maps):
    work = tmp_path / "w"
    work.mkdir()
    for name in ("paddle", "onnx"):
        os.symlink(lite_build / name, work / name)
    proc = lite_cli("openvino", "--workdir", str(work), "--input-shape", SHAPE, "--read-from", "onnx")
    assert proc.returncode == 0, proc.stderr
    assert "notice" not in proc.stderr
    from converter.runners import make_runner
    assert _agreement(make_runner("openvino", str(work / IR32)), reference_maps) >= 0.9999


def test_the_old_spelling_of_read_from_still_works_with_a_notice(capsys):
    """openvino --from became --read-from (fetch --from is a folder); the old spelling stays one release."""
    from converter.cli_parser import build_parser

    old = build_parser().parse_args(["openvino", "--from", "onnx"])
    assert capsys.readouterr().err == "notice: --from is now --read-from; the old spelling goes in the next release\n"
    new = build_parser().parse_args(["openvino", "--read-from", "onnx"])
    assert capsys.readouterr().err == ""
    assert old.source == new.source == "onnx"
    # no default here: the stage reads a legacy export's .pdmodel, a PIR export's ONNX (test_paddle3)
    assert build_parser().parse_args(["openvino"]).source is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["openvino", "--from", "tflite"])   # still checked against the choices


def test_guard_refuses_pip_inside_conversion():
    from converter.errors import RuntimeInstallBlocked
    from converter.util.no_install import no_runtime_installs
    with no_runtime_installs():
        assert os.environ["POLYGRAPHY_AUTOINSTALL_DEPS"] == "0"
        with pytest.raises(RuntimeInstallBlocked):
            subprocess.run([sys.executable, "-m", "pip", "install", "polygraphy"], check=False)
        with pytest.raises(RuntimeInstallBlocked):
            os.system("pip install onnxsim")
    # Outside the guard, subprocesses are not affected.
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0


def test_onnx_stage_runs_with_installers_booby_trapped(tmp_path, lite_export):
    """With a fake pip first on PATH that records any call, the stage succeeds
    and never calls it."""
    fake = tmp_path / "bin"
    fake.mkdir()
    marker = tmp_path / "pip-was-called"
    for name in ("pip", "pip3"):
        script = fake / name
        script.write_text(f"#!/bin/sh\necho \"$@\" >> {marker}\nexit 1\n")
        script.chmod(0o755)
    work = tmp_path / "w"
    work.mkdir()
    os.symlink(lite_export, work / "paddle")
    proc = lite_cli("onnx", "--workdir", str(work), "--input-shape", "1,3,64,128",
                   env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()


def test_missing_export_is_one_line_error(tmp_path):
    for stage in ("onnx", "openvino"):
        proc = lite_cli(stage, "--workdir", str(tmp_path), "--input-shape", SHAPE)
        assert proc.returncode == 8
        assert proc.stderr.strip() == f"error: missing {tmp_path}/paddle/export.json: run the export stage first (make convert)"
        assert not (tmp_path / stage).exists()


def test_bad_input_shape_is_rejected(tmp_path):
    proc = lite_cli("onnx", "--workdir", str(tmp_path), "--input-shape", "1,3,100,abc")
    assert proc.returncode == 2 and "expected N,C,H,W integers" in proc.stderr
