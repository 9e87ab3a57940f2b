"""validate: one engine over image sets, local and on real Ray, resumable and bounded."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, run_cli

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
    return run_cli("validate", "--workdir", str(workdir), "--cityscapes", str(data), "--output", str(out),
                   "--backends", *BACKENDS, *extra, env=env)


@pytest.fixture(scope="module")
def local_run(small_workdir, labelled, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    proc = _validate(small_workdir, labelled, out, "--workers", "2")   # two hosts: the backends split
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
        assert e["pixels"] == 4 * 256 * 512
        assert 0.9 < e["agreement"] <= 1.0
        assert e["ground_truth"]["miou"] is not None and e["task"]["miou_drop"] is not None
        assert len(e["ground_truth"]["per_class_iou"]) == 19
    # f32 backends agree with the original up to near-ties; bf16 only mostly (synthetic weights' near-ties)
    assert m["backends"]["openvino-fp32-f32"]["agreement"] > 0.9999
    assert m["backends"]["openvino-fp16-default"]["agreement"] < m["backends"]["openvino-fp32-f32"]["agreement"]
    assert doc["run"]["computed"] == 4 and doc["run"]["reused"] == 0
    assert len(doc["run"]["hosts"]) == 2 and sorted(sum(doc["run"]["groups"], [])) == sorted(BACKENDS + ("paddle",))
    assert set(doc["timing"]) == set(BACKENDS) | {"paddle"}
    # not a terminal: progress is JSON lines
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith('{"event"')]
    assert events and events[-1]["done"] == 4 and events[-1]["total"] == 4
    assert "| openvino-fp16-default |" in (out / "validate.md").read_text()


def test_per_image_results_stay_small(local_run):
    out, _ = local_run
    files = list((out / "images").iterdir())
    assert len([f for f in files if f.suffix == ".json"]) == 4
    assert not [f for f in files if f.suffix == ".npy"]
    assert max(f.stat().st_size for f in files) < 2 << 20
    assert sum(f.stat().st_size for f in files) < 4 << 20


def test_a_rerun_reuses_every_image_and_reproduces_the_metrics(small_workdir, labelled, local_run):
    out, _ = local_run
    before = _doc(out)
    proc = _validate(small_workdir, labelled, out)
    assert proc.returncode == 0, proc.stderr
    after = _doc(out)
    assert after["run"]["reused"] == 4 and after["run"]["computed"] == 0
    assert after["metrics"] == before["metrics"] and after["timing"] == before["timing"]


def test_ray_executor_gives_the_local_metrics(small_workdir, labelled, local_run, tmp_path):
    proc = _validate(small_workdir, labelled, tmp_path, "--executor", "ray", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    doc = _doc(tmp_path)
    assert doc["run"]["executor"] == "ray" and doc["run"]["computed"] == 4
    assert len(doc["run"]["hosts"]) == 2 and doc["run"]["lanes"] == 1
    assert doc["metrics"] == _doc(local_run[0])["metrics"]


def test_a_ray_worker_that_dies_is_retried_and_the_run_completes(small_workdir, labelled, local_run, tmp_path):
    marker = tmp_path / "crashed"
    proc = _validate(small_workdir, labelled, tmp_path / "out", "--executor", "ray", "--limit", "2",
                     env={"OCRNET_VALIDATE_CRASH_ONCE": str(marker)})
    assert proc.returncode == 0, proc.stderr
    assert marker.exists(), "the fault was not injected: this test would prove nothing"
    crashed_pid = int(marker.read_text())
    doc = _doc(tmp_path / "out")
    assert doc["run"]["computed"] == 2
    assert crashed_pid not in [h["pid"] for h in doc["run"]["hosts"]]   # a restarted actor finished the work
    local = _doc(local_run[0])["metrics"]["backends"]
    two = {r: json.loads(p.read_text()) for r, p in ((p.stem, p) for p in (tmp_path / "out" / "images").glob("*.json"))}
    assert len(two) == 2
    for name in BACKENDS:   # per-image results equal the local run's for the same images
        for key, result in two.items():
            local_result = json.loads((local_run[0] / "images" / f"{key}.json").read_text())
            assert result["backends"][name]["compare"] == local_result["backends"][name]["compare"]
    assert local  # the control run exists


def test_a_local_worker_that_dies_is_one_error_line_and_the_rerun_resumes(small_workdir, labelled, tmp_path):
    marker = tmp_path / "crashed"
    out = tmp_path / "out"
    proc = _validate(small_workdir, labelled, out, "--limit", "2", env={"OCRNET_VALIDATE_CRASH_ONCE": str(marker)})
    assert proc.returncode == 8, proc.stderr
    assert marker.exists() and len(proc.stderr.strip().splitlines()[-1:]) == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: local worker")
    proc = _validate(small_workdir, labelled, out, "--limit", "2")
    assert proc.returncode == 0, proc.stderr
    assert _doc(out)["run"]["computed"] + _doc(out)["run"]["reused"] == 2


def test_a_killed_run_resumes_with_only_the_missing_images(small_workdir, labelled, local_run, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "converter", "validate", "--workdir", str(small_workdir), "--cityscapes",
           str(labelled), "--output", str(out), "--backends", *BACKENDS]
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


def test_validate_joins_a_running_ray_cluster(small_workdir, labelled, local_run, tmp_path):
    port = _free_port()
    env = dict(os.environ)
    start = subprocess.run([RAY, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                            "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                           capture_output=True, text=True, env=env, timeout=180)
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        proc = _validate(small_workdir, labelled, tmp_path, "--executor", "ray", "--ray-address",
                         f"127.0.0.1:{port}", "--limit", "2")
        assert proc.returncode == 0, proc.stderr
        doc = _doc(tmp_path)
        assert doc["run"]["executor"] == "ray" and doc["run"]["computed"] == 2
        # the cluster outlives the run that joined it (ray start found a token: auth is on)
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
])
def test_bad_validate_arguments_are_one_line_errors(small_workdir, tmp_path, args, code, fragment):
    proc = run_cli("validate", "--workdir", str(small_workdir), "--output", str(tmp_path / "o"), *args)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error:") and fragment in proc.stderr


def test_a_corrupt_image_is_one_error_line(small_workdir, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    proc = run_cli("validate", "--workdir", str(small_workdir), "--output", str(tmp_path / "o"),
                   "--images", str(bad), "--backends", "openvino-fp32-f32")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "bad.png" in proc.stderr
    assert not (tmp_path / "o" / "validate.json").exists()
    # a readable header with a truncated body fails in the worker: still one error line, the last
    from PIL import Image
    good = tmp_path / "cut.png"
    Image.new("RGB", (64, 32), (90, 120, 30)).save(good)
    good.write_bytes(good.read_bytes()[:60])
    proc = run_cli("validate", "--workdir", str(small_workdir), "--output", str(tmp_path / "o"),
                   "--images", str(good), "--backends", "openvino-fp32-f32")
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith('{"event"')]
    assert len(errors) == 1 and errors[0].startswith("error:") and "cut.png" in errors[0], proc.stderr


def test_a_damaged_stored_result_is_recomputed_not_trusted(small_workdir, labelled, local_run, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(local_run[0], out)
    victim = sorted((out / "images").glob("*.json"))[0]
    result = json.loads(victim.read_text())
    result["backends"]["onnxruntime"]["compare"]["agreement"] = "all of it"   # a field of the wrong type
    victim.write_text(json.dumps(result))
    proc = _validate(small_workdir, labelled, out)
    assert proc.returncode == 0, proc.stderr
    doc = _doc(out)
    assert (doc["run"]["reused"], doc["run"]["computed"]) == (3, 1)
    assert doc["metrics"] == _doc(local_run[0])["metrics"]
