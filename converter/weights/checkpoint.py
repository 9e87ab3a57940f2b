"""Read a release-2.3 `model.pdparams` without running code from it.

A .pdparams file is a pickle: a dict of parameter name -> numpy array, written
by paddle.save. `pickle.load` (and so `paddle.load`) would execute whatever
the file names; safe_pickle interprets the opcodes itself and can only ever
produce plain containers and numeric arrays. This module then holds the
checkpoint to the model: every expected parameter present, float32, of the
right shape and finite.
"""
import hashlib

import numpy as np

from converter.errors import CheckpointError, UnsafeCheckpointError
from converter.errors import InputRefused
from converter.util.fsutil import read_limited
from converter.weights.safe_pickle import loads

# paddle.save adds bookkeeping entries whose keys end with '@@'.
_META_SUFFIX = "@@"
# The published checkpoint is 425 MB; nothing for this model needs more, and
# the whole file is held in memory while it is parsed.
MAX_BYTES = 2 << 30


def read_bytes(path, max_bytes=MAX_BYTES):
    """The file's bytes (read once: what is hashed is what is parsed)."""
    try:
        return read_limited(path, max_bytes, "checkpoint of this model")
    except InputRefused as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from None


def read_state_dict(path, max_bytes=MAX_BYTES):
    """Return ({name: ndarray}, sha384 of the bytes parsed) from a .pdparams file."""
    data = read_bytes(path, max_bytes)
    digest = hashlib.sha384(data).hexdigest()
    try:
        obj = loads(data)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(f"{exc} [{path}]") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError, MemoryError) as exc:
        # safe_pickle checks what it reads; this is the net under those checks.
        raise CheckpointError(f"{path}: not a readable .pdparams file ({type(exc).__name__})") from None
    state = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: a parameter name is a {type(key).__name__}, not a string")
        if key.endswith(_META_SUFFIX):
            continue
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
            value = value[1]  # (tensor name, array), as paddle.save writes bare tensors
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path}: entry '{key}' is not a numeric array")
        state[key] = value
    return state, digest


def _listing(items, sep=", "):
    return sep.join(items[:3]) + (sep.rstrip() + " ..." if len(items) > 3 else "")


def match_state_dict(expected_shapes, state, what="the model"):
    """Check a loaded state dict against the model's {name: shape}.

    Returns (ordered float32 arrays, extra keys). Missing keys, shape
    mismatches, any dtype but float32 (a cast would silently change the
    weights) and NaN or Inf values are errors naming the first few and
    giving the count.
    """
    missing = [k for k in expected_shapes if k not in state]
    mismatched = [f"{k} {list(state[k].shape)} != {list(shape)}"
                  for k, shape in expected_shapes.items()
                  if k in state and tuple(state[k].shape) != tuple(shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched, '; ')}")
    if problems:
        raise CheckpointError(f"checkpoint does not fit {what}: " + "; ".join(problems) + _what_it_is(state))
    wrong = [f"{k} is {state[k].dtype.name}" for k in expected_shapes if state[k].dtype.newbyteorder("=") != np.float32]
    if wrong:
        raise CheckpointError(f"{len(wrong)} parameter(s) not float32 (refusing a silent cast): {_listing(wrong)}")
    arrays = {k: np.ascontiguousarray(state[k], dtype=np.float32) for k in expected_shapes}
    bad = [k for k, v in arrays.items() if not np.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{len(bad)} parameter(s) hold NaN or Inf: {_listing(bad)}")
    # a variance below zero has no square root: Paddle's conv+BN fusion stops in C++
    negative = [k for k, v in arrays.items() if k.endswith("._variance") and (v < 0).any()]
    if negative:
        raise CheckpointError(f"{len(negative)} BatchNorm variance(s) below zero: {_listing(negative)}")
    extra = sorted(k for k in state if k not in expected_shapes)
    return arrays, extra


def _what_it_is(state):
    from converter.family import identify

    found = identify({k: tuple(v.shape) for k, v in state.items()})
    if found is None:
        return ""
    return (f" (it is OCRNet-{found[0]} with {found[1]} classes: make a config for it with "
            "`ocrnet-convert init --weights CHECKPOINT`)")


def read_checkpoint(path, expected_sha384=None):
    """read_state_dict, refusing bytes other than the ones that were verified
    (expected_sha384): a file swapped after its check is never loaded."""
    from converter.errors import ChecksumError

    state, digest = read_state_dict(path)
    if expected_sha384 and digest != expected_sha384:
        raise ChecksumError(f"{path} changed after it was verified: sha384 {digest} != {expected_sha384}")
    return state


def load_state(model, state, log=print, what="the model"):
    """Load a state dict into the model strictly; report and return extra keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    arrays, extra = match_state_dict(expected, state, what)
    if extra:
        log(f"checkpoint: ignoring {len(extra)} extra key(s): {', '.join(extra[:5])}"
            + (", ..." if len(extra) > 5 else ""))
    model.set_state_dict(arrays)
    return extra


def load_into(model, path, log=print):
    """read_state_dict + load_state; returns the extra keys."""
    return load_state(model, read_state_dict(path)[0], log)
