"""Image input: safe decoding with Pillow, resizing and the two tensor layouts.

Pillow rather than OpenCV: importing cv2 after paddle once crashed in zlib here.
"""
from __future__ import annotations

import glob
import hashlib
import io
import os
import stat
import warnings

import numpy as np
from typing import Iterable, Sequence, TYPE_CHECKING

from converter.config import package_path
from converter.errors import ConverterError

SAMPLES_DIR = package_path("samples")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
# Pillow's own bomb guard warns at ~89 Mpx; a Cityscapes frame is 2 Mpx.
MAX_PIXELS = 64 * 1024 * 1024

if TYPE_CHECKING:
    from converter.config import ModelConfig


def sample_images() -> list[str]:
    return sorted(glob.glob(os.path.join(SAMPLES_DIR, "*.jpg")))


def expand_image_args(items: Iterable[str]) -> list[str]:
    """Files stay as given; folders contribute their regular image files,
    sorted (a FIFO or device named like an image is skipped, not read)."""
    paths = []
    for item in items:
        if os.path.isdir(item):
            with os.scandir(item) as entries:
                found = sorted(e.path for e in entries
                               if e.name.lower().endswith(IMAGE_EXTS) and e.is_file())
            if not found:
                raise ConverterError(f"no images in folder {item}")
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        elif os.path.exists(item):
            raise ConverterError(f"{item}: not a regular file or folder")
        else:
            raise ConverterError(f"image not found: {item}")
    return paths


def image_ids(paths: Sequence[str]) -> list[str]:
    """A unique key per image for reports and file names: the file name
    (non-printable characters escaped: a name may not start a report line of
    its own), or, when two inputs share one, the file name plus a hash of the
    full path."""
    from converter.util.text import shown

    names = [shown(os.path.basename(p)) for p in paths]
    out = []
    for path, name in zip(paths, names):
        if names.count(name) > 1:
            stem, ext = os.path.splitext(name)
            digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:8]
            name = f"{stem}~{digest}{ext}"
        out.append(name)
    return out


def _bits_per_sample(img, path, data=None):
    """Bit depth Pillow hides: it opens a 16-bit RGB PNG as 8-bit "RGB"."""
    if img.format == "PNG":
        if data is not None:
            head = data[:25]
        else:
            with open(path, "rb") as fh:
                head = fh.read(25)
        return head[24] if len(head) == 25 and head[12:16] == b"IHDR" else 8
    if img.format == "TIFF":
        bits = img.tag_v2.get(258, (8,))
        return max(bits) if isinstance(bits, tuple) else int(bits)
    return 8


def load_rgb(path: str, data: bytes | None = None) -> np.ndarray:
    """Decode an 8-bit RGB image as uint8 HxWx3 (from data, its bytes, when
    given; path then only names it in messages).

    Grayscale and palette images are converted to RGB; RGBA is composited on
    black (alpha dropped). 16-bit and float images are refused, since scaling
    them to 8 bit silently would change what the model sees.
    """
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        if data is None and not stat.S_ISREG(os.stat(path).st_mode):
            raise ConverterError(f"{path}: not a regular file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if data is not None else path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ConverterError(f"{path}: {img.width}x{img.height} is too large (decompression bomb?)")
                if img.mode in ("I;16", "I;16B", "I;16L", "I", "F") or _bits_per_sample(img, path, data) > 8:
                    raise ConverterError(f"{path}: 16-bit or float images are not supported; use 8-bit RGB")
                img.load()
                img = ImageOps.exif_transpose(img)  # the camera's orientation, as viewers show it
                if img.mode == "RGBA" or img.mode == "LA" or (img.mode == "P" and "transparency" in img.info):
                    img = img.convert("RGBA")
                    img = Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), img)
                rgb = img.convert("RGB")
                return np.asarray(rgb, dtype=np.uint8).copy()
    except ConverterError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ConverterError(f"{path}: image is too large (decompression bomb?)") from None
    except FileNotFoundError:
        raise ConverterError(f"image not found: {path}") from None
    except Exception as exc:
        why = str(exc).splitlines()[0] if str(exc) else ""
        raise ConverterError(f"{path}: not a readable image ({type(exc).__name__}: {why})") from None


def resize_rgb(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize (Pillow's BILINEAR, which widens its kernel when
    shrinking, i.e. antialiases)."""
    from PIL import Image

    if rgb.shape[1] == width and rgb.shape[0] == height:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))


def input_contract(config: ModelConfig, which: str) -> dict:
    """What a model of the given side ("original" or "converted") is fed, from
    the config: channel order, and (v - mean) / scale per channel in the
    original's channel order (the converted models take raw 0..255: their
    normalisation is inside the graph). A plain dict, so that worker
    processes receive it in their spec."""
    if which == "original":
        return {"color": config.original_input.color, "mean": list(config.mean), "scale": list(config.scale)}
    return {"color": config.converted_input.color, "mean": [0.0] * 3, "scale": [1.0] * 3}


def prepare(rgb: np.ndarray, contract: dict) -> np.ndarray:
    """uint8 RGB HxWx3 -> float32 [1, 3, H, W] as the contract says."""
    x = rgb if contract["color"] == "RGB" else rgb[:, :, ::-1]
    x = x.astype(np.float32).transpose(2, 0, 1)[None]
    mean, scale = np.asarray(contract["mean"], np.float32), np.asarray(contract["scale"], np.float32)
    if mean.any() or (scale != 1).any():
        if contract["color"] != "RGB":
            mean, scale = mean[::-1], scale[::-1]  # the config states them in RGB order
        x = (x - mean[None, :, None, None]) / scale[None, :, None, None]
    return np.ascontiguousarray(x)
