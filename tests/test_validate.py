"""validate: one engine over image sets, local and on real Ray, resumable and bounded."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.support import ROOT, at_build_size, converted_input, lite_cli, lite_command, original_input, run_cli

TOOLS = os.path.join(ROOT, "tools")
BACKENDS = ("onnxruntime", "openvino-fp32-f32", "openvino-fp16-default")
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Four generated street scenes with labels, in the Cityscapes layout."""
    root = tmp_path_factory.mktemp("labelled")
    proc = subprocess.run([sys.executable, os.path.join(TOOLS, "make_samples.py"), "--output", str(root),
                           "--seeds", "100", "101", "102", "103", "--split", "val"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return root


def _validate(workdir, data, out, *extra, env=None):
    return lite_cli("validate", "--workdir", str(workdir), "--cityscapes", str(data), "--output", str(out),
                   "--backends", *BACKENDS, *extra, env=env)


@pytest.fixture(scope="module")
def local_run(lite_build, labelled, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    # two workers, two images a chunk: each worker takes one chunk
    proc = _validate(lite_build, labelled, out, "--workers", "2", "--chunk", "2")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def _doc(out):
    return json.loads((out / "validate.json").read_text())


def test_local_run_reports_every_backend_with_ground_truth(local_run):
    out, proc = local_run
    doc = _doc(out)
    m = doc["metrics"]
    assert m["images"] == 4 and m["labelled"] and m["passed"]
    assert sorted(m["backends"]) == sorted(BACKENDS)
    for name in BACKENDS:
        e = m["backends"][name]
        assert e["pixels"] == 4 * 128 * 256
        assert 0.9 < e["agreement"] <= 1.0
        assert len(e["ground_truth"]["per_class_iou"]) == 19
    # f32 backends agree with the original up to near-ties; bf16 (where the CPU has it) only mostly
    assert m["backends"]["openvino-fp32-f32"]["agreement"] > 0.9999
    run = doc["run"]
    assert run["computed"] == 4 and run["reused"] == 0 and run["chunk"] == 2
    # two workers, each loaded every backend in turn for its one chunk
    assert len(run["hosts"]) == 2 and len({h["pid"] for h in run["hosts"]}) == 2
    for host in run["hosts"]:
        assert sorted(host["load_seconds"]) == sorted(BACKENDS + ("paddle",))
    assert set(doc["timing"]) == set(BACKENDS) | {"paddle"}
    # not a terminal: progress is JSON lines
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith('{"event"')]
    assert events and events[-1]["done"] == 4 and events[-1]["total"] == 4
    assert "| openvino-fp16-default |" in (out / "validate.md").read_text()


def test_per_image_results_stay_small_and_sealed(local_run):
    out, _ = local_run
    files = list((out / "images").iterdir())
    results = [json.loads(f.read_text()) for f in files if f.suffix == ".json"]
    assert len(results) == 4 and all(len(r["seal"]) == 64 for r in results)
    assert not [f for f in files if f.suffix == ".npy"]
    assert max(f.stat().st_size for f in files) < 2 << 20
    assert sum(f.stat().st_size for f in files) < 4 << 20
    assert not any("path" in r or "id" in r for r in results)   # the current run's, never stored


def test_ground_truth_metrics_equal_an_independent_count(lite_build, tmp_path):
    """Labels made from the original's own maps with known damage: the
    original's IoU against them is known exactly, and each backend's is
    counted here from that backend's own maps, pixel by pixel."""
    from converter.data.images import sample_images
    from converter.runners import make_runner
    from tests.labelled import TRAIN_TO_LABEL, expected, write_dataset

    rgbs = {("aachen", f"aachen_00000{i}_000019"): at_build_size(p)
            for i, p in enumerate(sample_images())}
    runners = {"paddle": (make_runner("paddle", str(lite_build / "paddle")), original_input),
               "openvino-fp32-f32": (make_runner("openvino", str(lite_build / "openvino" / "FP32" /
                                                                  "ocrnet-lite.xml")), converted_input)}
    preds = {name: {k: r.infer(prep(rgb))["argmax_0.tmp_0"][0] for k, rgb in rgbs.items()}
             for name, (r, prep) in runners.items()}

    def damage(label):
        label = label.copy()
        label[20:60, 40:200] = 7      # a block relabelled road
        label[100:120, :] = 0         # unlabeled: ignored
        label[200:210, 300:400] = 26  # a strip of car
        return label
    root = tmp_path / "set"
    write_dataset(root, {k: (rgb, preds["paddle"][k]) for k, rgb in rgbs.items()}, damage)
    gts = [damage(np.vectorize(TRAIN_TO_LABEL.get)(preds["paddle"][k]).astype(np.uint8)) for k in rgbs]
    proc = lite_cli("validate", "--workdir", str(lite_build), "--cityscapes", str(root), "--output",
                   str(tmp_path / "out"), "--backends", "openvino-fp32-f32")
    assert proc.returncode == 0, proc.stderr
    m = _doc(tmp_path / "out")["metrics"]
    from tests.support import lite_config
    names = lite_config().class_names
    for name, got in (("paddle", m["reference"]["ground_truth"]),
                      ("openvino-fp32-f32", m["backends"]["openvino-fp32-f32"]["ground_truth"])):
        iou, miou, accuracy = expected([preds[name][k] for k in rgbs], gts)
        assert miou < 0.99   # the damage shows
        assert got["miou"] == pytest.approx(miou, abs=2e-4), name
        assert got["pixel_accuracy"] == pytest.approx(accuracy, abs=2e-4), name
        for c, cls in enumerate(names):
            if iou[c] is not None and iou[c] > 0:
                assert got["per_class_iou"][cls] == pytest.approx(iou[c], abs=2e-3), (name, cls)
    task = m["backends"]["openvino-fp32-f32"]["task"]
    ref_miou = expected([preds["paddle"][k] for k in rgbs], gts)[1]
    ir_miou = expected([preds["openvino-fp32-f32"][k] for k in rgbs], gts)[1]
    assert task["miou_drop"] == pytest.approx(ref_miou - ir_miou, abs=2e-4)


def test_a_rerun_reuses_every_image_and_reproduces_the_metrics(lite_build, labelled, local_run):
    out, _ = local_run
    before = _doc(out)
    proc = _validate(lite_build, labelled, out)
    assert proc.returncode == 0, proc.stderr
    after = _doc(out)
    assert after["run"]["reused"] == 4 and after["run"]["computed"] == 0 and after["run"]["hosts"] == []
    assert after["metrics"] == before["metrics"] and after["timing"] == before["timing"]


@pytest.mark.slow   # Ray
def test_ray_executor_gives_the_local_metrics(lite_build, labelled, local_run, tmp_path):
    proc = _validate(lite_build, labelled, tmp_path, "--executor", "ray", "--workers", "2", "--chunk", "2")
    assert proc.returncode == 0, proc.stderr
    doc = _doc(tmp_path)
    assert doc["run"]["executor"] == "ray" and doc["run"]["computed"] == 4
    assert len(doc["run"]["hosts"]) == 2
    assert doc["metrics"] == _doc(local_run[0])["metrics"]


def _faulty(workdir, data, out, marker, *extra):
    """validate through the library with a host that kills itself once (the
    engine takes a host class only from code: tests/faulty_hosts.py)."""
    env = dict(os.environ, FAULTY_HOST_MARKER=str(marker))
    return subprocess.run([sys.executable, "-m", "tests.faulty_hosts", str(workdir), str(data), str(out), *extra],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)


@pytest.mark.slow   # Ray
def test_a_ray_worker_that_dies_is_restarted_and_its_chunk_redone(lite_build, labelled, local_run, tmp_path):
    marker = tmp_path / "crashed"
    proc = _faulty(lite_build, labelled, tmp_path / "out", marker, "ray")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert marker.exists(), "the fault was not injected: this test would prove nothing"
    crashed_pid = int(marker.read_text())
    doc = _doc(tmp_path / "out")
    assert doc["run"]["computed"] == 2
    assert crashed_pid not in [h["pid"] for h in doc["run"]["hosts"]]   # a restarted actor finished the work
    stored = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out" / "images").glob("*.json")}
    assert len(stored) == 2
    for key, result in stored.items():   # per-image results equal the local run's for the same images
        local_result = json.loads((local_run[0] / "images" / f"{key}.json").read_text())
        for name in BACKENDS:
            assert result["backends"][name]["compare"] == local_result["backends"][name]["compare"]


def test_a_local_worker_that_dies_is_one_error_line_and_the_rerun_resumes(lite_build, labelled, tmp_path):
    marker, out = tmp_path / "crashed", tmp_path / "out"
    proc = _faulty(lite_build, labelled, out, marker, "local")
    assert marker.exists()
    assert proc.returncode == 8, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [proc.stderr.strip().splitlines()[-1]], proc.stderr
    assert errors[0].startswith("error: local worker 0 died (exit 17)")
    proc = _validate(lite_build, labelled, out, "--limit", "2")
    assert proc.returncode == 0, proc.stderr
    assert _doc(out)["run"]["computed"] == 2


def test_a_killed_run_resumes_with_only_the_missing_images(lite_build, labelled, local_run, tmp_path):
    out = tmp_path / "out"
    cmd = lite_command("validate", "--workdir", str(lite_build), "--cityscapes",
           str(labelled), "--output", str(out), "--backends", *BACKENDS, "--chunk", "1")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "images").glob("*.json")) if (out / "images").is_dir() else []) < 2:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = len(list((out / "images").glob("*.json")))
    assert 2 <= done < 4, f"{done} images were done when the driver was killed; the test needs some left"
    proc = run_cli(*cmd[3:])
    assert proc.returncode == 0, proc.stderr
    doc = _doc(out)
    assert (doc["run"]["reused"], doc["run"]["computed"]) == (done, 4 - done)
    assert doc["metrics"] == _doc(local_run[0])["metrics"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow   # Ray
def test_validate_joins_a_running_ray_cluster(lite_build, labelled, local_run, tmp_path):
    port = _free_port()
    start = subprocess.run([RAY, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                            "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                           capture_output=True, text=True, timeout=180)
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        proc = _validate(lite_build, labelled, tmp_path, "--executor", "ray", "--ray-address",
                         f"127.0.0.1:{port}", "--limit", "2")
        assert proc.returncode == 0, proc.stderr
        doc = _doc(tmp_path)
        assert doc["run"]["executor"] == "ray" and doc["run"]["computed"] == 2
        # more CPUs than the cluster has: refused at once, not left pending
        proc = _validate(lite_build, labelled, tmp_path / "more", "--executor", "ray", "--ray-address",
                         f"127.0.0.1:{port}", "--limit", "2", "--workers", "2", "--threads", "2", "--chunk", "1")
        assert proc.returncode == 2 and "the Ray cluster has 2" in proc.stderr, proc.stderr
        # the cluster outlives the runs that joined it (ray start found a token: auth is on)
        probe = ("import ray; ray.init(address='127.0.0.1:%d', log_to_driver=False); "
                 "print(int(ray.cluster_resources()['CPU']))" % port)
        status = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                                env=dict(os.environ, RAY_AUTH_MODE="token" if os.path.isfile(
                                    os.path.expanduser("~/.ray/auth_token")) else "disabled"))
        assert status.returncode == 0 and status.stdout.strip().endswith("2"), status.stderr[-2000:]
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


@pytest.mark.parametrize("args, code, fragment", [
    (("--images", "missing.png"), 2, "not found"),
    (("--images", "converter/samples", "--ray-address", "127.0.0.1:1"), 2, "--ray-address goes with"),
    # an unreachable head: one line at once, not minutes of Ray retrying
    (("--images", "converter/samples", "--executor", "ray", "--ray-address", "127.0.0.1:1"), 2, "cannot reach"),
    (("--images", "converter/samples", "--executor", "ray", "--ray-address", "nonsense"), 2, "expected HOST:PORT"),
    (("--images", "converter/samples", "--workers", "3"), 2, "more than the"),
    (("--images", "converter/samples", "--threads", "100000"), 2, "more than the"),
])
def test_bad_validate_arguments_are_one_line_errors(lite_build, tmp_path, args, code, fragment):
    proc = lite_cli("validate", "--workdir", str(lite_build), "--output", str(tmp_path / "o"), *args)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error:") and fragment in proc.stderr


def test_a_corrupt_image_is_one_error_line(lite_build, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    proc = lite_cli("validate", "--workdir", str(lite_build), "--output", str(tmp_path / "o"),
                   "--images", str(bad), "--backends", "openvino-fp32-f32")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "bad.png" in proc.stderr
    assert not (tmp_path / "o" / "validate.json").exists()


def test_a_damaged_stored_result_is_recomputed_not_trusted(lite_build, labelled, local_run, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(local_run[0], out)
    victim = sorted((out / "images").glob("*.json"))[0]
    result = json.loads(victim.read_text())
    result["backends"]["onnxruntime"]["compare"]["agreement"] = "all of it"   # a field of the wrong type
    victim.write_text(json.dumps(result))
    proc = _validate(lite_build, labelled, out)
    assert proc.returncode == 0, proc.stderr
    doc = _doc(out)
    assert (doc["run"]["reused"], doc["run"]["computed"], doc["run"]["refused_stored"]) == (3, 1, 1)
    assert doc["metrics"] == _doc(local_run[0])["metrics"]


def test_a_local_worker_has_its_thread_count_from_its_first_instruction(monkeypatch):
    """OMP_NUM_THREADS is in the worker's environment when it starts, not
    set once it runs: numpy's thread pool starts while the worker class is
    unpickled (bench timed backends in such workers). The parent's own value
    is put back."""
    from converter.engine.executors import LocalExecutor
    from tests.env_worker import EnvWorker

    monkeypatch.setenv("OMP_NUM_THREADS", "7")   # what the worker would inherit without the executor's setting
    executor = LocalExecutor([{"threads": 3}], EnvWorker)
    try:
        handle = executor.submit(0, "describe")
        answers = dict(executor.wait())
        while handle not in answers:
            answers.update(executor.wait())
    finally:
        executor.close()
    assert answers[handle] == {"omp_num_threads_at_import": "3"}
    assert os.environ["OMP_NUM_THREADS"] == "7"
