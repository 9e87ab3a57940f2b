"""Our own Paddle implementation of PaddleSeg release-2.3 OCRNet + HRNet_W48."""
from converter.util.paddle_env import import_paddle

import_paddle()
from converter.model.ocrnet import NUM_CLASSES, InferenceWrapper, OCRNet


def build_model(num_classes=NUM_CLASSES, eval_mode=True):
    """num_classes: the config's; the release-2.3 checkpoint has 19."""
    model = OCRNet(num_classes)
    if eval_mode:
        model.eval()
    return model


__all__ = ["NUM_CLASSES", "InferenceWrapper", "OCRNet", "build_model"]
