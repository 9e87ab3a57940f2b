"""Safe, strict checkpoint loading."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from converter.weights.checkpoint import load_into, match_state_dict, read_state_dict
from converter.errors import CheckpointError, UnsafeCheckpointError


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    """A checkpoint written by paddle.save itself, as release-2.3 checkpoints were."""
    import paddle
    from converter.model import build_model
    model = build_model()
    rng = np.random.default_rng(7)
    state = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in model.state_dict().items()}
    state = {k: np.abs(v) if k.endswith("._variance") else v for k, v in state.items()}   # variances are >= 0
    model.set_state_dict(state)
    path = tmp_path_factory.mktemp("ckpt") / "model.pdparams"
    paddle.save(model.state_dict(), str(path))
    return path, state


def test_loads_a_paddle_saved_checkpoint_exactly(saved_checkpoint):
    from converter.model import build_model
    path, state = saved_checkpoint
    model = build_model()
    assert load_into(model, str(path), log=lambda m: None) == []
    loaded = model.state_dict()
    for key in ("backbone.conv_layer1_1._conv.weight", "head.cls_head.bias",
                "backbone.st4.stage_st4_3.fuse_func.residual_st4_3_layer_4_3_1._batch_norm._variance"):
        np.testing.assert_array_equal(loaded[key].numpy(), state[key])


def _shapes():
    return {"a.weight": (2, 3), "a.bias": (2,), "b.weight": (4,), "c": (1,), "d": (1,)}


def test_missing_keys_are_named_and_counted():
    state = {"a.weight": np.zeros((2, 3), np.float32)}
    with pytest.raises(CheckpointError) as err:
        match_state_dict(_shapes(), state)
    msg = str(err.value)
    assert "4 missing key(s)" in msg and "a.bias" in msg and "b.weight" in msg and "..." in msg


def test_shape_mismatch_is_named():
    state = {k: np.zeros(s, np.float32) for k, s in _shapes().items()}
    state["b.weight"] = np.zeros((5,), np.float32)
    with pytest.raises(CheckpointError) as err:
        match_state_dict(_shapes(), state)
    assert "1 shape mismatch(es): b.weight [5] != [4]" in str(err.value)


def test_extra_keys_are_reported_and_ignored(tmp_path):
    from converter.model import build_model
    model = build_model()
    state = {k: np.full(v.shape, 0.5, np.float32) for k, v in model.state_dict().items()}
    state["aux.extra_weight"] = np.zeros((3,), np.float32)
    state["StructuredToParameterName@@"] = {"x": "y"}  # paddle.save bookkeeping
    path = tmp_path / "extra.pdparams"
    with open(path, "wb") as fh:
        pickle.dump(state, fh, protocol=4)
    messages = []
    extra = load_into(model, str(path), log=messages.append)
    assert extra == ["aux.extra_weight"]
    assert "ignoring 1 extra key(s): aux.extra_weight" in messages[0]
    assert float(model.state_dict()["head.cls_head.bias"].numpy()[0]) == 0.5


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pdparams"
    with open(path, "wb") as fh:
        pickle.dump({"backbone.conv_layer1_1._conv.weight": _Payload(marker)}, fh)
    # Control: an ordinary unpickler, in another process, really runs it.
    subprocess.run([sys.executable, "-c", "import pickle,sys; pickle.load(open(sys.argv[1],'rb'))",
                    str(path)], check=False)
    assert marker.exists(), "the crafted pickle should be live, or this test proves nothing"
    marker.unlink()
    with pytest.raises(UnsafeCheckpointError) as err:
        read_state_dict(str(path))
    assert "posix.system" in str(err.value) or "os.system" in str(err.value)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_cli_refuses_malicious_checkpoint_in_one_line(tmp_path):
    from tests.support import run_cli
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pdparams"
    with open(path, "wb") as fh:
        pickle.dump({"x": _Payload(marker)}, fh)
    out = tmp_path / "out"
    proc = run_cli("export", "--weights", str(path), "--allow-unverified", "--output", str(out))
    assert proc.returncode == 7
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: refusing to load checkpoint") and "Traceback" not in proc.stderr
    assert not marker.exists() and not out.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pdparams"
    data = pickle.dumps({"a": np.zeros((100,), np.float32)}, protocol=4)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable .pdparams"):
        read_state_dict(str(path))


# --- the hostile corpus (tests/hostile_checkpoints.py) ----------------------

AS_LIMIT = 3 << 30  # address space for each refusal: a few GB, far below what the worst cases ask


def _limited(limit=AS_LIMIT):
    import resource

    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def test_address_space_limit_is_effective():
    """Negative control: under the corpus's limit, allocating what the
    huge-object-array file asks of numpy fails."""
    proc = subprocess.run([sys.executable, "-c", "import numpy as np; np.ones(2**29, object)"],
                          capture_output=True, text=True, preexec_fn=_limited())
    assert proc.returncode != 0 and "MemoryError" in proc.stderr


def test_the_scalar_pointer_file_is_live():
    """Control: the forged-dtype + numpy scalar file crashes a plain unpickler
    (SIGSEGV), so refusing it below is not a formality."""
    from tests.hostile_checkpoints import CASES
    data = dict((n, d) for n, d, _ in CASES)["object_scalar_pointer"]
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c",
                           "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                          input=data, capture_output=True, preexec_fn=_limited())
    assert proc.returncode < 0, proc.returncode  # killed by a signal


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from tests.hostile_checkpoints import CASES, main
    folder = tmp_path_factory.mktemp("hostile")
    main(str(folder))
    return folder, CASES


def test_every_hostile_checkpoint_is_refused_in_one_line(corpus, tmp_path):
    """Each file through the real CLI entry point (converter.cli.main, all in
    one process: tests/cli_batch.py), under an address-space limit: one
    `error:` line, the expected exit code, no traceback, nothing written."""
    import json

    from tests.support import ROOT
    folder, cases = corpus
    argvs = [["export", "--weights", str(folder / f"{name}.pdparams"), "--allow-unverified", "--output",
              str(tmp_path / name)] for name, _, _ in cases]
    proc = subprocess.run([sys.executable, "-m", "tests.cli_batch"], input=json.dumps(argvs), capture_output=True,
                          text=True, cwd=ROOT, timeout=600, preexec_fn=_limited(),
                          env=dict(os.environ, OCRNET_CONVERT_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]   # a crash of any case ends the batch
    results = json.loads(proc.stdout)
    assert len(results) == len(cases)
    failures = []
    for (name, _, code), result in zip(cases, results):
        lines = [ln for ln in result["stderr"].strip().splitlines() if not ln.startswith("warning:")
                 and not ln.startswith("export: reading")]
        ok = (result["code"] == code and len(lines) == 1 and lines[0].startswith("error: ")
              and "Traceback" not in result["stderr"] and not (tmp_path / name).exists())
        if not ok:
            failures.append(f"{name}: exit {result['code']} (want {code}): {result['stderr'].strip()[-300:]}")
    assert not failures, "\n".join(failures)


def test_mutated_checkpoints_only_ever_raise_checkpoint_errors():
    """2,000 random byte edits of a valid pickle (protocols 2 and 4): each
    loads or raises CheckpointError, nothing else."""
    import collections
    import random

    from converter.weights.safe_pickle import loads
    state = collections.OrderedDict((f"k{i}", np.arange(i + 1, dtype=np.float32)) for i in range(4))
    state["meta@@"] = {"a": "b"}
    outcomes = collections.Counter()
    for protocol in (2, 4):
        base = pickle.dumps(state, protocol=protocol)
        assert list(loads(base)) == list(state)   # the control: the unmutated pickle loads
        rng = random.Random(protocol)
        for _ in range(1000):
            data = bytearray(base)
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(data))
                kind = rng.random()
                if kind < 0.5:
                    data[i] = rng.randrange(256)
                elif kind < 0.75:
                    del data[i]
                else:
                    data.insert(i, rng.randrange(256))
            try:
                loads(bytes(data))
                outcomes["loaded"] += 1
            except CheckpointError:
                outcomes["refused"] += 1
    # anything but a CheckpointError propagated above; both outcomes occur (seeded: counts are fixed)
    assert outcomes["loaded"] + outcomes["refused"] == 2000
    assert outcomes["refused"] > 1000 and outcomes["loaded"] > 10, outcomes


def test_protocols_two_to_four_load_exactly():
    import collections

    from converter.weights.safe_pickle import loads
    state = collections.OrderedDict(
        a=np.arange(6, dtype=np.float32).reshape(2, 3), big_endian=np.ones((2, 2), ">f8"),
        fortran=np.asfortranarray(np.arange(6.0).reshape(2, 3)), empty=np.zeros((0, 3), np.int64))
    state["StructuredToParameterName@@"] = {"a": "linear_0.w_0"}
    for protocol in (2, 3, 4):
        out = loads(pickle.dumps(state, protocol=protocol))
        for key in ("a", "big_endian", "fortran", "empty"):
            assert out[key].dtype == state[key].dtype and out[key].shape == state[key].shape
            np.testing.assert_array_equal(out[key], state[key])
        assert out["StructuredToParameterName@@"] == {"a": "linear_0.w_0"}


def test_nan_and_wrong_dtype_are_refused_naming_the_key():
    shapes = {"a.weight": (2,), "b.weight": (2,)}
    good = {"a.weight": np.zeros(2, np.float32), "b.weight": np.zeros(2, np.float32)}
    match_state_dict(shapes, good)  # control: accepted
    with pytest.raises(CheckpointError, match=r"NaN or Inf: b\.weight"):
        match_state_dict(shapes, dict(good, **{"b.weight": np.array([0, np.nan], np.float32)}))
    with pytest.raises(CheckpointError, match=r"NaN or Inf: a\.weight"):
        match_state_dict(shapes, dict(good, **{"a.weight": np.array([np.inf, 0], np.float32)}))
    with pytest.raises(CheckpointError, match=r"not float32.*a\.weight is float64"):
        match_state_dict(shapes, dict(good, **{"a.weight": np.zeros(2, np.float64)}))
    with pytest.raises(CheckpointError, match=r"b\.weight is int8"):
        match_state_dict(shapes, dict(good, **{"b.weight": np.zeros(2, np.int8)}))
    # big-endian float32 is float32: converted, not refused
    arrays, _ = match_state_dict(shapes, dict(good, **{"a.weight": np.ones(2, ">f4")}))
    assert arrays["a.weight"].dtype == np.float32 and arrays["a.weight"].tolist() == [1, 1]


def test_file_swapped_after_verification_is_not_loaded(tmp_path):
    from converter.weights.checkpoint import read_checkpoint
    from converter.errors import ChecksumError
    path = tmp_path / "w.pdparams"
    path.write_bytes(pickle.dumps({"a": np.zeros(2, np.float32)}, protocol=4))
    _, digest = read_state_dict(str(path))
    read_checkpoint(str(path), digest)  # control
    path.write_bytes(pickle.dumps({"a": np.ones(2, np.float32)}, protocol=4))
    with pytest.raises(ChecksumError, match="changed after it was verified"):
        read_checkpoint(str(path), digest)
