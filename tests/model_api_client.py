"""Run an IR through OpenVINO Model API, as a user of the package would.

Usage: python model_api_client.py MODEL.xml IMAGE CLASSES.npy
Writes Model API's hard prediction to CLASSES.npy and prints one JSON line
(wrapper class, shapes). Run in its own process: it imports OpenCV, which
must not share a process with paddle. Inference is pinned to f32 through the
adapter's plugin config, so the comparison with our f32 backend is exact up
to near-ties.
"""
import json
import sys

import cv2
import numpy as np
from model_api.adapters import OpenvinoAdapter, create_core
from model_api.models import SegmentationModel


def main(xml, image, out):
    adapter = OpenvinoAdapter(create_core(), xml, device="CPU",
                              plugin_config={"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2})
    model = SegmentationModel.create_model(adapter, preload=True)
    bgr = cv2.imread(image, cv2.IMREAD_COLOR)
    result = model(bgr)
    np.save(out, np.asarray(result.resultImage))
    print(json.dumps({"wrapper": type(model).__name__, "labels": [model.get_label_name(i) for i in (0, 6, 18)],
                      "hard": list(result.resultImage.shape), "soft": list(result.soft_prediction.shape)}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
