"""predict: segment images with any backend, write class, colour and overlay PNGs.

Each image is decoded to 8-bit RGB (grayscale and palette converted, RGBA
composited on black, 16-bit refused: see images.load_rgb), resized with
bilinear interpolation to the model's input size, segmented, and the class map
is brought back to the image's own size with nearest-neighbour.
"""
import os

import numpy as np

from converter.data.cityscapes import CLASSES, colorize
from converter.errors import ConverterError
from converter.util.fsutil import write_png_atomic
from converter.data.images import bgr_nchw, normalized_rgb_nchw, resize_rgb
from converter.records import ONNX_PATH, converted_input_shape, ir_path, verified_record

BACKENDS = ("paddle", "onnx", "openvino")


class Segmenter:
    """One backend, loaded once; segment(rgb) -> int class map at rgb's size."""

    def __init__(self, workdir, backend, threads=2):
        from converter.runners import make_runner

        if backend not in BACKENDS:
            raise ConverterError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
        verified_record(workdir, {"paddle": "export", "onnx": "onnx", "openvino": "openvino"}[backend])
        shape = converted_input_shape(workdir)
        self.size = (shape[3], shape[2])
        if backend == "paddle":
            self.runner = make_runner("paddle", os.path.join(workdir, "paddle"), threads=threads)
            self.prepare = normalized_rgb_nchw
        elif backend == "onnx":
            self.runner = make_runner("onnxruntime", os.path.join(workdir, ONNX_PATH), threads=threads)
            self.prepare = bgr_nchw
        else:
            self.runner = make_runner("openvino", os.path.join(workdir, ir_path("FP32")), threads=threads,
                                      precision="f32")
            self.prepare = bgr_nchw

    def segment(self, rgb):
        from PIL import Image

        x = self.prepare(resize_rgb(rgb, *self.size))
        out = self.runner.infer(x)
        classes = out.get("argmax_0.tmp_0", next(iter(out.values())))[0].astype(np.uint8)
        if classes.shape != rgb.shape[:2]:
            classes = np.asarray(Image.fromarray(classes).resize((rgb.shape[1], rgb.shape[0]), Image.NEAREST))
        return classes


def write_outputs(rgb, classes, output_dir, stem):
    colour = colorize(classes)
    # 50/50 blend of image and colour mask, as the Open Model Zoo demo shows it.
    overlay = ((rgb.astype(np.uint16) + colour) // 2).astype(np.uint8)
    paths = []
    for suffix, array in (("classes", classes), ("color", colour), ("overlay", overlay)):
        path = os.path.join(output_dir, f"{stem}_{suffix}.png")
        write_png_atomic(path, array)
        paths.append(path)
    return paths


def class_shares(classes):
    counts = np.bincount(classes.ravel(), minlength=len(CLASSES))[: len(CLASSES)]
    return {CLASSES[i]: float(c / classes.size) for i, c in enumerate(counts) if c}


def run_predict(config, workdir, images, backend, output_dir, threads=2, log=print):
    from converter.data.images import expand_image_args, load_rgb

    paths = expand_image_args(images)
    decoded = [(p, load_rgb(p)) for p in paths]  # fail on a bad file before any work
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    if len(set(stems)) != len(stems):
        raise ConverterError("two input images share a file name stem; their outputs would collide")
    segmenter = Segmenter(workdir, backend, threads)
    os.makedirs(output_dir, exist_ok=True)
    written, shares = [], {}
    for (path, rgb), stem in zip(decoded, stems):
        classes = segmenter.segment(rgb)
        written += write_outputs(rgb, classes, output_dir, stem)
        shares[os.path.basename(path)] = class_shares(classes)
        top = sorted(shares[os.path.basename(path)].items(), key=lambda kv: -kv[1])
        log(f"{path} ({rgb.shape[1]}x{rgb.shape[0]}): " + ", ".join(f"{k} {v:.1%}" for k, v in top))
    return written, {"stage": "predict", "backend": backend, "shares": shares}
