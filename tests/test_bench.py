"""bench command: runs every backend at a small shape and reports against the
roofline. Timing targets are checked by running the command, not here."""
import json

from tests.conftest import SMALL_SHAPE, run_cli

FLOPS_512x1024 = 324_658_293_504  # paddle.flops (MACs) of release-2.3 OCRNet-HRNet_W48


def test_bench_reports_every_backend_against_the_roofline(small_workdir):
    proc = run_cli("bench", "--workdir", str(small_workdir), "--runs", "2")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((small_workdir / "bench" / "bench.json").read_text())
    assert record["input_shape"] == [int(v) for v in SMALL_SHAPE.split(",")]
    assert sorted(record["backends"]) == sorted(["paddle-inference", "onnxruntime", "openvino-fp32-f32",
                                                 "openvino-fp32-default", "openvino-fp16-default"])
    flops = 2 * FLOPS_512x1024 * (256 * 512) / (512 * 1024)
    sgemm = record["sgemm"]["gflops"]
    assert sgemm > 1
    for name, r in record["backends"].items():
        assert len(r["steady_seconds"]) == 2 and r["first_seconds"] > 0, name
        # two runs: the median is their mean (each value rounded to 1 ms)
        assert abs(r["median_seconds"] - sum(r["steady_seconds"]) / 2) <= 1.5e-3, name
        assert abs(r["gflops"] - flops / r["median_seconds"] / 1e9) < 1e-6 * r["gflops"], name
        assert abs(r["roofline_fraction"] - r["gflops"] / sgemm) < 1e-9, name
        assert r["peak_rss_mb"] > 100, name
    # The benchmark measures Paddle's steady-state configuration (fusion on) and
    # OpenVINO f32 really at f32.
    assert record["backends"]["paddle-inference"]["info"]["fuse_residual_add"] is True
    assert record["backends"]["openvino-fp32-f32"]["info"]["effective_precision"] == "f32"
    table = (small_workdir / "bench" / "bench.md").read_text()
    for name in record["backends"]:
        assert f"| {name} |" in table


def test_bench_rejects_unknown_backend_and_wrong_shape(small_workdir):
    proc = run_cli("bench", "--workdir", str(small_workdir), "--backends", "tensorrt")
    assert proc.returncode != 0 and "unknown bench backend(s) tensorrt" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("bench", "--workdir", str(small_workdir), "--input-shape", "1,3,1024,2048")
    assert proc.returncode != 0 and "rebuild them with that --input-shape" in proc.stderr
