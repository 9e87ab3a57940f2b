"""bench command: runs every backend at a small shape and reports against the
roofline. Timing targets are checked by running the command, not here; this
checks that what it reports agrees with facts measured independently."""
import json
import os
import time

import numpy as np

from tests.conftest import SMALL_SHAPE, converted_input, run_cli


def test_bench_reports_every_backend_against_the_roofline(small_workdir, fixture_state):
    proc = run_cli("bench", "--workdir", str(small_workdir), "--runs", "2")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((small_workdir / "bench" / "bench.json").read_text())
    shape = [int(v) for v in SMALL_SHAPE.split(",")]
    assert record["input_shape"] == shape
    assert sorted(record["backends"]) == sorted(["paddle", "onnxruntime", "openvino-fp32-f32",
                                                 "openvino-fp32-default", "openvino-fp16-default"])
    # FLOPs from the fixture's paddle.flops count (multiply-accumulates at 512x1024), not from the config.
    macs = fixture_state["paddle_flops"]["1x3x512x1024"]
    assert abs(record["model_gflop"] - 2 * macs * (256 * 512) / (512 * 1024) / 1e9) < 1e-6
    assert record["sgemm"]["gflops"] > 1
    for name, r in record["backends"].items():
        assert len(r["steady_seconds"]) == 2 and r["first_seconds"] > 0, name  # --runs 2, plus the first
    # The latency reported for ONNX Runtime agrees with one timed here, in this process.
    from converter.runners import make_runner
    from converter.data.images import load_rgb, resize_rgb, sample_images
    runner = make_runner("onnxruntime", str(small_workdir / "onnx" / "ocrnet-hrnet-w48-paddle.onnx"))
    x = converted_input(resize_rgb(load_rgb(sample_images()[0]), shape[3], shape[2]))
    runner.infer(x)
    start = time.perf_counter()
    runner.infer(x)
    mine = time.perf_counter() - start
    assert mine / 3 < record["backends"]["onnxruntime"]["median_seconds"] < mine * 3
    # Every process held its model: peak RSS above the size of the weights it loaded.
    weights_mb = os.path.getsize(small_workdir / "openvino" / "FP16" / "ocrnet-hrnet-w48-paddle.bin") / 2 ** 20
    assert all(r["peak_rss_mb"] > weights_mb for r in record["backends"].values())
    # Paddle runs in its steady-state configuration (fusion on); OpenVINO f32
    # really at f32, and the default precision is bf16 exactly when the CPU has it.
    assert record["backends"]["paddle"]["info"]["fuse_residual_add"] is True
    assert record["backends"]["openvino-fp32-f32"]["info"]["effective_precision"] == "f32"
    with open("/proc/cpuinfo") as fh:
        flags = set(next(line for line in fh if line.startswith("flags")).split(":", 1)[1].split())
    has_bf16 = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert (record["backends"]["openvino-fp32-default"]["info"]["effective_precision"] == "bf16") == has_bf16
    table = (small_workdir / "bench" / "bench.md").read_text()
    for name in record["backends"]:
        assert f"| {name} |" in table
    assert np.isfinite([r["roofline_fraction"] for r in record["backends"].values()]).all()


def test_bench_rejects_unknown_backend_and_wrong_shape(small_workdir):
    proc = run_cli("bench", "--workdir", str(small_workdir), "--backends", "tensorrt")
    assert proc.returncode == 2 and "invalid choice: 'tensorrt'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("bench", "--workdir", str(small_workdir), "--input-shape", "1,3,1024,2048")
    assert proc.returncode != 0 and "rebuild them with that --input-shape" in proc.stderr
