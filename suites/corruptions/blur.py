"""Blur corruptions of CIFAR-10-C and ImageNet-C: defocus, glass, motion, zoom and gaussian
blur. Each function receives its severity's entry of a constants table (the CIFAR tables
below, or ``IMAGENET``)."""

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
# make_imagenet_c.py's constants (224x224)
IMAGENET = {
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
    "zoom_blur": tuple(tuple(np.arange(1, stop, step)) for stop, step in (
        (1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03))),
    "gaussian_blur": (1, 2, 3, 4, 6),
}


@functools.cache
def defocus_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The script's ``disk``: an aliased disk in float32, normalised, then cv2.GaussianBlur
    of sigma ``alias_blur`` (OpenCV's default reflect-101 border), trimmed to its support:
    for radius <= 8 on a 17x17 grid with a 3x3 blur, for larger radii on a (2r+1)^2 grid
    with a 5x5 blur (ImageNet-C's severity 5). For radius < 1 the disk is one pixel, so
    CIFAR's severities 1-3 are plain 3x3 Gaussians.

    Built in float32 as OpenCV builds it (taps computed in float64, stored as float32; the
    blur in float32), which gives OpenCV's kernel bit for bit. Its sum differs from 1 by
    about 1e-8, which decides on which side of an 8-bit level flat regions land; a float64
    kernel put 7.7% of values one level lower at severity 4."""
    half, blur = (8, 1) if radius <= 8 else (int(radius), 2)
    grid = torch.arange(-half, half + 1)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2).to(torch.float32)
    disk /= disk.sum()
    offsets = torch.arange(-blur, blur + 1, dtype=torch.float64)
    taps = torch.exp(-offsets * offsets / (2 * alias_blur * alias_blur))
    taps = (taps / taps.sum()).to(torch.float32)

    # OpenCV's symmetric row and column passes: centre * t[b] + sum_k (left_k + right_k)
    # * t[b - k], in float32; the border reflects (reflect-101) where the disk reaches it.
    def blur_rows(a: torch.Tensor) -> torch.Tensor:
        padded = F.pad(a[None], (blur, blur), mode="reflect")[0]
        width = a.shape[1]
        out = padded[:, blur:blur + width] * taps[blur]
        for k in range(1, blur + 1):
            out = out + (padded[:, blur - k:blur - k + width]
                         + padded[:, blur + k:blur + k + width]) * taps[blur - k]
        return out

    kernel = blur_rows(blur_rows(disk).T).T
    support = kernel.abs().sum(0).nonzero()
    lo, hi = int(support.min()), int(support.max())
    r = max(half - lo, hi - half)
    return kernel[half - r:half + 1 + r, half - r:half + 1 + r].to(torch.float64)


# OpenCV's filter2D correlates float64 images directly below 50 kernel taps and through
# the DFT from 50 on (its dft_filter_size for 64-bit data): CIFAR's kernels are below,
# ImageNet's (9x9 to 25x25) above.
DFT_TAPS = 50


def defocus_blur(x: torch.Tensor, c: tuple[float, float], gen: torch.Generator
                 ) -> torch.Tensor:
    """cv2.filter2D with the ``disk`` kernel of (radius, alias blur) ``c``, reflect-101
    border, in float64 like the script (``corrupt`` truncates float64 results exactly).
    Small kernels (CIFAR's) correlate directly, which equals the script value for value;
    large ones (ImageNet's) go through the FFT, as OpenCV's filter2D does for them, so
    values sitting exactly on an 8-bit level may land a level apart."""
    kernel = defocus_kernel(*c)
    image = _ops.script_input_f64(x)
    if kernel.numel() < DFT_TAPS:
        return _ops.correlate(image, kernel, "mirror")
    return _fft_correlate(image, kernel)


def _fft_correlate(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlation with an odd square kernel, reflect-101 border, by the FFT: pad, multiply
    the spectra by the flipped kernel's, keep the valid part."""
    r = kernel.shape[0] // 2
    h, w = x.shape[-2:]
    padded = _ops.pad(x, (r, r), (r, r), "mirror")
    size = padded.shape[-2:]
    spectrum = torch.fft.rfft2(padded) * torch.fft.rfft2(
        kernel.flip(0, 1).to(device=x.device, dtype=x.dtype), s=size)
    out = torch.fft.irfft2(spectrum, s=size)
    return out[..., 2 * r:2 * r + h, 2 * r:2 * r + w].contiguous()


def glass_blur(x: torch.Tensor, c: tuple[float, int, int], gen: torch.Generator
               ) -> torch.Tensor:
    """Blur (sigma), truncate to uint8 (as the script does), locally shuffle pixels
    (``iterations`` walks with offsets up to ``delta``), blur again. Offsets come from
    randint(-delta, delta): -delta ... delta - 1 (numpy excludes the upper bound). CIFAR's
    severities 1-3 differ only in a small blur sigma and look nearly alike."""
    sigma, delta, iterations = c
    n, _, h, w = x.shape
    x = _ops.truncate_u8(_ops.gaussian(x, sigma))  # in place: x is ours
    for _ in range(iterations):
        dy, dx = torch.randint(-delta, delta, (2, n, h, w), generator=gen, device=x.device)
        x = glass_walk(x, dy, dx, delta)
    return _ops.gaussian(x, sigma)


def glass_walk(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, delta: int
               ) -> torch.Tensor:
    """One of the script's pixel walks, with the offsets (dy, dx) of every pixel (N, H, W).

    The script visits the interior pixels a (rows and columns delta + 1 ... size - delta)
    from the bottom-right to the top-left and "swaps" each with b = a + (dy, dx). The swap
    ``x[a], x[b] = x[b], x[a]`` assigns numpy views, so it only copies b's current value
    into a. b's current value is its original one unless b was visited before a (b is an
    interior pixel later in raster order: possible only when delta >= 2, i.e. ImageNet-C,
    where offsets reach +1 and beyond); then it is whatever b copied at its own visit. So
    every pixel reads the original value at the end of a chain a -> b -> b' ... that
    follows visited-earlier sources; the chains are resolved by pointer doubling (each step
    moves strictly later in raster order, so they end)."""
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    inside = (((rows > delta) & (rows <= h - delta))[:, None]
              & ((cols > delta) & (cols <= w - delta))[None, :])
    source = (torch.where(inside, rows[:, None] + dy, rows[:, None]) * w
              + torch.where(inside, cols[None, :] + dx, cols[None, :])).reshape(n, h * w)
    if delta >= 2:
        position = torch.arange(h * w, device=x.device).expand(n, -1)
        # a follows its source when the source is interior and visited before a
        follows = inside.reshape(-1)[source] & (source > position)
        hop = torch.where(follows, source, position)  # a -> the pixel whose read a inherits
        while True:
            further = hop.gather(1, hop)
            if torch.equal(further, hop):
                break
            hop = further
        source = source.gather(1, hop)
    index = source.reshape(n, 1, h * w).expand(n, c, -1)
    return x.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)


def motion_blur(x: torch.Tensor, c: tuple[float, float], gen: torch.Generator
                ) -> torch.Tensor:
    """ImageMagick motion blur at a uniform random angle in [-45, 45) degrees. ImageMagick
    (6, Q16) writes the 8-bit PNG by truncating: on 32x32 images, truncation matches its
    output on 99.8% of values at every severity, rounding on 50% (then about 0.5 grey
    level too bright). Severities 3 and 4 differ only in taps whose weight is below 1e-7,
    so they are almost equal."""
    radius, sigma = c
    angle = torch.rand(len(x), generator=gen, device=x.device, dtype=torch.float64) * 90 - 45
    return _ops.truncate_u8(_ops.motion_blur(x, radius, sigma, angle))


def zoom_blur(x: torch.Tensor, factors: tuple[float, ...], gen: torch.Generator
              ) -> torch.Tensor:
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


def gaussian_blur(x: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """skimage's Gaussian filter in float64, in scipy's order of operations: equal to the
    script bit for bit (``corrupt`` truncates float64 results exactly)."""
    return _ops.scipy_gaussian_f64(_ops.script_input_f64(x), sigma)
