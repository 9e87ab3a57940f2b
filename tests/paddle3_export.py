"""Paddle 3 PIR exports for the tests, made as users make them (paddle.jit.save
under Paddle 3, full_graph=True), in PaddleSeg's or PaddleX's layout.

    # the project's interpreter: the lite model's synthetic weights as .npz
    python tests/paddle3_export.py state CONFIG OUT.npz
    # the Paddle 3 toolchain's interpreter (.venv/paddle3/bin/python):
    python tests/paddle3_export.py ocrnet BACKBONE CLASSES STATE.npz OUT_DIR LAYOUT OUTPUT_OP
    python tests/paddle3_export.py tiny OUT_DIR LAYOUT OUTPUT_OP
    python tests/paddle3_export.py pooled OUT_DIR LAYOUT OUTPUT_OP [H W]

LAYOUT: paddleseg (model.json, model.pdiparams, deploy.yaml) or paddlex
(inference.json, inference.pdiparams, inference.yml). OUTPUT_OP: argmax,
softmax or none, as PaddleSeg's exporter appends them. `tiny` is a small
network that is not an OCRNet (strided conv-BN-ReLU, average pooling, a
bilinear upsampling, argmax with the class axis kept), seeded. `pooled` is
another, shaped like PP-LiteSeg's head: a depthwise convolution with its
BatchNorm, an attention from an adaptive average pool, and a float constant;
H W export it at that static size (paddle2onnx 2.x converts its adaptive pool
only at a static size).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEMS = {"paddleseg": ("model", "deploy.yaml"), "paddlex": ("inference", "inference.yml")}


def state(config_path, out):
    import numpy as np

    from converter.config import load_config
    from converter.stages.export import build_weighted_model
    from converter.stages.weights import resolve_weights

    config = load_config(config_path)
    model = build_weighted_model(config, resolve_weights(config, "synthetic", seed=0))
    np.savez(out, **{k: v.numpy() for k, v in model.state_dict().items()})


def _head(net, output_op, keepdim):
    import paddle
    import paddle.nn.functional as F

    class Head(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            y = self.net(x)
            if output_op == "argmax":
                return paddle.argmax(y, axis=1, keepdim=keepdim, dtype="int32")
            return F.softmax(y, axis=1) if output_op == "softmax" else y
    return Head()


def _save(layer, out_dir, layout, output_op, hw=None):
    import paddle

    stem, yaml_name = STEMS[layout]
    layer.eval()
    spec = [paddle.static.InputSpec([1, 3, *hw] if hw else [None, 3, None, None], "float32", "x")]
    static = paddle.jit.to_static(layer, input_spec=spec, full_graph=True)
    paddle.jit.save(static, os.path.join(out_dir, stem))
    # as PaddleSeg's exporter writes it: Deploy.model still says .pdmodel
    text = ("Deploy:\n  model: %s.pdmodel\n  params: %s.pdiparams\n  transforms:\n  - type: Normalize\n"
            "    mean: [0.5, 0.5, 0.5]\n    std: [0.5, 0.5, 0.5]\n  output_op: %s\n" % (stem, stem, output_op))
    if layout == "paddlex":
        text = "Global:\n  model_name: test-model\n" + text
    with open(os.path.join(out_dir, yaml_name), "w") as fh:
        fh.write(text)


def ocrnet(backbone, classes, state_path, out_dir, layout, output_op):
    import numpy as np

    from converter.model import InferenceWrapper, build_model
    from converter.util.paddle_env import import_paddle

    paddle = import_paddle()
    model = build_model(int(classes), backbone=backbone)
    with np.load(state_path) as arrays:
        model.set_state_dict({k: paddle.to_tensor(arrays[k]) for k in arrays.files})
    logits = InferenceWrapper(model, True)   # without our argmax: the class scores
    _save(_head(logits, output_op, keepdim=False), out_dir, layout, output_op)


def tiny(out_dir, layout, output_op):
    from converter.util.paddle_env import import_paddle

    paddle = import_paddle()
    nn = paddle.nn
    paddle.seed(0)

    def block(i, o, stride):
        return nn.Sequential(nn.Conv2D(i, o, 3, stride, 1, bias_attr=False), nn.BatchNorm2D(o), nn.ReLU())

    class Tiny(nn.Layer):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(block(3, 16, 2), block(16, 32, 2), nn.AvgPool2D(2, 2), block(32, 32, 1))
            self.cls = nn.Conv2D(32, 7, 1)

        def forward(self, x):
            y = self.cls(self.body(x))
            return nn.functional.interpolate(y, size=paddle.shape(x)[2:], mode="bilinear", align_corners=False)
    net = Tiny()
    for layer in net.sublayers():
        if isinstance(layer, nn.BatchNorm2D):   # BatchNorm that is not the identity
            layer._mean.set_value(paddle.rand(layer._mean.shape) * 0.1)
            layer._variance.set_value(paddle.rand(layer._variance.shape) + 0.5)
    _save(_head(net, output_op, keepdim=True), out_dir, layout, output_op)


def _not_identity(net):
    import paddle

    for layer in net.sublayers():
        if isinstance(layer, paddle.nn.BatchNorm2D):
            layer._mean.set_value(paddle.rand(layer._mean.shape) * 0.1)
            layer._variance.set_value(paddle.rand(layer._variance.shape) + 0.5)


def pooled(out_dir, layout, output_op, *hw):
    from converter.util.paddle_env import import_paddle

    paddle = import_paddle()
    nn = paddle.nn
    paddle.seed(1)

    class Pooled(nn.Layer):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2D(3, 16, 3, 2, 1, bias_attr=False), nn.BatchNorm2D(16), nn.ReLU())
            self.depthwise = nn.Sequential(nn.Conv2D(16, 16, 3, 2, 1, groups=16, bias_attr=False),
                                           nn.BatchNorm2D(16), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2D(2)   # as PP-LiteSeg's pyramid pooling: not a global pool
            self.attention = nn.Conv2D(16, 16, 1)
            self.cls = nn.Conv2D(16, 5, 1)

        def forward(self, x):
            y = self.depthwise(self.stem(x))
            context = nn.functional.interpolate(self.attention(self.pool(y)), size=paddle.shape(y)[2:],
                                                mode="bilinear", align_corners=False)
            y = y * nn.functional.sigmoid(context) * paddle.full([1], 0.5, "float32")
            y = self.cls(y)
            return nn.functional.interpolate(y, size=paddle.shape(x)[2:], mode="bilinear", align_corners=False)
    net = Pooled()
    _not_identity(net)
    _save(_head(net, output_op, keepdim=False), out_dir, layout, output_op, [int(v) for v in hw] or None)


if __name__ == "__main__":
    {"state": state, "ocrnet": ocrnet, "tiny": tiny, "pooled": pooled}[sys.argv[1]](*sys.argv[2:])
