"""Blur corruptions of CIFAR-10-C: defocus, glass, motion, zoom and gaussian blur."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from suites.corruptions import _ops

DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))  # radius, alias blur
GLASS_BLUR = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))  # sigma,
# max delta, iterations
MOTION_BLUR = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))  # ImageMagick radius, sigma
# The script's float aranges, kept as written: severity s averages zooms 1.00 ... 1.05*s.
ZOOM_BLUR = tuple(tuple(np.arange(1, stop, 0.01)) for stop in (1.06, 1.11, 1.16, 1.21, 1.26))
GAUSSIAN_BLUR = (0.4, 0.6, 0.7, 0.8, 1.0)  # sigma


@functools.cache
def defocus_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The script's ``disk``: an aliased disk on a 17x17 grid in float32, normalised, then
    cv2.GaussianBlur with a 3x3 kernel of sigma ``alias_blur``, trimmed to its support. For
    radius < 1 the disk is one pixel, so severities 1-3 are plain 3x3 Gaussians.

    Built in float32 as OpenCV builds it (taps computed in float64, stored as float32; the
    blur in float32), which gives OpenCV's kernel bit for bit. Its sum differs from 1 by
    about 1e-8, which decides on which side of an 8-bit level flat regions land; a float64
    kernel put 7.7% of values one level lower at severity 4."""
    grid = torch.arange(-8, 9)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2).to(torch.float32)
    disk /= disk.sum()
    offsets = torch.arange(-1, 2, dtype=torch.float64)
    taps = torch.exp(-offsets * offsets / (2 * alias_blur * alias_blur))
    taps = (taps / taps.sum()).to(torch.float32)
    # OpenCV's symmetric 3-tap row and column passes: centre * t1 + (left + right) * t0.
    # The disk sits in the middle of the grid, so the border never reaches it (zero pads).
    def blur_rows(a: torch.Tensor) -> torch.Tensor:
        padded = F.pad(a, (1, 1))
        return padded[:, 1:-1] * taps[1] + (padded[:, :-2] + padded[:, 2:]) * taps[0]

    kernel = blur_rows(blur_rows(disk).T).T
    support = kernel.abs().sum(0).nonzero()
    lo, hi = int(support.min()), int(support.max())
    r = max(8 - lo, hi - 8)
    return kernel[8 - r:9 + r, 8 - r:9 + r].to(torch.float64)


def defocus_blur(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """cv2.filter2D with the ``disk`` kernel, in float64 like the script (``corrupt``
    truncates float64 results exactly)."""
    kernel = defocus_kernel(*DEFOCUS_BLUR[severity - 1])
    return _ops.correlate(_ops.script_input_f64(x), kernel, "mirror")


def glass_blur(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Blur, truncate to uint8 (as the script does), locally shuffle pixels, blur again.

    The script walks pixels bottom-right to top-left and "swaps" each with a neighbour at
    offsets from randint(-delta, delta), i.e. -1 or 0 only (numpy excludes the upper bound).
    Its swap ``x[a], x[b] = x[b], x[a]`` assigns numpy views, so it only copies x[b] into
    x[a]; and since b is up or left of a, b is visited later and still holds its value from
    before the walk. One walk is therefore one parallel gather: every interior pixel takes
    the value of itself or its left, upper or upper-left neighbour. Severities 1-3 differ
    only in a small blur sigma and look nearly alike."""
    sigma, delta, iterations = GLASS_BLUR[severity - 1]
    n, c, h, w = x.shape
    x = _ops.truncate_u8(_ops.gaussian(x, sigma))  # in place: x is ours
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    inside = (((rows > delta) & (rows <= h - delta))[:, None]
              & ((cols > delta) & (cols <= w - delta))[None, :])
    for _ in range(iterations):
        dy, dx = torch.randint(-delta, delta, (2, n, h, w), generator=gen, device=x.device)
        src_rows = torch.where(inside, rows[:, None] + dy, rows[:, None])
        src_cols = torch.where(inside, cols[None, :] + dx, cols[None, :])
        index = (src_rows * w + src_cols).reshape(n, 1, h * w).expand(n, c, -1)
        x = x.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)
    return _ops.gaussian(x, sigma)


def motion_blur(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """ImageMagick motion blur at a uniform random angle in [-45, 45) degrees. ImageMagick
    (6, Q16) writes the 8-bit PNG by truncating: on 32x32 images, truncation matches its
    output on 99.8% of values at every severity, rounding on 50% (then about 0.5 grey
    level too bright). Severities 3 and 4 differ only in taps whose weight is below 1e-7,
    so they are almost equal."""
    radius, sigma = MOTION_BLUR[severity - 1]
    angle = torch.rand(len(x), generator=gen, device=x.device, dtype=torch.float64) * 90 - 45
    return _ops.truncate_u8(_ops.motion_blur(x, radius, sigma, angle))


def zoom_blur(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """The mean of the image and its clipped zooms by 1.00, 1.01, ... (the script's float
    aranges), computed as the script computes it: the image in float32, each zoom by
    scipy.ndimage.zoom (order 1: per output pixel, its four neighbours times the row weight,
    times the column weight, summed in scipy's order, in float64, stored as float32), the
    zooms summed in float32 one by one, then divided. Equal to the script bit for bit;
    ``corrupt`` truncates it in float32 as the script does."""
    image = _ops.script_input_f64(x).to(torch.float32)
    data = image.to(torch.float64)
    h, w = x.shape[-2:]
    total = torch.zeros_like(image)
    factors = ZOOM_BLUR[severity - 1]
    for factor in factors:
        rows, row_weights = _zoom_taps(h, factor, x.device)
        cols, col_weights = _zoom_taps(w, factor, x.device)
        zoomed = None
        for a in (0, 1):
            part = data.index_select(2, rows[:, a]) * row_weights[:, a, None]
            for b in (0, 1):
                term = part.index_select(3, cols[:, b]) * col_weights[:, b]
                zoomed = term if zoomed is None else zoomed + term
        total += zoomed.to(torch.float32)  # type: ignore[union-attr]
    return (image + total) / (len(factors) + 1)


@functools.cache
def _zoom_taps(n: int, factor: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    source, weights = _ops.clipped_zoom_taps(n, factor)
    return (torch.from_numpy(source).to(device),
            torch.from_numpy(weights).to(device=device, dtype=torch.float64))


def gaussian_blur(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """skimage's Gaussian filter in float64, in scipy's order of operations: equal to the
    script bit for bit (``corrupt`` truncates float64 results exactly)."""
    return _ops.scipy_gaussian_f64(_ops.script_input_f64(x), GAUSSIAN_BLUR[severity - 1])
