"""Synthetic weights: deterministic and calibrated (their class maps at full size: tests/test_e2e.py)."""
import hashlib
import subprocess
import sys

import numpy as np
import pytest

from tests.support import original_contract

HASH_SNIPPET = """
import hashlib
from converter.model import build_model
from converter.weights.synthetic import synthetic_state_dict
from tests.support import original_contract
st = synthetic_state_dict(build_model(19, backbone="hrnet_w18_small_v1"), {seed}, original_contract())
print(hashlib.sha256(b''.join(k.encode() + st[k].tobytes() for k in st)).hexdigest())
"""


def _digest(state):
    return hashlib.sha256(b"".join(k.encode() + state[k].tobytes() for k in state)).hexdigest()


@pytest.fixture(scope="session")
def synthetic_seed0(lite_export):
    """Seed 0 of the lite model as the session's export computed it (2
    threads, another process), through the cache, which verifies what it returns."""
    from converter.model import build_model
    from converter.util.cache import default_cache_dir
    from converter.weights.synthetic import cached_synthetic_state_dict
    model = build_model(19, backbone="hrnet_w18_small_v1")
    state, hit = cached_synthetic_state_dict(model, 0, original_contract(), default_cache_dir())
    assert hit
    return model, state


def test_same_seed_gives_byte_identical_weights_across_processes_and_threads(synthetic_seed0):
    _, state = synthetic_seed0
    # Another process, with a different thread count, computing from scratch,
    # must produce the same bytes as the export's.
    proc = subprocess.run([sys.executable, "-c", HASH_SNIPPET.format(seed=0)], capture_output=True,
                          text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == _digest(state)


@pytest.mark.slow   # the default tier's 10 minutes; the negative control of the test above, in CI's slow tier
def test_different_seed_gives_different_weights(synthetic_seed0):
    """The whole synthetic state of seed 1 (another process) against seed 0's."""
    _, state = synthetic_seed0
    proc = subprocess.run([sys.executable, "-c", HASH_SNIPPET.format(seed=1)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] != _digest(state)


def test_calibration_sets_batchnorm_to_the_calibration_batch_statistics(synthetic_seed0):
    """The first BatchNorm's running statistics are the per-channel mean and
    (biased) variance of its conv's output on the calibration crops, computed
    here directly; He-init values (0 and 1) or statistics of other data fail."""
    import paddle
    from converter.weights.synthetic import calibration_batch
    model, state = synthetic_seed0
    conv = model.backbone.conv_layer1_1._conv
    with paddle.no_grad():
        y = conv(paddle.to_tensor(calibration_batch(original_contract()))).numpy().astype(np.float64)
    mean, var = y.mean(axis=(0, 2, 3)), y.var(axis=(0, 2, 3))
    np.testing.assert_allclose(state["backbone.conv_layer1_1._batch_norm._mean"], mean, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(state["backbone.conv_layer1_1._batch_norm._variance"], var, rtol=1e-3, atol=1e-5)
    assert np.abs(mean).max() > 0.01  # control: not the He-init zeros
