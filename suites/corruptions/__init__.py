"""A batched torch engine for the CIFAR-10-C corruptions (Hendrycks & Dietterich, "Benchmarking
Neural Network Robustness to Common Corruptions and Perturbations", ICLR 2019).

``corrupt(images, name, severity, seed)`` applies one of the 15 benchmark corruptions or 4
extra ones at severity 1-5 to a float batch (N, 3, H, W) in [0, 1], on CPU or CUDA, with the
parameter table of the CIFAR-10-C generation script (hendrycks/robustness,
``ImageNet-C/create_c/make_cifar_c.py``, the 32x32 constants); ``constants="imagenet"``
selects the ImageNet-C script's table instead (``make_imagenet_c.py``, for 224x224 images;
the functions are the same apart from their constants, see ``TABLES``). Each module
restates the script's library calls (skimage, scipy, OpenCV, ImageMagick, PIL) as batched
tensor operations and keeps its behaviour, quirks included: severities are not always
monotone (elastic_transform gets milder from 1 to 5, saturate desaturates at 1-2, spatter
switches to mud at 4-5, glass_blur's 1-3 are nearly equal). Known departures: frost uses
the release's photos only when an installed package ships them (``imagecorruptions``), else
procedural textures, which carry less fine detail (see ``weather.frost_images``);
spatter's distance transform is exact where OpenCV's is a 5x5 chamfer approximation;
random corruptions draw from torch's generator, so they match the release in distribution,
not pixel for pixel.

``quantize=True`` (default) reproduces the release's 8-bit pipeline: inputs are rounded to
1/255 (the script reads 8-bit images), and outputs are cast like its ``np.uint8(...)``, which
truncates (about -0.5/255 mean bias). Steps inside a corruption that the script performs in
8 bits (PIL resizing and JPEG, ImageMagick's PNG output, glass blur's and spatter's uint8
casts) are always 8-bit; ImageMagick truncates too (motion blur, snow).

Where many results are whole 8-bit levels up to float error (brightness and saturate: an
HSV round trip; the blurs: flat regions under kernels summing to 1 +- 1e-8), the side of
the level a value truncates to depends on the exact roundings. ``SCRIPT_EXACT`` corruptions
are therefore computed with the script's own arithmetic -- its dtype (float64; float32 for
zoom blur) and its operations in its order (skimage's HSV formulas, OpenCV's float32 disk
kernel bit for bit, scipy's Gaussian and order-1 zoom loops, NumPy's pairwise mean) -- and
truncated exactly: they equal the script's output value for value. With pixelate and JPEG
(8-bit PIL all the way) that is all 8 deterministic corruptions. The random ones run in
float32 (a small epsilon before the truncation keeps on-grid values on the grid).

Every corruption function receives a private, contiguous float32 copy of the batch and its
severity's constants, and may work on the copy in place; tables that depend only on the
image size and the constants (resampling matrices, the zoom operator, the shot-noise
inversion tables) are built once and cached.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from suites.corruptions import blur, digital, noise, weather

CorruptionFn = Callable[[torch.Tensor, Any, torch.Generator], torch.Tensor]


def _source_sha256() -> str:
    """sha256 of this package's source files, read when it is imported: the identity of the
    code this process runs (files edited later, while a run goes on, do not change it)."""
    h = hashlib.sha256()
    for source in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return h.hexdigest()


SOURCE_SHA256 = _source_sha256()

_FUNCTIONS: dict[str, CorruptionFn] = {
    "gaussian_noise": noise.gaussian_noise,
    "shot_noise": noise.shot_noise,
    "impulse_noise": noise.impulse_noise,
    "defocus_blur": blur.defocus_blur,
    "glass_blur": blur.glass_blur,
    "motion_blur": blur.motion_blur,
    "zoom_blur": blur.zoom_blur,
    "snow": weather.snow,
    "frost": weather.frost,
    "fog": weather.fog,
    "brightness": digital.brightness,
    "contrast": digital.contrast,
    "elastic_transform": digital.elastic_transform,
    "pixelate": digital.pixelate,
    "jpeg_compression": digital.jpeg_compression,
    "speckle_noise": noise.speckle_noise,
    "gaussian_blur": blur.gaussian_blur,
    "spatter": weather.spatter,
    "saturate": digital.saturate,
}

# Per corruption, its five severities' constants: the CIFAR-10-C script's (each module's
# upper-case tables) and the ImageNet-C script's (each module's ``IMAGENET``).
TABLES: dict[str, dict[str, tuple]] = {
    "cifar": {
        "gaussian_noise": noise.GAUSSIAN_NOISE, "shot_noise": noise.SHOT_NOISE,
        "impulse_noise": noise.IMPULSE_NOISE, "defocus_blur": blur.DEFOCUS_BLUR,
        "glass_blur": blur.GLASS_BLUR, "motion_blur": blur.MOTION_BLUR,
        "zoom_blur": blur.ZOOM_BLUR, "snow": weather.SNOW, "frost": weather.FROST,
        "fog": weather.FOG, "brightness": digital.BRIGHTNESS, "contrast": digital.CONTRAST,
        "elastic_transform": digital.ELASTIC, "pixelate": digital.PIXELATE,
        "jpeg_compression": digital.JPEG_QUALITY, "speckle_noise": noise.SPECKLE_NOISE,
        "gaussian_blur": blur.GAUSSIAN_BLUR, "spatter": weather.SPATTER,
        "saturate": digital.SATURATE,
    },
    "imagenet": {**noise.IMAGENET, **blur.IMAGENET, **weather.IMAGENET, **digital.IMAGENET},
}
assert all(set(table) == set(_FUNCTIONS) for table in TABLES.values())

CORRUPTIONS: tuple[str, ...] = tuple(list(_FUNCTIONS)[:15])
EXTRA_CORRUPTIONS: tuple[str, ...] = tuple(list(_FUNCTIONS)[15:])
ALL_CORRUPTIONS: tuple[str, ...] = CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
# Computed with the script's own arithmetic (dtype and order of operations; brightness,
# saturate, contrast, defocus and Gaussian blur in float64, zoom blur in float32): their
# output equals the script's value for value, so it is truncated without the epsilon.
SCRIPT_EXACT: frozenset[str] = frozenset({
    "brightness", "saturate", "contrast", "defocus_blur", "gaussian_blur", "zoom_blur",
})
# Corruptions that draw no random numbers: equal for every seed.
DETERMINISTIC: frozenset[str] = frozenset({
    "defocus_blur", "zoom_blur", "gaussian_blur", "brightness", "contrast", "pixelate",
    "jpeg_compression", "saturate",
})


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int,
            quantize: bool = True, constants: str = "cifar") -> torch.Tensor:
    """Corrupt a float batch (N, 3, H, W) in [0, 1]; returns the same shape, dtype and
    device, in [0, 1]. The same (images, name, severity, seed) always gives the same output
    on a given device; each image gets its own random draws. See the module docstring for
    ``quantize``; ``constants`` names the severity table ("cifar" or "imagenet")."""
    if constants not in TABLES:
        raise ValueError(f"unknown constants {constants!r}; use one of {', '.join(TABLES)}")
    if name not in _FUNCTIONS:
        close = difflib.get_close_matches(name, ALL_CORRUPTIONS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown corruption {name!r}{hint} (known: {', '.join(ALL_CORRUPTIONS)})")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of 1-5, got {severity!r}")
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor (N, 3, H, W) in [0, 1]; got {tuple(images.shape)} "
            f"{images.dtype} (repeat grey images to 3 channels first)"
        )
    if len(images) == 0:
        return images.clone()
    with _one_cpu_thread(images.device):
        return _corrupt(images, name, TABLES[constants][name][severity - 1], seed, quantize)


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """On CPU the engine runs with one intra-op thread, whatever the caller set: its tensors
    are small (32x32 images), threads gain little on them, and with a second thread while
    the other core is busy it ran ~30x slower (threads waiting for each other). The
    caller's setting is restored afterwards."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _corrupt(images: torch.Tensor, name: str, constants: Any, seed: int, quantize: bool
             ) -> torch.Tensor:
    gen = torch.Generator(device=images.device)
    gen.manual_seed(seed)
    # A new, contiguous float32 copy: the corruption functions own it and work in place.
    x = images.to(torch.float32, memory_format=torch.contiguous_format, copy=True).clamp_(0, 1)
    if quantize:
        x = x.mul_(255).round_().div_(255)
    out = _FUNCTIONS[name](x, constants, gen).clamp_(0, 1)  # always a tensor of our own
    if quantize and name in SCRIPT_EXACT:
        # computed as the script computes it (same dtype, same operations): truncate exactly
        out = out.mul_(255).floor_().div_(255)
    elif quantize:  # np.uint8(...) truncates; the epsilon keeps on-grid values on the grid
        out = out.mul_(255).add_(1e-4).floor_().div_(255)
    return out.to(images.dtype)
