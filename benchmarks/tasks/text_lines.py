"""Synthetic but realistic text-line crops for the PP-OCR tasks: words, numbers, codes, dates and prices
rendered with the DejaVu fonts, with random size, colors, margins, offset and a little noise."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
         "DejaVuSansCondensed.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSans-Oblique.ttf")
WORDS = ["invoice", "total", "amount", "date", "order", "number", "street", "station", "account", "price", "market", "coffee", "garden", "window", "summer", "winter", "river", "mountain", "school", "hospital", "library", "office", "ticket", "airport", "train", "bridge", "energy", "water", "music", "house", "paper", "review", "delivery", "customer", "service", "receipt", "payment", "address", "phone", "email", "report", "weekly", "monthly", "sales", "open", "closed", "exit", "entrance", "parking", "hotel", "room", "floor", "level", "north", "south", "east", "west", "city", "center", "park", "road", "avenue", "main", "square"]


@cache
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_DIR / name), size)


def random_text(rng: np.random.Generator) -> str:
    """One line of at most ~16 characters: words, numbers, a date, a price or an alphanumeric code."""
    kind = rng.integers(6)
    word = lambda: str(rng.choice(WORDS))
    if kind == 0:
        return f"{word()} {word()}"[:16].strip()
    if kind == 1:
        return word().capitalize() + " " + str(rng.integers(1, 999))
    if kind == 2:
        return str(rng.integers(10 ** rng.integers(3, 9), 10 ** 9))[:int(rng.integers(4, 11))]
    if kind == 3:
        return f"{rng.integers(1, 29):02d}/{rng.integers(1, 13):02d}/{rng.integers(1990, 2030)}"
    if kind == 4:
        return f"${rng.integers(1, 9999)}.{rng.integers(0, 100):02d}"
    letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
    return "".join(rng.choice(list(letters), 3)) + "-" + str(rng.integers(100, 99999))


def render(text: str, rng: np.random.Generator) -> np.ndarray:
    """The text as a tight crop (H x W x 3 uint8, BGR like rapidocr's cv2 images; gray here)."""
    font = _font(str(rng.choice(FONTS)), int(rng.integers(22, 40)))
    left, top, right, bottom = font.getbbox(text)
    margin = rng.integers(2, 10, size=4)  # left, top, right, bottom
    width, height = right - left + margin[0] + margin[2], bottom - top + margin[1] + margin[3]
    background, ink = int(rng.integers(170, 256)), int(rng.integers(0, 90))
    image = Image.new("L", (int(width), int(height)), background)
    ImageDraw.Draw(image).text((margin[0] - left, margin[1] - top), text, fill=ink, font=font)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (int(height), int(width)))
    return np.repeat(np.clip(pixels, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def to_input(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """rapidocr's resize_norm_img: resize to `height` keeping the aspect (at most `width` wide),
    (x/255 - 0.5)/0.5, CHW, zero-padded on the right to `width`."""
    h, w = image.shape[:2]
    resized_w = min(width, math.ceil(height * w / h))
    resized = np.asarray(Image.fromarray(image).resize((resized_w, height), Image.BILINEAR), dtype=np.float32)
    out = np.zeros((3, height, width), dtype=np.float32)
    out[:, :, :resized_w] = (resized.transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return out
