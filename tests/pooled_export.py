"""A small segmentation net with a pyramid of adaptive average pools (the
context module of PP-LiteSeg and PSPNet: pool to 1x1, 2x2 and 4x4, 1x1 conv,
resize back to the feature size, sum), exported as PaddleSeg's export.py
exports (dynamic [-1, 3, -1, -1] input, argmax as int32, jit.save).

paddle2onnx 1.3.1 maps such a pool of an input of unknown size to an
AveragePool with strides 0, which ONNX's shape inference refuses (PP-LiteSeg,
Paddle2ONNX#1139): the test of the onnx stage's static-input route.

    python -m tests.pooled_export OUT [--classes 5]
"""
import argparse
import os
import sys

from converter.util.paddle_env import import_paddle

paddle = import_paddle()
import paddle.nn as nn  # noqa: E402
import paddle.nn.functional as F  # noqa: E402  (dy2static resolves the saved forward's names here)


class PooledNet(nn.Layer):
    def __init__(self, classes, width=16, bins=(1, 2, 4)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2D(3, width, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2D(width, width, 3, stride=2, padding=1), nn.ReLU())
        self.pools = nn.LayerList([nn.Sequential(nn.AdaptiveAvgPool2D(b), nn.Conv2D(width, width, 1))
                                   for b in bins])
        self.cls = nn.Conv2D(width, classes, 1)

    def forward(self, x):
        feat = self.stem(x)
        size = paddle.shape(feat)[2:]
        context = feat
        for pool in self.pools:
            context = context + F.interpolate(pool(feat), size, mode="bilinear", align_corners=False)
        logits = self.cls(F.relu(context))
        logits = F.interpolate(logits, paddle.shape(x)[2:], mode="bilinear", align_corners=False)
        return paddle.argmax(logits, axis=1, dtype="int32")


def export(folder, classes=5, seed=0):
    from paddle.static import InputSpec

    paddle.seed(seed)
    net = PooledNet(classes)
    net.eval()
    os.makedirs(folder, exist_ok=True)
    paddle.jit.save(net, os.path.join(folder, "model"), input_spec=[InputSpec([-1, 3, -1, -1], "float32", "x")])
    with open(os.path.join(folder, "deploy.yaml"), "w") as fh:
        fh.write("Deploy:\n  model: model.pdmodel\n  output_dtype: int32\n  output_op: argmax\n"
                 "  params: model.pdiparams\n  transforms:\n  - type: Normalize\n")
    return folder


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("--classes", type=int, default=5)
    a = p.parse_args()
    print(export(a.folder, a.classes))
    sys.exit(0)
