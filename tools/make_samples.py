"""Draw street-like scenes (2048x1024), and the label map of each.

They are procedural drawings made by this project, not photographs: sky,
buildings with windows, road with lane marks, sidewalk, trees, poles, signs,
traffic lights, cars and people, with a little seeded noise so that textures
are not flat. Every shape is drawn twice, in colour on the image and as its
Cityscapes class on a label map, so each scene comes with its ground truth.

    python tools/make_samples.py
        regenerates the bundled samples, converter/samples/street_{1,2,3}.jpg
    python tools/make_samples.py --output ROOT --seeds 100 101 [--split val]
        writes a labelled set in the Cityscapes layout:
        ROOT/leftImg8bit/<split>/synthetic/<stem>_leftImg8bit.png and
        ROOT/gtFine/<split>/synthetic/<stem>_gtFine_labelIds.png (labelIds)

The output depends only on the seeds and the Pillow/numpy versions; the label
maps consume no random numbers, so the bundled images keep their bytes.
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

W, H = 2048, 1024
HORIZON = 430
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "converter", "samples")
CITY = "synthetic"

# Cityscapes labelIds of the classes drawn (labelId, as the official table's
# trainId: road 0, sidewalk 1, building 2, pole 5, traffic light 6, traffic
# sign 7, vegetation 8, sky 10, person 11, car 13).
ROAD, SIDEWALK, BUILDING, POLE, LIGHT, SIGN, VEGETATION, SKY, PERSON, CAR = 7, 8, 11, 17, 19, 20, 21, 23, 24, 26


class Pen:
    """Draws each shape on the image in its colour and on the label map as its class."""

    def __init__(self, img, label):
        self.rgb, self.ids = ImageDraw.Draw(img), ImageDraw.Draw(label)

    def __getattr__(self, shape):  # line, ellipse, rectangle, polygon, rounded_rectangle
        def draw(xy, fill, label, **kwargs):
            getattr(self.rgb, shape)(xy, fill=fill, **kwargs)
            getattr(self.ids, shape)(xy, fill=label, **kwargs)
        return draw


def _sky(pen, rng):
    top, bottom = np.array([70, 120, 190]), np.array([190, 210, 235])
    for y in range(HORIZON + 60):
        t = y / (HORIZON + 60)
        pen.line([(0, y), (W, y)], tuple(int(v) for v in top * (1 - t) + bottom * t), SKY)
    for _ in range(rng.integers(3, 7)):
        cx, cy = rng.integers(0, W), rng.integers(20, 200)
        for _ in range(6):
            dx, dy, r = rng.integers(-90, 90), rng.integers(-20, 20), rng.integers(30, 70)
            pen.ellipse([cx + dx - r, cy + dy - r // 2, cx + dx + r, cy + dy + r // 2], (238, 240, 245), SKY)


def _buildings(pen, rng):
    x = -rng.integers(0, 80)
    while x < W:
        w = int(rng.integers(160, 380))
        top = int(rng.integers(60, HORIZON - 80))
        base = tuple(int(v) for v in rng.integers(70, 200, size=3))
        pen.rectangle([x, top, x + w, HORIZON + 80], base, BUILDING)
        win = tuple(max(0, v - 60) for v in base)
        for wy in range(top + 25, HORIZON + 40, 48):
            for wx in range(x + 18, x + w - 30, 44):
                if rng.random() < 0.85:
                    pen.rectangle([wx, wy, wx + 24, wy + 30], win, BUILDING)
        x += w + int(rng.integers(0, 30))


def _road(pen, rng):
    ground = HORIZON + 80
    pen.rectangle([0, ground, W, H], (80, 80, 84), ROAD)
    # sidewalks left and right, converging to the vanishing point
    vp = W // 2 + int(rng.integers(-150, 150))
    pen.polygon([(0, ground), (vp - 330, ground), (-400, H), (0, H)], (165, 150, 150), SIDEWALK)
    pen.polygon([(W, ground), (vp + 330, ground), (W + 400, H), (W, H)], (165, 150, 150), SIDEWALK)
    for i in range(9):
        y0 = ground + (H - ground) * (i / 9) ** 1.6
        y1 = ground + (H - ground) * ((i + 0.5) / 9) ** 1.6
        half0, half1 = 2 + i * 3, 2 + (i + 0.5) * 3
        f0, f1 = (y0 - ground) / (H - ground), (y1 - ground) / (H - ground)
        xa, xb = vp + (W // 2 - vp) * f0, vp + (W // 2 - vp) * f1
        pen.polygon([(xa - half0, y0), (xa + half0, y0), (xb + half1, y1), (xb - half1, y1)],
                    (235, 235, 225), ROAD)  # lane marks are road
    return vp


def _trees_and_poles(pen, rng):
    for _ in range(rng.integers(3, 7)):
        x = int(rng.integers(0, W))
        y = HORIZON + int(rng.integers(40, 140))
        pen.rectangle([x - 8, y - 40, x + 8, y + 120], (90, 60, 30), VEGETATION)  # trunks are vegetation
        for _ in range(8):
            dx, dy, r = rng.integers(-90, 90), rng.integers(-160, -20), rng.integers(40, 80)
            g = int(rng.integers(90, 150))
            pen.ellipse([x + dx - r, y + dy - r, x + dx + r, y + dy + r], (40, g, 35), VEGETATION)
    for _ in range(rng.integers(2, 5)):
        x = int(rng.integers(50, W - 50))
        y = int(rng.integers(HORIZON + 120, HORIZON + 260))
        pen.rectangle([x - 5, y - 330, x + 5, y], (120, 120, 125), POLE)
        if rng.random() < 0.5:
            pen.rectangle([x - 30, y - 330, x + 30, y - 270], (225, 200, 20), SIGN)
        else:
            pen.rectangle([x - 18, y - 360, x + 18, y - 270], (30, 30, 30), LIGHT)
            for k, c in enumerate([(230, 40, 30), (240, 180, 20), (40, 200, 60)]):
                pen.ellipse([x - 12, y - 354 + 30 * k, x + 12, y - 330 + 30 * k], c, LIGHT)


def _cars_and_people(pen, rng, vp):
    for _ in range(rng.integers(3, 6)):
        y = int(rng.integers(HORIZON + 160, H - 80))
        scale = (y - HORIZON) / (H - HORIZON)
        w, h = int(420 * scale), int(170 * scale)
        x = int(vp + rng.integers(-700, 700) * scale) - w // 2
        colour = tuple(int(v) for v in rng.integers(20, 230, size=3))
        pen.rounded_rectangle([x, y - h, x + w, y], colour, CAR, radius=max(2, h // 6))
        pen.rectangle([x + w // 6, y - int(h * 1.45), x + w * 5 // 6, y - h], colour, CAR)
        pen.rectangle([x + w // 5, y - int(h * 1.35), x + w * 4 // 5, y - h - 4], (40, 50, 70), CAR)
        r = max(3, h // 4)
        for cx in (x + w // 5, x + w * 4 // 5):
            pen.ellipse([cx - r, y - r, cx + r, y + r], (15, 15, 15), CAR)
    for _ in range(rng.integers(2, 6)):
        x = int(rng.choice([rng.integers(20, 500), rng.integers(W - 500, W - 20)]))
        y = int(rng.integers(HORIZON + 200, H - 40))
        s = (y - HORIZON) / (H - HORIZON)
        body = tuple(int(v) for v in rng.integers(20, 200, size=3))
        pen.ellipse([x - 14 * s, y - 190 * s, x + 14 * s, y - 160 * s], (220, 180, 150), PERSON)
        pen.rectangle([x - 22 * s, y - 160 * s, x + 22 * s, y - 80 * s], body, PERSON)
        pen.rectangle([x - 18 * s, y - 80 * s, x + 18 * s, y], (40, 40, 80), PERSON)


def make_labelled(seed):
    """(RGB image, label map of Cityscapes labelIds) for one seed."""
    rng = np.random.default_rng(seed)
    img, label = Image.new("RGB", (W, H)), Image.new("L", (W, H), 0)
    pen = Pen(img, label)
    _sky(pen, rng)
    _buildings(pen, rng)
    vp = _road(pen, rng)
    _trees_and_poles(pen, rng)
    _cars_and_people(pen, rng, vp)
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    # Low-frequency noise (drawn at 1/4 size, upsampled) gives texture
    # without the JPEG cost of per-pixel noise.
    small = rng.normal(0, 7, size=(H // 4, W // 4)).astype(np.float32)
    noise = np.asarray(Image.fromarray(small, mode="F").resize((W, H), Image.BILINEAR))[..., None]
    arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr), label


def make(seed):
    return make_labelled(seed)[0]


def write_dataset(root, seeds, split="val"):
    """The scenes of `seeds` in the Cityscapes layout; returns the image paths."""
    images = os.path.join(root, "leftImg8bit", split, CITY)
    labels = os.path.join(root, "gtFine", split, CITY)
    os.makedirs(images, exist_ok=True)
    os.makedirs(labels, exist_ok=True)
    paths = []
    for seed in seeds:
        img, label = make_labelled(seed)
        stem = f"{CITY}_{seed:06d}_000019"
        paths.append(os.path.join(images, f"{stem}_leftImg8bit.png"))
        img.save(paths[-1])
        label.save(os.path.join(labels, f"{stem}_gtFine_labelIds.png"))
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", metavar="ROOT", help="write a labelled Cityscapes-layout set here")
    parser.add_argument("--seeds", type=int, nargs="+", help="one scene per seed (with --output)")
    parser.add_argument("--split", default="val", help="default: %(default)s")
    args = parser.parse_args(argv)
    if args.output:
        if not args.seeds:
            parser.error("--output needs --seeds")
        for path in write_dataset(args.output, args.seeds, args.split):
            print(path)
        return 0
    os.makedirs(OUT, exist_ok=True)
    for seed in (1, 2, 3):
        path = os.path.join(OUT, f"street_{seed}.jpg")
        make(seed).save(path, quality=85, optimize=True)
        print(path, os.path.getsize(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
