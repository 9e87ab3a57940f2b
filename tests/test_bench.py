"""bench command: every backend at a small shape, reported against the roofline,
and the engine held to bench's figures (bench --engine).

Timing targets are checked by running the command on the machine at hand,
not here: these tests check what is deterministic about the report (its
arithmetic, the facts of the machine, and that the exit code follows the
guards it reports)."""
import json
import os

import numpy as np
import pytest

from tests.support import SMALL_SHAPE, linked_build, lite_cli


@pytest.fixture(scope="module")
def bench_workdir(lite_build, tmp_path_factory):
    """The small build's stages, linked into a folder of its own: bench.json
    is written there, not into the build the other tests share."""
    work = linked_build(lite_build, tmp_path_factory.mktemp("bench") / "w", link=("paddle", "onnx", "openvino"))
    proc = lite_cli("bench", "--workdir", str(work), "--runs", "2", "--engine")
    assert proc.returncode in (0, 12), proc.stderr
    return work, proc


def test_bench_reports_every_backend_against_the_roofline(bench_workdir):
    work, _ = bench_workdir
    record = json.loads((work / "bench" / "bench.json").read_text())
    shape = [int(v) for v in SMALL_SHAPE.split(",")]
    assert record["input_shape"] == shape
    assert sorted(record["backends"]) == sorted(["paddle", "onnxruntime", "openvino-fp32-f32",
                                                 "openvino-fp32-default", "openvino-fp16-default"])
    # FLOPs from paddle.flops's count of multiply-accumulates at 512x1024, scaled, not from the config
    import paddle

    from converter.model import build_model
    macs = paddle.flops(build_model(19, backbone="hrnet_w18_small_v1"), [1, 3, 512, 1024], print_detail=False)
    assert abs(record["model_gflop"] - 2 * macs * (shape[2] * shape[3]) / (512 * 1024) / 1e9) < 1e-6
    assert record["sgemm"]["gflops"] > 1
    base = record["backends"]["openvino-fp32-f32"]
    for name, r in record["backends"].items():
        assert len(r["steady_seconds"]) == 2 and r["first_seconds"] > 0, name  # --runs 2, plus the first
        assert r["median_seconds"] == pytest.approx(float(np.median(r["steady_seconds"])), abs=1e-3)
        assert r["gflops"] == pytest.approx(record["model_gflop"] / r["median_seconds"])
        assert r["roofline_fraction"] == pytest.approx(r["gflops"] / record["sgemm"]["gflops"])
        assert r["speedup_over_f32_ir"] == pytest.approx(base["median_seconds"] / r["median_seconds"])
    # Every process held its model: peak RSS above the size of the weights it loaded.
    weights_mb = os.path.getsize(work / "openvino" / "FP16" / "ocrnet-lite.bin") / 2 ** 20
    assert all(r["peak_rss_mb"] > weights_mb for r in record["backends"].values())
    # Paddle runs in its steady-state configuration (fusion on); OpenVINO f32
    # really at f32, and the default precision is bf16 exactly when the CPU has it.
    assert record["backends"]["paddle"]["info"]["fuse_residual_add"] is True
    assert base["info"]["effective_precision"] == "f32"
    with open("/proc/cpuinfo") as fh:
        flags = set(next(line for line in fh if line.startswith("flags")).split(":", 1)[1].split())
    has_bf16 = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert (record["backends"]["openvino-fp32-default"]["info"]["effective_precision"] == "bf16") == has_bf16
    assert record["system"]["cpu_flags"]["avx2"] == ("avx2" in flags)
    table = (work / "bench" / "bench.md").read_text()
    for name in record["backends"]:
        assert f"| {name} |" in table
    assert "flags:" in table


def test_bench_engine_holds_the_engine_to_benchs_figures(bench_workdir):
    work, proc = bench_workdir
    record = json.loads((work / "bench" / "bench.json").read_text())
    engine = record["engine"]
    assert engine["images"] == 2 and sorted(engine["backends"]) == sorted(record["backends"])
    for name, e in engine["backends"].items():
        assert len(e["infer_seconds"]) == 2 and len(e["compare_seconds"]) == 2
        assert e["bench_median_seconds"] == record["backends"][name]["median_seconds"]
        assert e["infer_ratio"] == pytest.approx(np.mean(e["infer_seconds"]) / e["bench_median_seconds"], abs=1e-3)
    assert engine["bench_median_sum"] == pytest.approx(
        sum(r["median_seconds"] for r in record["backends"].values()), abs=1e-3)
    per_image = (engine["wall_seconds"] - engine["load_seconds"]) / 2
    assert engine["wall_per_image_without_loads"] == pytest.approx(per_image, abs=0.06)
    g = engine["guards"]
    assert g["wall"]["ratio"] == pytest.approx(engine["wall_per_image_without_loads"] / engine["bench_median_sum"],
                                               abs=1e-3)
    assert g["infer"]["worst"] == max(e["infer_ratio"] for e in engine["backends"].values())
    assert g["peak_rss"]["worst_mb"] == max(engine["peak_rss_mb"].values())
    assert engine["peak_rss_mb"]["engine worker"] > 0
    # the exit code follows the guards the report states
    assert (proc.returncode == 12) == (not all(x["met"] for x in g.values()))
    assert "The engine against bench" in (work / "bench" / "bench.md").read_text()


def test_bench_rejects_unknown_backend_and_wrong_shape(lite_build, tmp_path):
    work = linked_build(lite_build, tmp_path / "w", link=("paddle", "onnx", "openvino"))   # bench writes there
    proc = lite_cli("bench", "--workdir", str(work), "--backends", "tensorrt")
    assert proc.returncode == 2 and "invalid choice: 'tensorrt'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = lite_cli("bench", "--workdir", str(work), "--input-shape", "1,3,1024,2048")
    assert proc.returncode != 0 and "rebuild them with that --input-shape" in proc.stderr
