"""Draw the bundled street-like sample images (2048x1024 JPEG).

They are procedural drawings made by this project, not photographs: sky,
buildings with windows, road with lane marks, sidewalk, trees, poles, signs,
cars and people, with a little seeded noise so that textures are not flat.
Run `python tools/make_samples.py` to regenerate; the output depends only on the
seeds below and the Pillow/numpy versions.
"""
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

W, H = 2048, 1024
HORIZON = 430
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "converter", "samples")


def _sky(draw, rng):
    top, bottom = np.array([70, 120, 190]), np.array([190, 210, 235])
    for y in range(HORIZON + 60):
        t = y / (HORIZON + 60)
        draw.line([(0, y), (W, y)], fill=tuple(int(v) for v in top * (1 - t) + bottom * t))
    for _ in range(rng.integers(3, 7)):
        cx, cy = rng.integers(0, W), rng.integers(20, 200)
        for _ in range(6):
            dx, dy, r = rng.integers(-90, 90), rng.integers(-20, 20), rng.integers(30, 70)
            draw.ellipse([cx + dx - r, cy + dy - r // 2, cx + dx + r, cy + dy + r // 2],
                         fill=(238, 240, 245))


def _buildings(draw, rng):
    x = -rng.integers(0, 80)
    while x < W:
        w = int(rng.integers(160, 380))
        top = int(rng.integers(60, HORIZON - 80))
        base = tuple(int(v) for v in rng.integers(70, 200, size=3))
        draw.rectangle([x, top, x + w, HORIZON + 80], fill=base)
        win = tuple(max(0, v - 60) for v in base)
        for wy in range(top + 25, HORIZON + 40, 48):
            for wx in range(x + 18, x + w - 30, 44):
                if rng.random() < 0.85:
                    draw.rectangle([wx, wy, wx + 24, wy + 30], fill=win)
        x += w + int(rng.integers(0, 30))


def _road(draw, rng):
    ground = HORIZON + 80
    draw.rectangle([0, ground, W, H], fill=(80, 80, 84))
    # sidewalks left and right, converging to the vanishing point
    vp = W // 2 + int(rng.integers(-150, 150))
    draw.polygon([(0, ground), (vp - 330, ground), (-400, H), (0, H)], fill=(165, 150, 150))
    draw.polygon([(W, ground), (vp + 330, ground), (W + 400, H), (W, H)], fill=(165, 150, 150))
    for i in range(9):
        y0 = ground + (H - ground) * (i / 9) ** 1.6
        y1 = ground + (H - ground) * ((i + 0.5) / 9) ** 1.6
        half0, half1 = 2 + i * 3, 2 + (i + 0.5) * 3
        f0, f1 = (y0 - ground) / (H - ground), (y1 - ground) / (H - ground)
        xa, xb = vp + (W // 2 - vp) * f0, vp + (W // 2 - vp) * f1
        draw.polygon([(xa - half0, y0), (xa + half0, y0), (xb + half1, y1), (xb - half1, y1)],
                     fill=(235, 235, 225))
    return vp


def _trees_and_poles(draw, rng):
    for _ in range(rng.integers(3, 7)):
        x = int(rng.integers(0, W))
        y = HORIZON + int(rng.integers(40, 140))
        draw.rectangle([x - 8, y - 40, x + 8, y + 120], fill=(90, 60, 30))
        for _ in range(8):
            dx, dy, r = rng.integers(-90, 90), rng.integers(-160, -20), rng.integers(40, 80)
            g = int(rng.integers(90, 150))
            draw.ellipse([x + dx - r, y + dy - r, x + dx + r, y + dy + r], fill=(40, g, 35))
    for _ in range(rng.integers(2, 5)):
        x = int(rng.integers(50, W - 50))
        y = int(rng.integers(HORIZON + 120, HORIZON + 260))
        draw.rectangle([x - 5, y - 330, x + 5, y], fill=(120, 120, 125))
        if rng.random() < 0.5:
            draw.rectangle([x - 30, y - 330, x + 30, y - 270], fill=(225, 200, 20))
        else:
            draw.rectangle([x - 18, y - 360, x + 18, y - 270], fill=(30, 30, 30))
            for k, c in enumerate([(230, 40, 30), (240, 180, 20), (40, 200, 60)]):
                draw.ellipse([x - 12, y - 354 + 30 * k, x + 12, y - 330 + 30 * k], fill=c)


def _cars_and_people(draw, rng, vp):
    for _ in range(rng.integers(3, 6)):
        y = int(rng.integers(HORIZON + 160, H - 80))
        scale = (y - HORIZON) / (H - HORIZON)
        w, h = int(420 * scale), int(170 * scale)
        x = int(vp + rng.integers(-700, 700) * scale) - w // 2
        colour = tuple(int(v) for v in rng.integers(20, 230, size=3))
        draw.rounded_rectangle([x, y - h, x + w, y], radius=max(2, h // 6), fill=colour)
        draw.rectangle([x + w // 6, y - int(h * 1.45), x + w * 5 // 6, y - h], fill=colour)
        draw.rectangle([x + w // 5, y - int(h * 1.35), x + w * 4 // 5, y - h - 4],
                       fill=(40, 50, 70))
        r = max(3, h // 4)
        for cx in (x + w // 5, x + w * 4 // 5):
            draw.ellipse([cx - r, y - r, cx + r, y + r], fill=(15, 15, 15))
    for _ in range(rng.integers(2, 6)):
        x = int(rng.choice([rng.integers(20, 500), rng.integers(W - 500, W - 20)]))
        y = int(rng.integers(HORIZON + 200, H - 40))
        s = (y - HORIZON) / (H - HORIZON)
        body = tuple(int(v) for v in rng.integers(20, 200, size=3))
        draw.ellipse([x - 14 * s, y - 190 * s, x + 14 * s, y - 160 * s], fill=(220, 180, 150))
        draw.rectangle([x - 22 * s, y - 160 * s, x + 22 * s, y - 80 * s], fill=body)
        draw.rectangle([x - 18 * s, y - 80 * s, x + 18 * s, y], fill=(40, 40, 80))


def make(seed):
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (W, H))
    draw = ImageDraw.Draw(img)
    _sky(draw, rng)
    _buildings(draw, rng)
    vp = _road(draw, rng)
    _trees_and_poles(draw, rng)
    _cars_and_people(draw, rng, vp)
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    # Low-frequency noise (drawn at 1/4 size, upsampled) gives texture
    # without the JPEG cost of per-pixel noise.
    small = rng.normal(0, 7, size=(H // 4, W // 4)).astype(np.float32)
    noise = np.asarray(Image.fromarray(small, mode="F").resize((W, H), Image.BILINEAR))[..., None]
    arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def main():
    os.makedirs(OUT, exist_ok=True)
    for seed in (1, 2, 3):
        path = os.path.join(OUT, f"street_{seed}.jpg")
        make(seed).save(path, quality=85, optimize=True)
        print(path, os.path.getsize(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
