"""An inference model exported the way PaddleSeg's tools/export.py does it,
for the tests of a user's own model (`init --inference-model`).

PaddleSeg wraps the network, applies the output op (argmax over the classes
as int32, softmax over them, or nothing), and saves with paddle.jit.save,
which appends an identity `scale` op to the output and keeps the op call
stacks; deploy.yaml names the files, the Normalize transform, the input
shape and the output op. None of our own export's normalisation is applied.

    python -m tests.paddleseg_export OUT --backbone hrnet_w18 --classes 7 --output-op softmax
"""
import argparse
import os
import sys

from converter.util.paddle_env import import_paddle

paddle = import_paddle()
import paddle.nn.functional as F  # noqa: E402  (dy2static resolves the saved forward's names here)


def export(folder, backbone="hrnet_w18", classes=7, output_op="argmax", seed=0, mean=(0.5,) * 3, std=(0.5,) * 3,
           input_shape=(-1, 3, -1, -1)):
    from paddle.static import InputSpec

    from converter.config import load_config
    from converter.data.images import input_contract
    from converter.model import build_model
    from converter.weights.synthetic import cached_synthetic_state_dict
    from converter.util.cache import default_cache_dir

    net = build_model(classes, backbone=backbone)
    cached_synthetic_state_dict(net, seed, input_contract(load_config(), "original"), default_cache_dir(),
                                log=lambda *a: None)

    class Saved(paddle.nn.Layer):
        def __init__(self, net, op):
            super().__init__()
            self.net, self.op = net, op

        def forward(self, x):
            out = self.net(x)[0]
            if self.op == "argmax":
                out = paddle.argmax(out, axis=1, dtype="int32")
            elif self.op == "softmax":
                out = F.softmax(out, axis=1)
            return out

    saved = Saved(net, output_op)
    saved.eval()
    os.makedirs(folder, exist_ok=True)
    paddle.jit.save(saved, os.path.join(folder, "model"), input_spec=[InputSpec(list(input_shape), "float32", "x")])
    with open(os.path.join(folder, "deploy.yaml"), "w") as fh:
        fh.write("Deploy:\n  input_shape:\n" + "".join(f"  - {v}\n" for v in input_shape)
                 + "  model: model.pdmodel\n  output_dtype: float32\n"
                 + f"  output_op: {output_op}\n  params: model.pdiparams\n  transforms:\n  - type: Normalize\n"
                 + (f"    mean: {list(mean)}\n    std: {list(std)}\n" if tuple(mean) != (0.5,) * 3 else ""))
    return folder


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("--backbone", default="hrnet_w18")
    p.add_argument("--classes", type=int, default=7)
    p.add_argument("--output-op", default="argmax")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(export(a.folder, a.backbone, a.classes, a.output_op, a.seed))
    sys.exit(0)
