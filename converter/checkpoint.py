"""Read a release-2.3 `model.pdparams` without running code from it.

A .pdparams file is a pickle: a dict of parameter name -> numpy array, written
by paddle.save. Plain `pickle.load` (and so `paddle.load`) would execute any
callable the file names, so we use an Unpickler whose find_class admits only
what such a checkpoint needs to rebuild numpy arrays and plain containers.
"""
import pickle

import numpy as np

from .errors import CheckpointError, UnsafeCheckpointError

# (module, name) pairs a numpy-array state dict can reference. numpy 2 writes
# `numpy._core`; numpy 1 writes `numpy.core`. `_codecs.encode` turns text into
# bytes (protocol-2 pickles of arrays use it) and nothing else.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}
# paddle.save adds bookkeeping entries whose keys end with '@@'.
_META_SUFFIX = "@@"


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"refusing to load checkpoint: it references {module}.{name}, "
            "which a parameter file never needs (possibly malicious)")


def read_state_dict(path):
    """Return {name: float32 ndarray} from a .pdparams file, safely."""
    try:
        with open(path, "rb") as fh:
            obj = _RestrictedUnpickler(fh).load()
    except UnsafeCheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    except Exception as exc:  # corrupt or truncated pickle
        raise CheckpointError(f"{path} is not a readable .pdparams file ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of parameters, got {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        if not isinstance(key, str) or key.endswith(_META_SUFFIX):
            continue
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
            value = value[1]  # (tensor name, array), as paddle.save writes bare tensors
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
            raise CheckpointError(f"{path}: entry '{key}' is not a numeric array")
        state[key] = value
    return state


def match_state_dict(expected_shapes, state):
    """Check a loaded state dict against the model's {name: shape}.

    Returns (ordered arrays, extra keys). Missing keys and shape mismatches are
    an error naming the first few and giving the count.
    """
    missing = [k for k in expected_shapes if k not in state]
    mismatched = [f"{k} {list(state[k].shape)} != {list(shape)}"
                  for k, shape in expected_shapes.items()
                  if k in state and tuple(state[k].shape) != tuple(shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {', '.join(missing[:3])}"
                        + (", ..." if len(missing) > 3 else ""))
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {'; '.join(mismatched[:3])}"
                        + ("; ..." if len(mismatched) > 3 else ""))
    if problems:
        raise CheckpointError("checkpoint does not fit OCRNet-HRNet_W48: " + "; ".join(problems))
    extra = sorted(k for k in state if k not in expected_shapes)
    arrays = {k: np.ascontiguousarray(state[k], dtype=np.float32) for k in expected_shapes}
    return arrays, extra


def load_into(model, path, log=print):
    """Load a checkpoint into the model strictly; report and ignore extra keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    arrays, extra = match_state_dict(expected, read_state_dict(path))
    if extra:
        log(f"checkpoint: ignoring {len(extra)} extra key(s): {', '.join(extra[:5])}"
            + (", ..." if len(extra) > 5 else ""))
    model.set_state_dict(arrays)
    return extra
