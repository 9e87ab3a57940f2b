"""Safe, strict checkpoint loading."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from converter.checkpoint import load_into, match_state_dict, read_state_dict
from converter.errors import CheckpointError, UnsafeCheckpointError


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    """A checkpoint written by paddle.save itself, as release-2.3 checkpoints were."""
    import paddle
    from converter.model import build_model
    model = build_model()
    rng = np.random.default_rng(7)
    state = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in model.state_dict().items()}
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
    assert not marker.exists()


def test_cli_refuses_malicious_checkpoint_in_one_line(tmp_path):
    from tests.conftest import run_cli
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
