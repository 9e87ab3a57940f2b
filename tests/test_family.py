"""The OCRNet-HRNet family of release-2.3: architecture, counts, and telling a checkpoint's member."""
import math
import struct

import numpy as np
import pytest

from converter.family import BACKBONES, flops, identify, params, state_shapes

# PaddleSeg release-2.3's definitions, restated here: (stage-1 blocks, stage-1 filters),
# then per stage 2..4 (modules, blocks per branch, first branch's channels)
RELEASE = {"hrnet_w18_small_v1": ((1, 32), [(1, 2, 16), (1, 2, 16), (1, 2, 16)]),
           "hrnet_w18_small_v2": ((2, 64), [(1, 2, 18), (3, 2, 18), (2, 2, 18)])}
RELEASE.update({f"hrnet_w{w}": ((4, 64), [(1, 4, w), (4, 4, w), (3, 4, w)]) for w in (18, 30, 32, 40, 44, 48, 60, 64)})


def formula(backbone, classes):
    """The parameter count the architecture implies, in closed form: a conv
    k x k from a to b has a*b*k*k weights, a BatchNorm four vectors of b."""
    (b1, f1), stages = RELEASE[backbone]
    cbn = lambda a, b, k: a * b * k * k + 4 * b   # noqa: E731
    total = cbn(3, 64, 3) + cbn(64, 64, 3)
    total += cbn(64, f1, 1) + cbn(f1, f1, 3) + cbn(f1, 4 * f1, 1) + cbn(64, 4 * f1, 1)   # first bottleneck
    total += (b1 - 1) * (cbn(4 * f1, f1, 1) + cbn(f1, f1, 3) + cbn(f1, 4 * f1, 1))
    prev = [4 * f1]
    for n, (modules, blocks, w) in enumerate(stages):
        ch = [w * 2 ** i for i in range(n + 2)]
        total += sum(cbn(prev[i], c, 3) for i, c in enumerate(ch) if i < len(prev) and prev[i] != c)
        total += cbn(prev[-1], ch[-1], 3)                                       # the new branch
        per_module = sum(blocks * 2 * cbn(c, c, 3) for c in ch)                # basic blocks
        for i in range(len(ch)):
            for j in range(len(ch)):
                if j > i:
                    per_module += cbn(ch[j], ch[i], 1)
                elif j < i:
                    per_module += (i - j - 1) * cbn(ch[j], ch[j], 3) + cbn(ch[j], ch[i], 3)
        total += modules * per_module
        prev = ch
    feat = sum(prev)
    cbnb = lambda a, b, k: cbn(a, b, k) + b   # noqa: E731  (the head's convs have biases)
    head = 2 * (cbnb(512, 256, 1) + cbnb(256, 256, 1)) + cbnb(512, 256, 1) + cbnb(256, 512, 1)
    head += cbnb(1024, 512, 1) + cbnb(feat, 512, 3) + (512 * classes + classes)
    head += cbnb(feat, feat, 1) + (feat * classes + classes)
    return total + head


def test_w48_equals_the_release_fixture(fixture_state):
    assert [[k, list(v)] for k, v in state_shapes("hrnet_w48", 19).items()] == fixture_state["entries"]
    assert params("hrnet_w48", 19) == fixture_state["totals"]["values"] == formula("hrnet_w48", 19)
    for size, value in fixture_state["paddle_flops"].items():
        if size.startswith("1x3x"):
            h, w = (int(v) for v in size.split("x")[2:])
            assert flops("hrnet_w48", 19, h, w) == value


@pytest.mark.parametrize("backbone", sorted(RELEASE))
def test_each_width_is_the_model_we_build(backbone):
    """Our paddle model's state dict (shapes only, LazyGuard) for every width:
    the same keys in the same order as the spec, and the closed-form count."""
    import paddle

    from converter.model import build_model

    with paddle.LazyGuard():
        model = build_model(7, backbone=backbone)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(ours.items()) == list(state_shapes(backbone, 7).items())
    assert sum(math.prod(s) for s in ours.values()) == params(backbone, 7) == formula(backbone, 7)
    assert len(ours) == (1583 if "small" not in backbone else len(ours))


def test_the_issues_counts():
    assert params("hrnet_w18", 5) == 12_112_254 and params("hrnet_w48", 21) == 70_468_618
    assert len(state_shapes("hrnet_w18", 5)) == len(state_shapes("hrnet_w48", 21)) == 1583


@pytest.mark.parametrize("backbone", ["hrnet_w18_small_v1", "hrnet_w18", "hrnet_w48"])
def test_flops_equal_paddle_flops(backbone):
    """paddle.flops counts conv and BN multiply-accumulates of a forward pass;
    the formula must give the same at every size (here 128x256, a quarter of
    the work of 512x1024's 1/16; W48's 512x1024 count is the fixture's, above)."""
    import paddle

    from converter.model import build_model

    model = build_model(19, backbone=backbone)
    assert paddle.flops(model, [1, 3, 128, 256], print_detail=False) == flops(backbone, 19, 128, 256)


def test_identify_tells_each_member_and_refuses_others():
    for backbone in BACKBONES:
        assert identify(state_shapes(backbone, 11)) == (backbone, 11)
    w18 = state_shapes("hrnet_w18", 5)
    assert identify(dict(w18, **{"StructuredToParameterName@@": (3,)})) == ("hrnet_w18", 5)   # bookkeeping allowed
    assert identify(dict(w18, **{"head.extra.weight": (3,)})) is None   # a model key of no member
    broken = dict(w18)
    broken["backbone.st4.stage_st4_3.fuse_func.residual_st4_3_layer_4_3_1._conv.weight"] = (1, 1, 3, 3)
    assert identify(broken) is None
    assert identify({"head.cls_head.weight": (5, 512, 1, 1)}) is None


def _paddle3_pickle(state):
    """A state dict as paddle 3.3.1 writes it under numpy 2: protocol 4, arrays
    rebuilt by numpy._core.multiarray._reconstruct, written opcode by opcode."""
    from tests.hostile_checkpoints import P4, glob, i1, i4, u

    def arr(a):
        shape = b"(" + b"".join(b"\x8a\x08" + struct.pack("<q", d) for d in a.shape) + b"t"
        dt = (glob("numpy", "dtype") + u("f4") + b"\x89\x88\x87R" + b"(" + i1(3) + u("<") + b"NNN" + i4(-1)
              + i4(-1) + i1(0) + b"tb")
        raw = a.astype("<f4").tobytes()
        return (glob("numpy._core.multiarray", "_reconstruct") + glob("numpy", "ndarray") + i1(0) + b"\x85"
                + b"C\x01b" + b"\x87R" + b"(" + i1(1) + shape + dt + b"\x89" + b"\x8e" + struct.pack("<Q", len(raw))
                + raw + b"tb")
    body = b"".join(u(k) + arr(v) for k, v in state.items())
    return P4 + glob("collections", "OrderedDict") + b")R(" + body + b"u."


def test_a_paddle3_checkpoint_of_another_member_loads_and_is_told_apart(tmp_path):
    from converter.weights.checkpoint import match_state_dict, read_state_dict

    rng = np.random.default_rng(5)
    shapes = state_shapes("hrnet_w18_small_v2", 3)
    state = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    path = tmp_path / "model.pdparams"
    path.write_bytes(_paddle3_pickle(state))
    loaded, _ = read_state_dict(str(path))
    assert len(loaded) == len(shapes)
    np.testing.assert_array_equal(loaded["head.cls_head.weight"], state["head.cls_head.weight"])
    assert identify({k: v.shape for k, v in loaded.items()}) == ("hrnet_w18_small_v2", 3)
    from converter.errors import CheckpointError
    with pytest.raises(CheckpointError) as err:   # given to a W48 config: one line naming a key, and what it is
        match_state_dict(state_shapes("hrnet_w48", 19), loaded, "OCRNet-hrnet_w48 with 19 classes")
    msg = str(err.value)
    assert "does not fit OCRNet-hrnet_w48" in msg and "missing key(s)" in msg and "shape mismatch(es)" in msg
    assert "it is OCRNet-hrnet_w18_small_v2 with 3 classes" in msg and "\n" not in msg
