"""Seeded synthetic weights for the real architecture.

Used when the published checkpoint cannot be had. He-initialised convs alone
give a nearly constant class map (2-4 classes, one over 95 %), because
activations drift in scale through 100+ layers. We therefore recalibrate every
BatchNorm's running statistics on the bundled sample images: one forward pass
in training mode with momentum 0 makes each running mean/variance equal to the
batch statistics, layer by layer, of exactly the activations eval mode will see.
The classifier is then standardised per class on the same data (zero mean,
unit variance of each class's logit), so that no class wins everywhere by a
constant offset. The result is labelled synthetic everywhere it goes.
"""
import numpy as np

from converter.data.images import load_rgb, prepare, resize_rgb, sample_images

# Calibrate on crops at the native 2048x1024 scale. Dygraph is slow on CPU
# (~50 s for one full frame), and downscaled frames give statistics that do
# not carry over (content at another scale excites 3x3 convs differently), so
# we take CROPS_PER_IMAGE windows of CROP_SIZE (w, h) from each full frame.
# One crop per image would halve the ~22 s this takes and still give varied
# maps, but it conditions the network worse: at full size the f32 backends'
# largest logit error against Paddle grew from 8.4e-5 to 4.1e-3 on street_3
# (69 instead of 12 flipped pixels), a tenth of the parity gate's headroom.
FULL_SIZE = (2048, 1024)
CROP_SIZE = (512, 256)
CROPS_PER_IMAGE = 2


# BatchNorm scale (gamma) of the last BN on every branch that is added to a
# residual or fused stream, and of the OCR context. Small values keep the random
# network close to its identity paths, so the class map follows local image
# content instead of a per-image offset that one class wins everywhere
# (measured: with gamma 1, 3-5 classes on two of the three sample images).
RESIDUAL_GAMMA = 0.1
_RESIDUAL_BN = (".conv3._batch_norm.weight", ".attention_block.f_up._batch_norm.weight")


def _is_residual_bn(name):
    if name.endswith(_RESIDUAL_BN):
        return True  # bottleneck output; OCR context
    if "_branch_layer_" in name and name.endswith(".conv2._batch_norm.weight"):
        return True  # basic-block output
    # Fuse paths: only the last BN of a path feeds the sum; scaling the earlier
    # ones is undone by the next BN, so matching them all is harmless.
    return ".fuse_func." in name and name.endswith("_batch_norm.weight")


def _he_init(state_shapes, seed):
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in state_shapes.items():
        if name.endswith("._mean") or (name.endswith(".bias")):
            arrays[name] = np.zeros(shape, np.float32)
        elif _is_residual_bn(name):
            arrays[name] = np.full(shape, RESIDUAL_GAMMA, np.float32)
        elif name.endswith("._variance") or (name.endswith(".weight") and len(shape) == 1):
            arrays[name] = np.ones(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            arrays[name] = (rng.standard_normal(shape, dtype=np.float32)
                            * np.float32(np.sqrt(2.0 / fan_in)))
    return arrays


def calibration_batch(contract, images=None, seed=0):
    """contract: the original model's input (data.images.input_contract)."""
    rng = np.random.default_rng(seed)
    crops = []
    for path in images or sample_images():
        frame = resize_rgb(load_rgb(path), *FULL_SIZE)
        for _ in range(CROPS_PER_IMAGE):
            top = int(rng.integers(0, FULL_SIZE[1] - CROP_SIZE[1] + 1))
            left = int(rng.integers(0, FULL_SIZE[0] - CROP_SIZE[0] + 1))
            crops.append(frame[top:top + CROP_SIZE[1], left:left + CROP_SIZE[0]])
    return np.concatenate([prepare(c, contract) for c in crops])


def synthetic_state_dict(model, seed, contract, images=None):
    """Set seeded weights on `model`, recalibrate BN, return {name: array}."""
    import paddle

    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.set_state_dict(_he_init(shapes, seed))
    batch = paddle.to_tensor(calibration_batch(contract, images, seed))
    bns = [m for m in model.sublayers() if isinstance(m, paddle.nn.BatchNorm2D)]
    saved = [bn._momentum for bn in bns]
    model.train()
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.Dropout2D):
            layer.eval()  # no random channel drops; nothing downstream has BN anyway
    captured = []
    cls_head = model.head.cls_head
    hook = cls_head.register_forward_post_hook(lambda layer, inp, out: captured.append(out.numpy()))
    try:
        for bn in bns:
            bn._momentum = 0.0
        with paddle.no_grad():
            model(batch)
    finally:
        hook.remove()
        for bn, momentum in zip(bns, saved):
            bn._momentum = momentum
        model.eval()
    state = {k: v.numpy().astype(np.float32) for k, v in model.state_dict().items()}
    # With momentum 0 the training pass normalised with exactly the statistics
    # eval mode now uses, so the captured logits are the eval-mode logits.
    logits = captured[0].transpose(1, 0, 2, 3).reshape(captured[0].shape[1], -1)
    mean, std = logits.mean(axis=1), logits.std(axis=1) + 1e-6
    w, b = state["head.cls_head.weight"], state["head.cls_head.bias"]
    state["head.cls_head.weight"] = (w / std[:, None, None, None]).astype(np.float32)
    state["head.cls_head.bias"] = ((b - mean) / std).astype(np.float32)
    # Round every calibrated value to 16 significant bits so that last-bit
    # differences in threaded reductions cannot change the bytes we save.
    for key in state:
        if key.endswith(("._mean", "._variance")) or key.startswith("head.cls_head."):
            state[key] = _round_mantissa(state[key])
    model.set_state_dict(state)
    return state


def _round_mantissa(arr, keep_bits=16):
    bits = arr.astype(np.float32).view(np.uint32)
    drop = 23 - keep_bits
    half = np.uint32(1 << (drop - 1))
    rounded = (bits + half) & np.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)
    return rounded.view(np.float32)


# -- the cache -------------------------------------------------------------
# Calibration is the slow part of an export with synthetic weights (a
# training-mode forward pass of six crops in dygraph). Its result depends only
# on the seed, the input contract, our model and calibration code, the sample
# images and the library versions, so it is cached under a key of all of
# them: <cache>/synthetic/<key>.json names the sha384 of a state-dict file
# stored content-addressed beside the checkpoints. The file is read with the
# same safe loader as a checkpoint and verified by its sha384 on every use;
# a bad entry is deleted and the weights are computed again.

def synthetic_key(seed, contract, shapes):
    """What the calibrated weights are a function of."""
    import glob
    import hashlib
    import json

    from converter.config import package_path
    from converter.util.incremental import source_digest, tool_versions

    sources = (glob.glob(package_path("model", "*.py")) + glob.glob(package_path("samples", "*.jpg"))
               + [package_path("weights", "synthetic.py"), package_path("data", "images.py")])
    body = {"seed": seed, "contract": contract, "shapes": sorted((k, list(v)) for k, v in shapes.items()),
            "sources": source_digest(sources), "tools": tool_versions("paddlepaddle", "numpy", "pillow"),
            "crops": [list(FULL_SIZE), list(CROP_SIZE), CROPS_PER_IMAGE]}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _index_path(cache_dir, key):
    import os

    return os.path.join(cache_dir, "synthetic", key + ".json")


def _read_index(path):
    import json

    from converter.util.fsutil import read_limited

    sha384 = json.loads(read_limited(path, 4096, "cache index"))["sha384"]
    if not (isinstance(sha384, str) and len(sha384) == 96 and set(sha384) <= set("0123456789abcdef")):
        raise ValueError("the index names no sha384")
    return sha384


def load_cached(cache_dir, key, shapes, log=print):
    """The cached state dict for key, verified; None when absent or bad (a bad
    entry is deleted)."""
    import os

    from converter.errors import ConverterError
    from converter.util.cache import cache_path
    from converter.errors import InputRefused
    from converter.weights.checkpoint import match_state_dict, read_checkpoint

    index, blob = _index_path(cache_dir, key), None
    if not os.path.lexists(index):
        return None
    try:
        sha384 = _read_index(index)
        blob = cache_path(cache_dir, sha384)
        arrays, _ = match_state_dict(shapes, read_checkpoint(blob, sha384))
        return arrays
    except (OSError, ValueError, KeyError, TypeError, InputRefused, ConverterError) as exc:
        log(f"warning: cached synthetic weights {index} are unusable ({str(exc)[:120]}); deleted, recomputing")
        for path in (index, blob):
            if path and os.path.lexists(path):
                os.unlink(path)
        return None


def store(cache_dir, key, state):
    """Write the state dict content-addressed, then its index (atomically)."""
    import hashlib
    import json
    import os
    import pickle

    from converter.util.cache import cache_path
    from converter.util.fsutil import write_bytes_atomic

    data = pickle.dumps({k: np.ascontiguousarray(v) for k, v in state.items()}, protocol=4)
    sha384 = hashlib.sha384(data).hexdigest()
    blob = cache_path(cache_dir, sha384)
    if not os.path.isfile(blob):
        write_bytes_atomic(blob, data)
    write_bytes_atomic(_index_path(cache_dir, key), json.dumps({"sha384": sha384, "size": len(data)}).encode())


def cached_synthetic_state_dict(model, seed, contract, cache_dir, log=print):
    """synthetic_state_dict through the cache: (state, whether it came from the cache)."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    key = synthetic_key(seed, contract, shapes)
    state = load_cached(cache_dir, key, shapes, log) if cache_dir else None
    if state is not None:
        model.set_state_dict(state)
        return state, True
    state = synthetic_state_dict(model, seed, contract)
    if cache_dir:
        try:
            store(cache_dir, key, state)
        except OSError as exc:   # a cache that cannot be written costs time, not the export
            log(f"warning: cannot cache the synthetic weights in {cache_dir}: {exc.strerror}")
    return state, False
