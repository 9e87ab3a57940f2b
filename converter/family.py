"""The OCRNet-HRNet family of PaddleSeg release-2.3, as data.

Every HRNet of the release has the same layout: a stem of two stride-2 3x3
convs (64 channels), a first stage of bottlenecks, then stages 2-4 of
high-resolution modules with 2, 3 and 4 branches at halving resolutions.
A backbone is therefore its first stage (blocks, filters) and, for stages
2-4, (modules, blocks per branch, channels of the first branch); each
further branch doubles the channels. OCRNet's head is the same on all of
them (mid 512, key 256 channels), fed the four branches concatenated.

This module needs no paddle: `init` reads a checkpoint's shapes against
state_shapes() to tell the backbone and the class count, and the config's
parameter and FLOP counts come from params() and flops().
"""
import math

from converter.errors import ConfigError

# name: ((stage-1 blocks, stage-1 filters), ((modules, blocks, width) for stages 2, 3, 4))
BACKBONES = {
    "hrnet_w18_small_v1": ((1, 32), ((1, 2, 16), (1, 2, 16), (1, 2, 16))),
    "hrnet_w18_small_v2": ((2, 64), ((1, 2, 18), (3, 2, 18), (2, 2, 18))),
    **{f"hrnet_w{w}": ((4, 64), ((1, 4, w), (4, 4, w), (3, 4, w))) for w in (18, 30, 32, 40, 44, 48, 60, 64)},
}
MID_CHANNELS = 512
KEY_CHANNELS = 256
STEM_CHANNELS = 64


def stages(backbone):
    """[(modules, blocks, (channels per branch))] of stages 2, 3 and 4."""
    if backbone not in BACKBONES:
        raise ConfigError(f"model.backbone: {backbone!r} is not one of {', '.join(BACKBONES)}")
    _, rest = BACKBONES[backbone]
    return [(m, b, tuple(w * 2 ** i for i in range(n + 2))) for n, (m, b, w) in enumerate(rest)]


def stage1(backbone):
    stages(backbone)
    return BACKBONES[backbone][0]


def feat_channels(backbone):
    return sum(stages(backbone)[-1][2])


# -- state-dict shapes, in the order paddle's state_dict lists them --------

def _conv_bn(prefix, cin, cout, k, bias=False):
    out = [(f"{prefix}._conv.weight", (cout, cin, k, k))]
    if bias:
        out.append((f"{prefix}._conv.bias", (cout,)))
    return out + [(f"{prefix}._batch_norm.{n}", (cout,)) for n in ("weight", "bias", "_mean", "_variance")]


def _backbone(backbone):
    out = _conv_bn("backbone.conv_layer1_1", 3, STEM_CHANNELS, 3) + _conv_bn("backbone.conv_layer1_2",
                                                                             STEM_CHANNELS, STEM_CHANNELS, 3)
    blocks, filters = stage1(backbone)
    cin = STEM_CHANNELS
    for i in range(blocks):
        p = f"backbone.la1.bb_layer2_{i + 1}"
        out += _conv_bn(f"{p}.conv1", cin, filters, 1) + _conv_bn(f"{p}.conv2", filters, filters, 3)
        out += _conv_bn(f"{p}.conv3", filters, filters * 4, 1)
        if i == 0:
            out += _conv_bn(f"{p}.conv_down", cin, filters * 4, 1)
        cin = filters * 4
    prev = [filters * 4]
    for s, (modules, nblocks, chans) in enumerate(stages(backbone), 2):
        tr = f"backbone.tr{s - 1}"
        for i, c in enumerate(chans):
            if i < len(prev) and prev[i] != c:
                out += _conv_bn(f"{tr}.transition_tr{s - 1}_layer_{i + 1}", prev[i], c, 3)
            elif i >= len(prev):
                out += _conv_bn(f"{tr}.transition_tr{s - 1}_layer_{i + 1}", prev[-1], c, 3)
        for m in range(modules):
            name = f"st{s}_{m + 1}"
            base = f"backbone.st{s}.stage_{name}"
            for i, c in enumerate(chans):
                for j in range(nblocks):
                    p = f"{base}.branches_func.bb_{name}_branch_layer_{i + 1}_{j + 1}"
                    out += _conv_bn(f"{p}.conv1", c, c, 3) + _conv_bn(f"{p}.conv2", c, c, 3)
            for i in range(len(chans)):
                for j in range(len(chans)):
                    p = f"{base}.fuse_func.residual_{name}_layer_{i + 1}_{j + 1}"
                    if j > i:
                        out += _conv_bn(p, chans[j], chans[i], 1)
                    elif j < i:
                        for k in range(i - j):
                            last = k == i - j - 1
                            out += _conv_bn(f"{p}_{k + 1}", chans[j], chans[i] if last else chans[j], 3)
        prev = list(chans)
    return out


def _head(feat, classes):
    h = "head"
    out = []
    sp = f"{h}.spatial_ocr.attention_block"
    for part in ("f_pixel", "f_object"):
        out += _conv_bn(f"{sp}.{part}.0", MID_CHANNELS, KEY_CHANNELS, 1, True)
        out += _conv_bn(f"{sp}.{part}.1", KEY_CHANNELS, KEY_CHANNELS, 1, True)
    out += _conv_bn(f"{sp}.f_down", MID_CHANNELS, KEY_CHANNELS, 1, True)
    out += _conv_bn(f"{sp}.f_up", KEY_CHANNELS, MID_CHANNELS, 1, True)
    out += _conv_bn(f"{h}.spatial_ocr.conv1x1.0", 2 * MID_CHANNELS, MID_CHANNELS, 1, True)
    out += _conv_bn(f"{h}.conv3x3_ocr", feat, MID_CHANNELS, 3, True)
    out += [(f"{h}.cls_head.weight", (classes, MID_CHANNELS, 1, 1)), (f"{h}.cls_head.bias", (classes,))]
    out += _conv_bn(f"{h}.aux_head.0", feat, feat, 1, True)
    out += [(f"{h}.aux_head.1.weight", (classes, feat, 1, 1)), (f"{h}.aux_head.1.bias", (classes,))]
    return out


def state_shapes(backbone, classes):
    """{state-dict key: shape} of OCRNet on this backbone with this many classes."""
    return dict(_backbone(backbone) + _head(feat_channels(backbone), classes))


def params(backbone, classes):
    return sum(math.prod(s) for s in state_shapes(backbone, classes).values())


def identify(shapes):
    """(backbone, classes) of a state dict's {key: shape}, or None: the one
    family member whose keys and shapes it has."""
    cls = shapes.get("head.cls_head.weight")
    if not cls or len(cls) != 4:
        return None
    # the smaller HRNets' keys are a subset of the larger ones' (fewer blocks,
    # same widths): a member fits when every key of it matches and the
    # checkpoint has no model key beyond them (other entries, bookkeeping, may be there)
    model_keys = {k for k in shapes if k.startswith(("backbone.", "head."))}
    for backbone in BACKBONES:
        expected = state_shapes(backbone, cls[0])
        if model_keys == set(expected) and all(tuple(shapes[k]) == tuple(v) for k, v in expected.items()):
            return backbone, cls[0]
    return None


def nearest(shapes):
    """Why a state dict's {key: shape} is no member, told against the member
    it is nearest to (fewest keys missing, extra or of another shape): one
    phrase naming that member and the first difference."""
    cls = shapes.get("head.cls_head.weight")
    classes = cls[0] if cls and len(cls) == 4 and isinstance(cls[0], int) and 0 < cls[0] <= 4096 else 19
    model_keys = {k for k in shapes if k.startswith(("backbone.", "head."))}
    best = None
    for backbone in BACKBONES:
        expected = state_shapes(backbone, classes)
        missing = [k for k in expected if k not in model_keys]
        extra = sorted(model_keys - set(expected))
        differ = [k for k in expected if k in model_keys and tuple(shapes[k]) != tuple(expected[k])]
        score = len(missing) + len(extra) + len(differ)
        if best is None or score < best[0]:
            best = (score, backbone, expected, missing, extra, differ)
    _, backbone, expected, missing, extra, differ = best
    parts = []
    if missing:
        parts.append(f"lacks {len(missing)} of its keys (first: {missing[0]})")
    if extra:
        parts.append(f"has {len(extra)} key(s) it does not (first: {extra[0]})")
    if differ:
        k = differ[0]
        parts.append(f"has {len(differ)} shape(s) of its keys differing (first: {k} {tuple(shapes[k])} != "
                     f"{tuple(expected[k])})")
    return f"nearest member OCRNet-{backbone} with {classes} classes: the checkpoint " + "; ".join(parts)


def flops(backbone, classes, height=512, width=1024):
    """Multiply-accumulates as paddle.flops counts them (Conv2D: output
    elements x (input channels x kernel area + bias); BatchNorm: 2 x output
    elements), for an input of height x width (multiples of 32)."""
    shapes = state_shapes(backbone, classes)
    total = 0
    for key, shape in shapes.items():
        if not key.endswith(("_conv.weight", "cls_head.weight", "aux_head.1.weight")):
            continue
        if ".f_object." in key or ".f_down." in key:
            out_pixels = classes   # the object regions: one descriptor per class, [N, C, classes, 1]
        else:
            scale = _stride(key)
            out_pixels = (height // scale) * (width // scale)
        bias = 1 if key[:-len("weight")] + "bias" in shapes else 0
        total += out_pixels * shape[0] * (shape[1] * shape[2] * shape[3] + bias)
        if key.endswith("_conv.weight"):
            total += 2 * out_pixels * shape[0]   # its BatchNorm
    return total


def _stride(key):
    """The output stride of the conv a state-dict key belongs to."""
    if key.startswith("backbone.conv_layer1_1"):
        return 2
    if key.startswith("head.") or key.startswith(("backbone.conv_layer1_2", "backbone.la1")):
        return 4
    if ".transition_" in key:
        return 4 * 2 ** (int(key.split(".transition_")[1].split("_layer_")[1].split(".")[0]) - 1)
    if "_branch_layer_" in key:
        return 4 * 2 ** (int(key.split("_branch_layer_")[1].split("_")[0]) - 1)
    # fuse: residual_<name>_layer_<i>_<j>[_<k>]; a j > i path is a 1x1 at branch j's resolution,
    # a j < i path's k-th conv halves branch j's resolution k times
    i, j, *k = (int(v) for v in key.split(".fuse_func.residual_")[1].split(".")[0].split("_layer_")[1].split("_"))
    return 4 * 2 ** (j - 1) if j > i else 4 * 2 ** (j - 1 + k[0])
