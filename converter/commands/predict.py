"""predict: segment images with any backend, write class, colour and overlay PNGs.

Each image is decoded to 8-bit RGB (grayscale and palette converted, RGBA
composited on black, 16-bit refused: see images.load_rgb), resized with
bilinear interpolation to the model's input size, segmented, and the class map
is brought back to the image's own size with nearest-neighbour.
"""
import contextlib
import os

import numpy as np

from converter.backends import get, open_backend
from converter.data.cityscapes import colorize
from converter.data.images import input_contract, prepare, resize_rgb
from converter.errors import ConverterError
from converter.records import check_classes, converted_input_shape, verified_record


class Segmenter:
    """One backend of the registry, loaded once; segment(rgb) -> int class
    map at rgb's size."""

    def __init__(self, config, workdir, name, threads=2):
        backend = get(name)
        verified_record(workdir, backend.stage)
        check_classes(workdir, config)
        shape = converted_input_shape(workdir, config)
        self.size = (shape[3], shape[2])
        self.runner = open_backend(backend, workdir, config, threads)
        self.contract = input_contract(config, backend.side)
        self.output = backend.output_name(config)

    def segment(self, rgb):
        from PIL import Image

        out = self.runner.infer(prepare(resize_rgb(rgb, *self.size), self.contract))
        classes = out[self.output][0].astype(np.uint8)
        if classes.shape != rgb.shape[:2]:
            classes = np.asarray(Image.fromarray(classes).resize((rgb.shape[1], rgb.shape[0]), Image.NEAREST))
        return classes


def write_outputs(rgb, classes, output_dir, stem, palette):
    """<stem>_classes.png, _color.png and _overlay.png, all three or none:
    each is encoded in memory first, and a failed write (a full disk)
    removes the ones already written for this image."""
    import io

    from PIL import Image

    from converter.util.fsutil import write_bytes_atomic

    colour = colorize(classes, palette)
    # 50/50 blend of image and colour mask, as the Open Model Zoo demo shows it.
    overlay = ((rgb.astype(np.uint16) + colour) // 2).astype(np.uint8)
    encoded = []
    for suffix, array in (("classes", classes), ("color", colour), ("overlay", overlay)):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        encoded.append((os.path.join(output_dir, f"{stem}_{suffix}.png"), buf.getvalue()))
    written = []
    try:
        for path, data in encoded:
            write_bytes_atomic(path, data)
            written.append(path)
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    return written


def class_shares(classes, class_names):
    counts = np.bincount(classes.ravel(), minlength=len(class_names))[: len(class_names)]
    return {class_names[i]: float(c / classes.size) for i, c in enumerate(counts) if c}


def run_predict(config, workdir, *, images, backend, output_dir, threads=2, log=print):
    from converter.data.images import expand_image_args, load_rgb

    paths = expand_image_args(images)
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    if len(set(stems)) != len(stems):
        raise ConverterError("two input images share a file name stem; their outputs would collide")
    for path in paths:   # a bad file fails before any work; one decoded image in memory at a time
        load_rgb(path)
    segmenter = Segmenter(config, workdir, backend, threads)
    os.makedirs(output_dir, exist_ok=True)
    written, shares = [], {}
    for path, stem in zip(paths, stems):
        rgb = load_rgb(path)
        classes = segmenter.segment(rgb)
        written += write_outputs(rgb, classes, output_dir, stem, config.palette)
        shares[os.path.basename(path)] = class_shares(classes, config.class_names)
        top = sorted(shares[os.path.basename(path)].items(), key=lambda kv: -kv[1])
        log(f"{path} ({rgb.shape[1]}x{rgb.shape[0]}): " + ", ".join(f"{k} {v:.1%}" for k, v in top))
    from converter.stages import StageResult

    return StageResult("predict", written, {"stage": "predict", "backend": backend, "shares": shares})
