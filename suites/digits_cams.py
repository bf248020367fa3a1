"""Embedded digits-cams suite: the scikit-learn digits seen through synthetic cameras.

Each camera is a fixed image-formation pipeline applied to the same scene radiance: exposure
and white balance gains, a 3x3 colour response matrix, optical blur, sensor noise (shot +
read), a black level and a gamma curve. The source domain mixes images from four seen
cameras and records each image's camera id; the target is a fifth camera never seen in
training, as in person re-identification across camera networks (Zhuang et al., "Rethinking
the Distribution Gap of Person Re-identification with Camera-based Batch Normalization",
ECCV 2020), where every camera is its own small domain.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.registry import SUITES
from benchmark.suite import DomainData, Recipe, Split, Suite
from suites._photos import random_crops
from suites.digits import digit_splits


@dataclass(frozen=True)
class Camera:
    """One synthetic camera: linear radiance -> recorded pixel value in [0, 1].

    ``pixel = clip(black + (1 - black) * clip(blur(M @ (gain * wb * radiance)) + noise))
    ** (1 / gamma)``, with Gaussian noise of variance ``shot * signal + read ** 2``.
    """

    response: tuple[tuple[float, float, float], ...]  # 3x3 colour matrix, rows = outputs
    white_balance: tuple[float, float, float]
    gain: float  # exposure
    gamma: float  # encoding gamma: > 1 brightens mid-tones, < 1 darkens them
    blur_sigma: float  # px; 0 = sharp
    shot: float  # signal-dependent noise variance factor
    read: float  # signal-independent noise std
    black: float  # black level (pedestal) added before the gamma curve

    def render(self, radiance: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = radiance * (self.gain * torch.tensor(self.white_balance)).view(1, 3, 1, 1)
        x = torch.einsum("oc,nchw->nohw", torch.tensor(self.response), x)
        x = gaussian_blur(x, self.blur_sigma).clamp_min(0)
        std = (self.shot * x + self.read**2).sqrt()
        x = (x + std * torch.randn(x.shape, generator=generator)).clamp(0, 1)
        x = self.black + (1 - self.black) * x
        return x.pow(1 / self.gamma).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur per channel, radius 3 sigma, reflect padding."""
    if sigma <= 0:
        return x
    radius = max(1, int(np.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


_IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

# Four seen cameras that differ in every stage, and one unseen camera outside their range
# (channel cross-talk that rotates hues, a strong blue cast, under-exposure, a raised black
# level, a darkening curve and heavier noise), so statistics learned on the seen cameras
# do not fit it.
SEEN_CAMERAS: tuple[Camera, ...] = (
    Camera(_IDENTITY, (1.0, 1.0, 1.0), 1.0, 2.2, 0.0, 0.002, 0.01, 0.0),
    Camera(((0.8, 0.2, 0.0), (0.1, 0.8, 0.1), (0.0, 0.3, 0.7)), (1.35, 1.0, 0.6), 1.1, 1.0,
           0.7, 0.004, 0.02, 0.02),
    Camera(((0.6, 0.3, 0.1), (0.2, 0.6, 0.2), (0.1, 0.3, 0.6)), (0.7, 1.0, 1.4), 0.9, 1.6,
           0.0, 0.006, 0.03, 0.05),
    Camera(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)), (0.9, 1.3, 0.9), 0.6, 1.4,
           1.1, 0.004, 0.02, 0.0),
)
UNSEEN_CAMERA = Camera(((0.1, 0.2, 0.7), (0.7, 0.2, 0.1), (0.2, 0.7, 0.1)), (0.6, 0.8, 1.6),
                       0.7, 0.8, 0.9, 0.006, 0.04, 0.15)

# Ink colours of the scene's digits: saturated, bright, so camera colour handling matters.
INK_COLOURS = np.array([
    (1.0, 0.2, 0.2), (0.2, 1.0, 0.3), (0.3, 0.4, 1.0), (1.0, 0.9, 0.2), (0.9, 0.3, 1.0),
    (0.2, 0.9, 1.0), (1.0, 0.6, 0.2), (1.0, 1.0, 1.0),
], dtype=np.float32)


def render_scene(digits: torch.Tensor, seed: int, zoom: int = 2,
                 background: float = 0.35) -> torch.Tensor:
    """Scene radiance: each digit's ink in one of ``INK_COLOURS`` over a dimmed crop of a
    bundled photo (upsampled ``zoom`` times, as digits-m does), alpha = ink intensity."""
    rng = np.random.default_rng(seed)
    size = digits.shape[-1]
    crops = random_crops(len(digits), size // zoom, rng, downscale=1)
    photos = F.interpolate(torch.from_numpy(crops).permute(0, 3, 1, 2), size=(size, size),
                           mode="bilinear", align_corners=False)
    ink = torch.from_numpy(INK_COLOURS[rng.integers(0, len(INK_COLOURS), len(digits))])
    alpha = digits[:, :1]
    return background * photos * (1 - alpha) + ink.view(-1, 3, 1, 1) * alpha


@functools.cache
def _camera_split(split: Split, which: str, seed: int) -> DomainData:
    """Rendered ``split`` through the seen cameras (``which="seen"``: camera ids 0..3,
    assigned round-robin after a seeded shuffle) or the unseen one (id 4)."""
    images, labels = digit_splits(DigitsCams.size, DigitsCams.split_seed)[split]
    if which == "unseen" and split == "test":  # several renderings: less evaluation noise
        images = images.repeat(DigitsCams.target_test_renders, 1, 1, 1)
        labels = labels.repeat(DigitsCams.target_test_renders)
    radiance = render_scene(images, seed)
    generator = torch.Generator().manual_seed(seed)
    if which == "seen":
        order = torch.randperm(len(images), generator=generator)
        cameras = torch.empty(len(images), dtype=torch.int64)
        cameras[order] = torch.arange(len(images)) % len(SEEN_CAMERAS)
        out = torch.empty_like(radiance)
        for k, camera in enumerate(SEEN_CAMERAS):
            members = (cameras == k).nonzero().flatten()
            out[members] = camera.render(radiance[members], generator)
    else:
        cameras = torch.full((len(images),), DigitsCams.unseen_camera_id, dtype=torch.int64)
        out = UNSEEN_CAMERA.render(radiance, generator)
    # Stored on the 8-bit grid, as a camera would write them.
    out = torch.round(out * 255) / 255
    return DomainData(out.contiguous(), labels, {"camera": cameras})


@SUITES.register("digits-cams")
class DigitsCams(Suite):
    """Embedded: digits through 4 seen synthetic cameras -> an unseen camera (camera ids).

    Scene: each 32x32 scikit-learn digit (the ``digits`` splits: 1,198 train, 599 test) drawn
    in a saturated ink colour over a dimmed photo crop. Source ``cams-seen``: every image is
    recorded by one of four cameras (``SEEN_CAMERAS``; ids 0-3, about 300 train images
    each), each with its own colour matrix, white balance, exposure, blur, noise, black level
    and gamma. Target ``cam-unseen``: camera id 4 (``UNSEEN_CAMERA``), outside the range of
    the seen ones; its test split renders each test digit 3 times (1,797 images), its train
    split (the unlabeled data of adaptation methods) each train digit once. ``extra["camera"]``
    holds every image's camera id (int64). Fixed seeds per domain and split: the data never
    changes between runs.
    """

    source = "cams-seen"
    targets = ("cam-unseen",)
    num_classes = 10
    size = 32
    split_seed = 0
    recipe = Recipe(arch="small_resnet", epochs=12, batch_size=64, lr=0.05, augment="shift")
    eval_batch_size = 128
    provides = frozenset({"camera_ids", "domain_ids"})
    unseen_camera_id = len(SEEN_CAMERAS)
    target_test_renders = 3
    _seeds = {("cams-seen", "train"): 3101, ("cams-seen", "test"): 3102,
              ("cam-unseen", "train"): 3103, ("cam-unseen", "test"): 3104}

    def data_paths(self) -> list[Path]:
        from suites._photos import package_data_paths

        return package_data_paths()

    def load(self, domain: str, split: Split) -> DomainData:
        if domain not in self.domains:
            raise KeyError(f"suite {self.name!r} has no domain {domain!r}; has {self.domains}")
        if split not in ("train", "test"):
            raise KeyError(f"unknown split {split!r}; use 'train' or 'test'")
        which = "seen" if domain == self.source else "unseen"
        return _camera_split(split, which, self._seeds[(domain, split)])
