"""Our own Paddle implementation of PaddleSeg release-2.3 OCRNet on its HRNets."""
from converter.util.paddle_env import import_paddle

import_paddle()   # before paddle's first import below: signals held (util/paddle_env)
from converter.model.ocrnet import NUM_CLASSES, InferenceWrapper, OCRNet  # noqa: E402


def build_model(num_classes=NUM_CLASSES, eval_mode=True, backbone="hrnet_w48"):
    """num_classes and backbone: the config's (converter/family.py names them)."""
    model = OCRNet(num_classes, backbone)
    if eval_mode:
        model.eval()
    return model


__all__ = ["NUM_CLASSES", "InferenceWrapper", "OCRNet", "build_model"]
