"""Embedded digits-sv suite: sklearn handwritten digits -> SVHN-like rendered house numbers.

The target imitates the Street View House Numbers crops (Netzer et al., "Reading Digits in
Natural Images with Unsupervised Feature Learning", NIPS workshop 2011): a printed digit in
the centre of a 32x32 colour crop, neighbouring digits of the same number partly visible at
the left and right edges, varied fonts, colours and backgrounds, slight rotation and blur.
Everything is rendered from fonts bundled with matplotlib (DejaVu and STIX) and photos
bundled with scikit-learn / scikit-image, so nothing is downloaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from benchmark.registry import SUITES
from benchmark.suite import DomainData, Split
from suites._photos import random_crops
from suites.digits import Digits

# Text faces of the fonts matplotlib ships (mpl-data/fonts/ttf). Symbol-only faces (STIX
# size variants, cmex, cmsy) are left out: they have no digit glyphs.
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)

CANVAS = 48  # glyphs are drawn at 1.5x the output size, then rotated and downsampled
# Rendering parameters. Chosen by measuring the digits source model (clean test ~98%) on
# 1,000 rendered digits, source / AdaBN accuracy: white digits on black 62% / 69%; random
# ink and background colours of any polarity 9-14% for both (chance: the model, trained
# on white-on-black only, reads an unstructured colour shift as noise); these values
# 22% / 30% (on the suite's 1,800 test images, seed 0: 23.5% / 31.8%), about where small
# CNNs sit on the real MNIST -> SVHN.
FONT_SIZES = (46, 58)  # px on the canvas, [low, high): the digit fills ~70-90% of the height
BLUR_SIGMA = (0.8, 1.8)  # px at the output size (SVHN crops are soft; so are 8x8 digits)
NEIGHBOUR_P = 0.6  # chance of a left (and, independently, a right) neighbouring digit
PHOTO_P = 0.5  # photo-crop background, else a flat colour
PHOTO_SCALE = (0.3, 0.55)  # photo brightness
BG_MAX = 0.45  # flat backgrounds: each channel uniform in [0, BG_MAX]
INK_MIN = 0.65  # ink: each channel uniform in [INK_MIN, 1]
BRIGHT_INK_P = 0.85  # else the polarity is inverted: a dark digit on a light background


@functools.cache
def font_paths() -> tuple[Path, ...]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return tuple(folder / name for name in FONT_FILES)


@functools.cache
def _font(index: int, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(font_paths()[index]), size)


def _glyph_mask(rng: np.random.Generator, digit: int, size: int) -> np.ndarray:
    """A (size, size) ink mask in [0, 1]: ``digit`` centred, its neighbours of a house number
    (or nothing, for a number's first/last digit) cut by the crop's edges."""
    from PIL import Image, ImageDraw

    font = _font(int(rng.integers(len(FONT_FILES))), int(rng.integers(*FONT_SIZES)))
    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(canvas)
    gap = int(rng.integers(0, 4))
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font, anchor="ls")
    width = right - left
    # Centre the label digit's ink box, with a little jitter as SVHN's crops have.
    x = (CANVAS - width) / 2 - left + rng.uniform(-1.5, 1.5)
    y = (CANVAS - (bottom - top)) / 2 - top + rng.uniform(-1.5, 1.5)
    draw.text((x, y), str(digit), fill=255, font=font, anchor="ls")
    if rng.random() < NEIGHBOUR_P:  # a left neighbour
        other = str(int(rng.integers(10)))
        other_right = draw.textbbox((0, 0), other, font=font, anchor="ls")[2]
        draw.text((x + left - gap - other_right, y), other, fill=255, font=font, anchor="ls")
    if rng.random() < NEIGHBOUR_P:  # a right neighbour
        other = str(int(rng.integers(10)))
        other_left = draw.textbbox((0, 0), other, font=font, anchor="ls")[0]
        draw.text((x + right + gap - other_left, y), other, fill=255, font=font, anchor="ls")
    canvas = canvas.rotate(rng.uniform(-10, 10), resample=Image.BILINEAR)
    canvas = canvas.resize((size, size), Image.LANCZOS)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(image, sigma=(sigma, sigma, 0), mode="nearest") if sigma > 0 else image


def render_house_numbers(labels: np.ndarray, seed: int, size: int = 32) -> torch.Tensor:
    """(N, 3, size, size) float images in [0, 1], one rendered digit per label.

    Per image: a font of ``FONT_FILES`` at a random size, neighbours, rotation within
    +-10 degrees; a darkened photo crop or a dark flat colour as background and a light ink
    colour, per channel (so every channel keeps the source's bright-on-dark polarity), both
    inverted for 15% of the images (SVHN has dark digits on light plates too); a Gaussian
    blur and faint sensor noise. See the module constants for the ranges.
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    photos = random_crops(n, size, rng)
    out = np.empty((n, size, size, 3), dtype=np.float32)
    for i, digit in enumerate(labels):
        if rng.random() < PHOTO_P:
            background = photos[i] * rng.uniform(*PHOTO_SCALE)
        else:
            background = np.broadcast_to(rng.uniform(0, BG_MAX, size=3), (size, size, 3))
        ink = rng.uniform(INK_MIN, 1, size=3)
        if rng.random() >= BRIGHT_INK_P:  # dark digit on a light background
            background, ink = 1 - background, 1 - ink
        background, ink = background.astype(np.float32), ink.astype(np.float32)
        mask = _glyph_mask(rng, int(digit), size)[..., None]
        image = background * (1 - mask) + ink * mask
        image = _blur(image, rng.uniform(*BLUR_SIGMA))
        out[i] = image + rng.normal(0, 0.01, size=image.shape)
    return torch.from_numpy(np.clip(out, 0, 1)).permute(0, 3, 1, 2).contiguous()


@SUITES.register("digits-sv")
class DigitsSV(Digits):
    """Embedded: sklearn digits (clean) -> digits-sv, SVHN-like house numbers drawn from fonts.

    Fonts bundled with matplotlib, photo or flat backgrounds, distractor digits.

    The source domain, splits, recipe and source model are those of the ``digits`` suite, so
    ``source`` rows of both suites are comparable. Target ``digits-sv``: 32x32 RGB crops, each
    a printed digit (its label) centred between partly visible neighbours, rendered by
    ``render_house_numbers`` with fixed seeds per split: 1,200 train images (unlabeled
    adaptation data) and 1,800 test images (scored), balanced over the ten classes. The
    shift is in shape (printed fonts vs handwriting), distractors, colour, polarity and
    background, as MNIST -> SVHN at embedded scale: the digits source model scores ~98% on
    its own test split and ~22% here (AdaBN ~30%). Generated on first use (about 3 s), kept
    in memory.
    """

    targets = ("digits-sv",)
    target_sizes = {"train": 1200, "test": 1800}
    _render_seeds = {"train": 3001, "test": 3002}

    def load(self, domain: str, split: Split) -> DomainData:
        if domain != "digits-sv":
            return super().load(domain, split)  # the clean source; checks the name and split
        if split not in ("train", "test"):
            raise KeyError(f"unknown split {split!r}; use 'train' or 'test'")
        if (domain, split) not in self._cache:
            n = self.target_sizes[split]
            # Balanced classes in a shuffled order, fixed per split.
            labels = np.random.default_rng(self._render_seeds[split] + 7).permutation(
                np.arange(n) % 10)
            images = render_house_numbers(labels, self._render_seeds[split], self.size)
            self._cache[(domain, split)] = DomainData(images, torch.from_numpy(labels).long())
        return self._cache[(domain, split)]
