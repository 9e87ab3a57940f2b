"""The HRNet backbones of PaddleSeg release-2.3 (widths in converter/family.py),
structured as the release builds them.

Every conv uses padding='same' (for stride 2 on even sizes that pads only the
bottom/right edge, unlike padding=1) and has no bias; sub-layer names follow the
release's naming scheme because the checkpoint keys are derived from them.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from converter.model.layers import ConvBN, ConvBNReLU

# Sums use paddle.add rather than `+`: under paddle.jit.save, `+` on a tensor
# with a dynamic batch dimension calls inspect.stack() for a deprecation
# warning, once per add (~170 here), which made tracing seconds slower.
# Both give the same elementwise_add op.



def _conv_bn(in_ch, out_ch, k, stride=1, relu=True):
    cls = ConvBNReLU if relu else ConvBN
    return cls(in_ch, out_ch, k, stride=stride, padding="same", bias=False)


class BottleneckBlock(nn.Layer):
    def __init__(self, in_ch, filters, downsample):
        super().__init__()
        self.downsample = downsample
        self.conv1 = _conv_bn(in_ch, filters, 1)
        self.conv2 = _conv_bn(filters, filters, 3)
        self.conv3 = _conv_bn(filters, filters * 4, 1, relu=False)
        if downsample:
            self.conv_down = _conv_bn(in_ch, filters * 4, 1, relu=False)

    def forward(self, x):
        residual = self.conv_down(x) if self.downsample else x
        return F.relu(paddle.add(self.conv3(self.conv2(self.conv1(x))), residual))


class BasicBlock(nn.Layer):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = _conv_bn(channels, channels, 3)
        self.conv2 = _conv_bn(channels, channels, 3, relu=False)

    def forward(self, x):
        return F.relu(paddle.add(self.conv2(self.conv1(x)), x))


class Layer1(nn.Layer):
    """Stage 1: bottlenecks (for W48 four, 64 -> 256 channels)."""

    def __init__(self, in_ch=64, filters=64, blocks=4):
        super().__init__()
        self.blocks = []
        for i in range(blocks):
            block = BottleneckBlock(in_ch if i == 0 else filters * 4, filters, i == 0)
            self.blocks.append(self.add_sublayer(f"bb_layer2_{i + 1}", block))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class TransitionLayer(nn.Layer):
    """Adapts branch widths and opens a new, half-resolution branch."""

    def __init__(self, in_chs, out_chs, name):
        super().__init__()
        self.funcs = []
        for i, out_ch in enumerate(out_chs):
            func = None
            if i < len(in_chs):
                if in_chs[i] != out_ch:
                    func = _conv_bn(in_chs[i], out_ch, 3)
            else:
                func = _conv_bn(in_chs[-1], out_ch, 3, stride=2)
            if func is not None:
                self.add_sublayer(f"transition_{name}_layer_{i + 1}", func)
            self.funcs.append(func)

    def forward(self, xs):
        outs = []
        for i, func in enumerate(self.funcs):
            src = xs[i] if i < len(xs) else xs[-1]
            outs.append(src if func is None else func(src))
        return outs


class Branches(nn.Layer):
    def __init__(self, blocks, channels, name):
        super().__init__()
        self.branches = []
        for i, (count, ch) in enumerate(zip(blocks, channels)):
            chain = [self.add_sublayer(f"bb_{name}_branch_layer_{i + 1}_{j + 1}", BasicBlock(ch))
                     for j in range(count)]
            self.branches.append(chain)

    def forward(self, xs):
        outs = []
        for x, chain in zip(xs, self.branches):
            for block in chain:
                x = block(x)
            outs.append(x)
        return outs


class FuseLayers(nn.Layer):
    """Exchanges information between branches.

    Lower-resolution inputs are projected by a 1x1 ConvBN and bilinearly
    upsampled; higher-resolution inputs go through a chain of stride-2 3x3 convs
    (ReLU on all but the last).
    """

    def __init__(self, channels, name):
        super().__init__()
        n = len(channels)
        self.paths = {}
        for i in range(n):
            for j in range(n):
                if j > i:
                    self.paths[(i, j)] = [self.add_sublayer(
                        f"residual_{name}_layer_{i + 1}_{j + 1}",
                        _conv_bn(channels[j], channels[i], 1, relu=False))]
                elif j < i:
                    chain, ch = [], channels[j]
                    for k in range(i - j):
                        last = k == i - j - 1
                        out_ch = channels[i] if last else channels[j]
                        chain.append(self.add_sublayer(
                            f"residual_{name}_layer_{i + 1}_{j + 1}_{k + 1}",
                            _conv_bn(ch, out_ch, 3, stride=2, relu=not last)))
                        ch = out_ch
                    self.paths[(i, j)] = chain
        self.n = n

    def forward(self, xs):
        outs = []
        for i in range(self.n):
            acc = xs[i]
            size = paddle.shape(acc)[-2:]
            for j in range(self.n):
                if j == i:
                    continue
                y = xs[j]
                for layer in self.paths[(i, j)]:
                    y = layer(y)
                if j > i:
                    y = F.interpolate(y, size, mode="bilinear", align_corners=False)
                acc = paddle.add(acc, y)
            outs.append(F.relu(acc))
        return outs


class HighResolutionModule(nn.Layer):
    def __init__(self, blocks, channels, name):
        super().__init__()
        self.branches_func = Branches(blocks, channels, name)
        self.fuse_func = FuseLayers(channels, name)

    def forward(self, xs):
        return self.fuse_func(self.branches_func(xs))


class Stage(nn.Layer):
    def __init__(self, modules, blocks, channels, name):
        super().__init__()
        self.modules_ = [
            self.add_sublayer(f"stage_{name}_{i + 1}",
                              HighResolutionModule(blocks, channels, f"{name}_{i + 1}"))
            for i in range(modules)]

    def forward(self, xs):
        for module in self.modules_:
            xs = module(xs)
        return xs


class HRNet(nn.Layer):
    """Returns one feature map: the four branches upsampled to 1/4 of the input
    and concatenated (for W48, 48+96+192+384 = 720 channels)."""

    def __init__(self, backbone="hrnet_w48"):
        super().__init__()
        from converter.family import STEM_CHANNELS, feat_channels, stage1, stages

        self.feat_channels = [feat_channels(backbone)]
        self.conv_layer1_1 = _conv_bn(3, STEM_CHANNELS, 3, stride=2)
        self.conv_layer1_2 = _conv_bn(STEM_CHANNELS, STEM_CHANNELS, 3, stride=2)
        blocks, filters = stage1(backbone)
        self.la1 = Layer1(STEM_CHANNELS, filters, blocks)
        prev = [filters * 4]
        for idx, (modules, blocks, channels) in enumerate(stages(backbone)):
            name = f"st{idx + 2}"
            setattr(self, f"tr{idx + 1}", TransitionLayer(prev, channels, f"tr{idx + 1}"))
            setattr(self, name, Stage(modules, (blocks,) * len(channels), channels, name))
            prev = channels

    def forward(self, x):
        x = self.la1(self.conv_layer1_2(self.conv_layer1_1(x)))
        xs = self.st2(self.tr1([x]))
        xs = self.st3(self.tr2(xs))
        xs = self.st4(self.tr3(xs))
        size = paddle.shape(xs[0])[2:]
        ups = [F.interpolate(t, size, mode="bilinear", align_corners=False) for t in xs[1:]]
        return [paddle.concat([xs[0]] + ups, axis=1)]
