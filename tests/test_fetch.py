"""fetch against a local faulty HTTP server: every fault ends verified or in a clear error."""
import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from converter.stages import fetch
from converter.config import DEFAULT_CONFIG, load_config
from converter.errors import ChecksumError, FetchError
from tests.support import ROOT, run_cli
from tests.faulty_server import FaultyServer

BIG = "model.pdparams"


def _blob(size, seed):
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


@pytest.fixture
def files():
    return {BIG: _blob(600_000, 1), "small.yml": b"model: ocrnet\n" * 10}


def write_config(tmp_path, files, base_url):
    with open(DEFAULT_CONFIG) as fh:
        raw = yaml.safe_load(fh)
    raw["files"] = [{"name": n, "size": len(b), "sha384": hashlib.sha384(b).hexdigest(),
                     "source": f"{base_url}/files/{n}", "role": "checkpoint" if n == BIG else "training-config"}
                    for n, b in files.items()]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def fetch_cli(config, out, cache, *extra, timeout=120):
    return run_cli("fetch", "--config", config, "--output", str(out), "--cache-dir", str(cache),
                   "--json", "--retries", "3", "--read-timeout", "1", "--connect-timeout", "1", *extra,
                   timeout=timeout)


def summary(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_one_line_error(proc, code, *fragments):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_clean_download_is_verified_and_cached(tmp_path, files):
    with FaultyServer(files) as srv:
        cfg = write_config(tmp_path, files, srv.url)
        proc = fetch_cli(cfg, tmp_path / "out", tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    for name, data in files.items():
        assert (tmp_path / "out" / name).read_bytes() == data
        sha = hashlib.sha384(data).hexdigest()
        assert (tmp_path / "cache" / "sha384" / sha[:2] / sha).read_bytes() == data
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {"start", "progress", "done", "summary"} <= {e["event"] for e in events}
    assert all(r["source"] == "download" for r in summary(proc)["files"])


@pytest.mark.parametrize("fault", ["truncate", "reset", "500x2", "429once", "trickle", "badlength"])
def test_transient_faults_recover_within_the_run(tmp_path, files, fault):
    with FaultyServer(files, {BIG: fault}) as srv:
        srv.stall_seconds = 2.5
        cfg = write_config(tmp_path, files, srv.url)
        proc = fetch_cli(cfg, tmp_path / "out", tmp_path / "cache")
        requests = [r for r in srv.requests if r[0] == BIG]
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / BIG).read_bytes() == files[BIG]
    assert not (tmp_path / "out" / (BIG + ".part")).exists()
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert any(e["event"] == "retry" for e in events)
    if fault in ("truncate", "trickle", "badlength"):
        # resumed with a Range request rather than starting over
        assert requests[-1][1] is not None and requests[-1][1].startswith("bytes=")
    if fault in ("truncate", "reset", "trickle"):
        # (after an RST the kernel may drop bytes already received, so a reset
        # may resume from 0; either way no byte is fetched twice into the file)
        assert summary(proc)["files"][0]["bytes_transferred"] == len(files[BIG])
    if fault == "500x2":
        assert len(requests) == 3


def test_404_is_one_line_error_and_nothing_written(tmp_path, files):
    with FaultyServer(files, {BIG: "404"}) as srv:
        cfg = write_config(tmp_path, files, srv.url)
        proc = fetch_cli(cfg, tmp_path / "out", tmp_path / "cache")
    assert_one_line_error(proc, 4, "HTTP 404", "/files/model.pdparams")
    assert not (tmp_path / "out" / BIG).exists() and not (tmp_path / "out" / (BIG + ".part")).exists()


def test_wrong_bytes_fail_checksum_and_are_deleted(tmp_path, files):
    with FaultyServer(files, {BIG: "wrong"}) as srv:
        cfg = write_config(tmp_path, files, srv.url)
        proc = fetch_cli(cfg, tmp_path / "out", tmp_path / "cache")
    expected = hashlib.sha384(files[BIG]).hexdigest()
    got = hashlib.sha384(bytes((b + 1) % 256 for b in files[BIG])).hexdigest()
    assert_one_line_error(proc, 5, f"expected {expected}, got {got}", "deleted")
    assert not (tmp_path / "out" / BIG).exists() and not (tmp_path / "out" / (BIG + ".part")).exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob(expected))


def test_size_mismatch_is_reported(tmp_path, files):
    served = dict(files, **{BIG: files[BIG][:-10]})
    with FaultyServer(served) as srv:
        cfg = write_config(tmp_path, files, srv.url)
        proc = fetch_cli(cfg, tmp_path / "out", tmp_path / "cache")
    assert_one_line_error(proc, 5, f"size mismatch for {BIG}: expected {len(files[BIG])} bytes, got {len(files[BIG]) - 10}")
    assert not (tmp_path / "out" / BIG).exists()


@pytest.mark.parametrize("part_content", ["prefix", "garbage"])
def test_server_ignoring_range_restarts_correctly(tmp_path, files, part_content):
    out = tmp_path / "out"
    out.mkdir()
    half = len(files[BIG]) // 2
    (out / (BIG + ".part")).write_bytes(files[BIG][:half] if part_content == "prefix" else b"\0" * half)
    with FaultyServer(files, {BIG: "norange"}) as srv:
        cfg = write_config(tmp_path, files, srv.url)
        proc = fetch_cli(cfg, out, tmp_path / "cache")
        big_requests = [r for r in srv.requests if r[0] == BIG]
    assert proc.returncode == 0, proc.stderr
    assert big_requests[0][1] == f"bytes={half}-"  # we did ask to resume
    assert (out / BIG).read_bytes() == files[BIG]


def test_resume_across_runs_after_sigkill(tmp_path):
    data = _blob(6_000_000, 2)
    files = {BIG: data}
    out, cache = tmp_path / "out", tmp_path / "cache"
    with FaultyServer(files, {BIG: "slow"}) as srv:
        srv.slow_pause = 0.05
        cfg = write_config(tmp_path, files, srv.url)
        cmd = [sys.executable, "-m", "converter", "fetch", "--config", cfg, "--output", str(out),
               "--cache-dir", str(cache), "--quiet"]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        part = out / (BIG + ".part")
        deadline = time.time() + 60
        while time.time() < deadline and (not part.exists() or part.stat().st_size < 1_000_000):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kept = part.stat().st_size
        assert 1_000_000 <= kept < len(data)
        assert not (out / BIG).exists()  # nothing unverified at the final path
        srv.faults[BIG] = "ok"
        second = fetch_cli(cfg, out, cache)
    assert second.returncode == 0, second.stderr
    assert (out / BIG).read_bytes() == data
    transferred = summary(second)["files"][0]["bytes_transferred"]
    assert transferred < len(data) and transferred == len(data) - kept


def test_second_fetch_comes_from_cache_with_server_stopped(tmp_path, files):
    with FaultyServer(files) as srv:
        cfg = write_config(tmp_path, files, srv.url)
        assert fetch_cli(cfg, tmp_path / "one", tmp_path / "cache").returncode == 0
    proc = fetch_cli(cfg, tmp_path / "two", tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert all(r["source"] == "cache" for r in summary(proc)["files"])
    assert (tmp_path / "two" / BIG).read_bytes() == files[BIG]


def test_stalling_server_fails_with_timeout_message(tmp_path, files):
    with FaultyServer(files, {BIG: "stall"}) as srv:
        srv.stall_seconds = 2.0
        cfg = write_config(tmp_path, files, srv.url)
        start = time.time()
        proc = fetch_cli(cfg, tmp_path / "out", tmp_path / "cache", "--retries", "1")
    assert_one_line_error(proc, 4, "timed out", "giving up on model.pdparams")
    assert "no network" not in proc.stderr  # the server was reached; it is not a network outage
    assert time.time() - start < 30
    assert not (tmp_path / "out" / BIG).exists()


def test_unroutable_address_fails_within_timeout_with_no_network_hint(tmp_path, files):
    """A listener whose accept queue is full drops SYNs, like an unroutable host."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    time.sleep(0.2)
    try:
        cfg = write_config(tmp_path, files, f"http://127.0.0.1:{port}")
        start = time.time()
        proc = fetch_cli(cfg, tmp_path / "out", tmp_path / "cache", "--retries", "1")
        elapsed = time.time() - start
    finally:
        for s in fillers:
            s.close()
        listener.close()
    assert_one_line_error(proc, 4, "no network?", "--mirror")
    assert elapsed < 20
    assert not (tmp_path / "out" / BIG).exists()


def test_dns_failure_says_no_network(tmp_path, files, monkeypatch):
    def fail(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", fail)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: fail())
    cfg = load_config(write_config(tmp_path, files, "http://checkpoints.example.invalid"))
    with pytest.raises(FetchError, match=r"cannot resolve host checkpoints.example.invalid: no network\? Use --mirror"):
        fetch.fetch_file(cfg.checkpoint, str(tmp_path / "out"), str(tmp_path / "cache"), retries=0)
    assert not (tmp_path / "out" / BIG).exists()


def test_disk_full_is_reported_and_nothing_written(tmp_path, files, monkeypatch):
    class Full:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    real_open_for_write = fetch._open_for_write

    def fake_open(path, append=False):
        return Full(real_open_for_write(path, append))

    with FaultyServer(files) as srv:
        cfg = load_config(write_config(tmp_path, files, srv.url))
        monkeypatch.setattr(fetch, "_open_for_write", fake_open)
        with pytest.raises(FetchError, match="disk full while writing"):
            fetch.fetch_file(cfg.checkpoint, str(tmp_path / "out"), str(tmp_path / "cache"))
    monkeypatch.undo()
    assert not (tmp_path / "out" / BIG).exists()


def test_not_enough_space_is_checked_before_downloading(tmp_path, files, monkeypatch):
    monkeypatch.setattr(fetch.shutil, "disk_usage", lambda p: type("U", (), {"free": 100})())
    with FaultyServer(files) as srv:
        cfg = load_config(write_config(tmp_path, files, srv.url))
        with pytest.raises(FetchError, match=r"not enough disk space .*600000 bytes needed, 100 free"):
            fetch.fetch_file(cfg.checkpoint, str(tmp_path / "out"), None)
        assert srv.requests == []


def test_mirror_fetches_url_plus_file_name(tmp_path, files):
    with FaultyServer(files) as srv:
        cfg = write_config(tmp_path, files, "http://127.0.0.1:9")  # nothing listens there
        proc = fetch_cli(cfg, tmp_path / "out", tmp_path / "cache", "--mirror", srv.url + "/mirror/")
        paths = list(srv.paths)
    assert proc.returncode == 0, proc.stderr
    assert sorted(paths) == sorted(f"/mirror/{name}" for name in files)
    assert (tmp_path / "out" / BIG).read_bytes() == files[BIG]


def test_from_dir_is_verified(tmp_path, files):
    src = tmp_path / "src"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    cfg = write_config(tmp_path, files, "http://127.0.0.1:9")
    proc = fetch_cli(cfg, tmp_path / "out", tmp_path / "cache", "--from", str(src))
    assert proc.returncode == 0, proc.stderr
    assert all(r["source"] == "local" for r in summary(proc)["files"])
    (src / BIG).write_bytes(files[BIG][:-1] + b"X")
    proc = fetch_cli(cfg, tmp_path / "out2", tmp_path / "cache2", "--from", str(src))
    assert_one_line_error(proc, 5, "sha384 mismatch for model.pdparams")
    assert not (tmp_path / "out2" / BIG).exists()


def test_auto_weights_use_a_cached_checkpoint(tmp_path, files, monkeypatch):
    from converter.stages.weights import resolve_weights
    monkeypatch.setenv("OCRNET_CONVERT_OFFLINE", "1")
    cfg = load_config(write_config(tmp_path, files, "http://127.0.0.1:9"))
    assert resolve_weights(cfg, "auto", cache_dir=str(tmp_path / "c")).kind == "synthetic"
    sha = cfg.checkpoint.sha384
    target = tmp_path / "c" / "sha384" / sha[:2] / sha
    target.parent.mkdir(parents=True)
    target.write_bytes(files[BIG])
    choice = resolve_weights(cfg, "auto", cache_dir=str(tmp_path / "c"))
    assert choice.kind == "pretrained" and choice.path == str(target)
    # the hash of the bytes in the cache, computed here, not the config's claim
    assert choice.provenance["sha384"] == hashlib.sha384(target.read_bytes()).hexdigest()
    target.write_bytes(files[BIG][:-1] + b"X")  # same size, other bytes: refused, never 'verified'
    with pytest.raises(ChecksumError, match="corrupt"):
        resolve_weights(cfg, "auto", cache_dir=str(tmp_path / "c"))
    assert not target.exists()


def test_default_cache_dir_follows_xdg(monkeypatch):
    monkeypatch.delenv("OCRNET_CONVERT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/cache")
    from converter.util.cache import default_cache_dir
    assert default_cache_dir() == "/x/cache/ocrnet-convert"
    monkeypatch.setenv("OCRNET_CONVERT_CACHE", "/y")
    assert default_cache_dir() == "/y"
