"""Batched image operations that restate the library calls of the CIFAR-10-C script.

Every function takes and returns float tensors shaped (N, C, H, W) (or (N, H, W) where
noted) and names the library call it stands for, with that call's border handling, so a
corruption reads like the original: scipy/skimage ``mode='nearest'`` is ``"edge"``,
``'reflect'`` is ``"symmetric"`` (d c b a | a b c d) and OpenCV's default border
(BORDER_REFLECT_101, scipy ``'mirror'``) is ``"mirror"`` (d c b | a b c d).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Border = Literal["edge", "symmetric", "mirror"]


def border_index(n: int, before: int, after: int, mode: Border, device) -> torch.Tensor:
    """Source index of every position of a length-``n`` axis padded by ``before``/``after``,
    for any padding width (scipy reflects again when a kernel is wider than the image)."""
    i = torch.arange(-before, n + after, device=device)
    if mode == "edge" or n == 1:
        return i.clamp(0, n - 1)
    if mode == "symmetric":
        i = i % (2 * n)
        return torch.where(i >= n, 2 * n - 1 - i, i)
    if mode == "mirror":
        i = i % (2 * n - 2)
        return torch.where(i >= n, 2 * n - 2 - i, i)
    raise ValueError(f"unknown border mode {mode!r}")


_NATIVE_PAD = {"edge": "replicate", "mirror": "reflect"}


def pad(x: torch.Tensor, ph: tuple[int, int], pw: tuple[int, int], mode: Border) -> torch.Tensor:
    h, w = x.shape[-2:]
    if mode in _NATIVE_PAD and max(ph) < h and max(pw) < w and x.ndim == 4:
        return F.pad(x, (*pw, *ph), mode=_NATIVE_PAD[mode])  # same result, one fast kernel
    x = x.index_select(-2, border_index(h, *ph, mode, x.device))
    return x.index_select(-1, border_index(w, *pw, mode, x.device))


def correlate(x: torch.Tensor, kernel: torch.Tensor, mode: Border) -> torch.Tensor:
    """2-D correlation of every channel with one odd-sized kernel (cv2.filter2D,
    scipy.ndimage.correlate)."""
    kh, kw = kernel.shape
    n, c, h, w = x.shape
    padded = pad(x, (kh // 2, kh // 2), (kw // 2, kw // 2), mode).reshape(1, n * c, h + kh - 1,
                                                                          w + kw - 1)
    weight = kernel.to(x.dtype).to(x.device).expand(n * c, 1, kh, kw)
    # depthwise over all channels of all images: much faster than groups=c on CPU
    return F.conv2d(padded, weight, groups=n * c).reshape(n, c, h, w)


@functools.cache
def border_matrix(n: int, taps: tuple[float, ...], mode: Border, device, dtype
                  ) -> torch.Tensor:
    """The (n, n) matrix of correlating a length-n axis with ``taps`` under ``mode``:
    row i holds the taps at the source indices of window i, summed where the border
    folds several onto one pixel."""
    r = len(taps) // 2
    source = border_index(n, r, r, mode, "cpu")
    matrix = torch.zeros((n, n), dtype=torch.float64)
    rows = torch.arange(n)
    for k, tap in enumerate(taps):
        matrix.index_put_((rows, source[k:k + n]), torch.tensor(tap, dtype=torch.float64)
                          .expand(n), accumulate=True)
    return matrix.to(device=device, dtype=dtype)


def separable(x: torch.Tensor, taps: torch.Tensor, mode: Border) -> torch.Tensor:
    """Correlate with ``taps`` along rows, then along columns (a separable filter)."""
    r = len(taps) // 2
    h, w = x.shape[-2:]
    weights = taps.tolist()
    if len(weights) >= 9 or mode not in _NATIVE_PAD or r >= min(h, w):
        # long kernels and non-native borders: two small matrix products (BLAS) beat a
        # sum of many slices of a padded copy; equal up to float rounding
        rows = x @ border_matrix(w, tuple(weights), mode, x.device, x.dtype).T
        return border_matrix(h, tuple(weights), mode, x.device, x.dtype) @ rows
    # a sum of shifted slices: for the short kernels here faster than conv2d on CPU
    padded = pad(x, (0, 0), (r, r), mode)
    rows = padded[..., 0:w] * weights[0]
    for i in range(1, len(weights)):
        rows.add_(padded[..., i:i + w], alpha=weights[i])
    padded = pad(rows, (r, r), (0, 0), mode)
    out = padded[..., 0:h, :] * weights[0]
    for i in range(1, len(weights)):
        out.add_(padded[..., i:i + h, :], alpha=weights[i])
    return out


@functools.cache
def gaussian_taps(sigma: float, truncate: float) -> torch.Tensor:
    """scipy.ndimage's sampled Gaussian: radius int(truncate * sigma + 0.5), sum 1."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * offsets**2 / sigma**2)
    return taps / taps.sum()


def gaussian(x: torch.Tensor, sigma: float, mode: Border = "edge", truncate: float = 4.0
             ) -> torch.Tensor:
    """skimage.filters.gaussian over the two spatial axes (its defaults: 'nearest', 4 sigma).
    scipy skips axes whose sigma is ~0, so sigma 0 is the identity."""
    if sigma <= 1e-15:
        return x
    return separable(x, gaussian_taps(sigma, truncate), mode)


def box_blur3(x: torch.Tensor) -> torch.Tensor:
    """cv2.blur(x, (3, 3)): 3x3 mean, OpenCV's default border."""
    return separable(x, torch.full((3,), 1 / 3, dtype=torch.float64), "mirror")


def clipped_zoom_taps(n: int, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """One axis of the script's ``clipped_zoom``: crop the central ceil(n / factor) pixels,
    scipy.ndimage.zoom them by ``factor`` (order 1, corner-aligned: output o samples input
    o * (in - 1) / (out - 1)), trim to the centre. Returns, per output pixel, the two input
    pixels it interpolates, (n, 2), and their weights, (n, 2)."""
    crop = int(np.ceil(n / factor))
    top = (n - crop) // 2
    out = int(round(crop * factor))  # scipy's output length (Python round)
    trim = (out - n) // 2
    step = (crop - 1) / (out - 1) if out > 1 else 0.0
    coords = np.arange(trim, trim + n, dtype=np.float64) * step
    lo = np.clip(np.floor(coords).astype(np.int64), 0, crop - 1)
    hi = np.minimum(lo + 1, crop - 1)
    frac = coords - lo
    return np.stack([top + lo, top + hi], 1), np.stack([1 - frac, frac], 1)


@functools.cache
def clipped_zoom_matrix(n: int, factor: float, device, dtype) -> torch.Tensor:
    """``clipped_zoom_taps`` as an (n, n) interpolation matrix."""
    source, weights = clipped_zoom_taps(n, factor)
    matrix = torch.zeros((n, n), dtype=torch.float64)
    matrix.index_put_((torch.arange(n)[:, None].expand(-1, 2), torch.from_numpy(source)),
                      torch.from_numpy(weights), accumulate=True)
    return matrix.to(device=device, dtype=dtype)


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``clipped_zoom`` of the last two axes."""
    h, w = x.shape[-2:]
    mh = clipped_zoom_matrix(h, factor, x.device, x.dtype)
    return mh @ x @ clipped_zoom_matrix(w, factor, x.device, x.dtype).T


@functools.cache
def pil_box_resampler(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's BOX resampling of one axis of uint8 data (Resample.c: precompute_coeffs and
    normalize_coeffs_8bpc). Each output pixel averages the k input pixels whose centres fall
    in its box; Pillow stores the weight 1/k as the integer q = round(2**22 / k) and outputs
    (sum * q + 2**21) >> 22. Returns the 0/1 membership matrix (out, in) as float32 (sums
    of uint8 values are exact integers in float32) and q per output, int32."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    members = np.zeros((out_size, in_size), dtype=np.float32)
    for o in range(out_size):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        offsets = (np.arange(lo, hi) - center + 0.5) / filterscale
        members[o, lo:hi] = (offsets > -0.5) & (offsets <= 0.5)
    counts = members.sum(1).astype(np.int64)
    q = np.floor(0.5 + (1 << 22) / np.maximum(counts, 1)).astype(np.int32)
    return torch.from_numpy(members), torch.from_numpy(q)


@functools.cache
def pil_box_round_trip(size: int, small: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One axis of a PIL BOX resize from ``size`` down to ``small`` and back up, as one
    membership matrix (size, size) and one q per output. Upscaling by BOX copies exactly
    one input pixel per output (its box is narrower than a pixel), so the way back is a
    selection; it commutes with the rounding of the way down and with the other axis's
    pass, and the two passes fold into one."""
    down, q = pil_box_resampler(size, small)
    up, up_q = pil_box_resampler(small, size)
    if not (bool((up.sum(1) == 1).all()) and bool((up_q == 1 << 22).all())):
        raise ValueError(f"a BOX resize from {small} to {size} is not a selection")
    picked = up.argmax(1)
    return down[picked].contiguous(), q[picked].contiguous()


def _pil_fixed_point(sums: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Pillow's 8-bit rounding (sum * q + 2**21) >> 22, in int32: sums are at most 255 k
    and q about 2**22 / k, so nothing overflows, and the result never exceeds 255."""
    out = sums.to(torch.int32).mul_(q).add_(1 << 21).bitwise_right_shift_(22)
    return out.to(sums.dtype)


def _pil_box_matrix(x: torch.Tensor, members: torch.Tensor, q: torch.Tensor, axis: int
                    ) -> torch.Tensor:
    members, q = members.to(device=x.device, dtype=x.dtype), q.to(x.device)
    if axis == -1:  # one 2-D product: faster than a batched one
        sums = (x.reshape(-1, x.shape[-1]) @ members.T).reshape(*x.shape[:-1], -1)
        return _pil_fixed_point(sums, q)
    return _pil_fixed_point(members @ x, q[:, None])


def pil_box_down_up(x_u8: torch.Tensor, small: tuple[int, int]) -> torch.Tensor:
    """PIL ``Image.resize(small, BOX)`` then back to the original size (each resize a
    horizontal pass rounded to uint8, then a vertical one), in two passes instead of four
    (see ``pil_box_round_trip``); float tensors holding 0..255."""
    h, w = x_u8.shape[-2:]
    x = x_u8.float()
    if small[1] != w:
        x = _pil_box_matrix(x, *pil_box_round_trip(w, small[1]), axis=-1)
    if small[0] != h:
        x = _pil_box_matrix(x, *pil_box_round_trip(h, small[0]), axis=-2)
    return x.to(x_u8.dtype)


def motion_blur(x: torch.Tensor, radius: float, sigma: float, angle_deg: torch.Tensor
                ) -> torch.Tensor:
    """ImageMagick's MotionBlurImage (the script's Wand call), one angle per image: a
    one-sided Gaussian of width 2*ceil(radius)+1 along the angle, sampled at whole-pixel
    offsets ceil(i*cos - 0.5), ceil(i*sin - 0.5), image edges extended.

    Every tap is a per-image shift of the edge-padded batch. With the images sorted by
    angle, a tap's shift is the same over runs of neighbouring images, and a run is one
    sliced multiply-add; a tap whose shifts change too often for that (long taps, small
    runs) is one gather instead. Both add the taps in order, so the result is the same."""
    n, c, h, w = x.shape
    width = 2 * math.ceil(radius) + 1
    steps = torch.arange(width, dtype=torch.float64, device=x.device)
    taps = torch.exp(-steps**2 / (2 * sigma**2))
    taps = (taps / taps.sum()).tolist()
    order = torch.argsort(angle_deg)
    theta = torch.deg2rad(angle_deg[order].to(torch.float64))[:, None]
    dx = torch.ceil(steps[None] * torch.cos(theta) - 0.5).long()  # (N, width)
    dy = torch.ceil(steps[None] * torch.sin(theta) - 0.5).long()
    top, bottom = max(0, -int(dy.min())), max(0, int(dy.max()))
    left, right = max(0, -int(dx.min())), max(0, int(dx.max()))
    padded = pad(x.index_select(0, order), (top, bottom), (left, right), "edge")
    pw = w + left + right
    shift = (dy + top) * pw + dx + left  # (N, width): flat offset of each tap's window
    shift_list = shift.T.tolist()  # (width, N)
    # A run costs one small op (~7 us on CPU), a gather ~1.2 ns per value; on GPUs
    # launches dominate, so gather always there.
    run_limit = n * c * h * w / 6000 if x.device.type == "cpu" else 0
    out = torch.zeros_like(x)
    flat = padded.reshape(n, c, -1)
    grid = (torch.arange(h, device=x.device)[:, None] * pw
            + torch.arange(w, device=x.device)[None, :]).reshape(1, 1, -1)
    for i, shifts in enumerate(shift_list):
        starts = [a for a in range(n) if a == 0 or shifts[a] != shifts[a - 1]]
        if len(starts) > run_limit:
            index = (grid + shift[:, i, None, None]).expand(n, c, -1)
            out.add_(flat.gather(2, index).view(n, c, h, w), alpha=taps[i])
            continue
        for a, b in zip(starts, starts[1:] + [n], strict=True):
            y0, x0 = divmod(shifts[a], pw)
            out[a:b].add_(padded[a:b, :, y0:y0 + h, x0:x0 + w], alpha=taps[i])
    return out.index_select(0, torch.argsort(order))


def truncate_u8(x: torch.Tensor) -> torch.Tensor:
    """``np.uint8(x * 255) / 255`` for x in [0, 1]: the script's truncating cast, in place.
    The small epsilon keeps values already on the 1/255 grid there despite float32
    rounding."""
    return x.clamp_(0, 1).mul_(255).add_(1e-4).floor_().div_(255)


def mask_of(comparison, a: torch.Tensor, b) -> torch.Tensor:
    """``comparison(a, b)`` (torch.lt, torch.ge, ...) as a float 0/1 tensor. Boolean masks
    and torch.where are an order of magnitude slower than float arithmetic on CPU here, so
    the corruptions select with masks like this one: ``a * (1 - m) + b * m`` is exactly
    ``where(m, b, a)`` for finite a and b."""
    out = torch.empty(torch.broadcast_shapes(a.shape, torch.as_tensor(b).shape),
                      dtype=a.dtype, device=a.device)
    return comparison(a, b, out=out)


def script_input_f64(x: torch.Tensor) -> torch.Tensor:
    """The script's ``np.array(img) / 255.``: the 8-bit levels of ``x`` divided in float64."""
    return x.mul(255).round_().to(torch.float64).div_(255)


def skimage_rgb2hsv(rgb: torch.Tensor) -> torch.Tensor:
    """skimage.color.rgb2hsv on (N, 3, H, W), operation for operation (same order, same
    float64 roundings), so values that land on an 8-bit boundary land on the same side."""
    r, g, b = rgb.unbind(1)
    value = rgb.amax(1)
    delta = value - rgb.amin(1)  # np.ptp: max - min
    flat = delta == 0
    safe = torch.where(flat, torch.ones_like(delta), delta)
    saturation = torch.where(flat, torch.zeros_like(delta),
                             delta / torch.where(value == 0, torch.ones_like(value), value))
    hue = torch.zeros_like(value)  # later assignments win, as in skimage: blue > green > red
    hue = torch.where(r == value, (g - b) / safe, hue)
    hue = torch.where(g == value, 2.0 + (b - r) / safe, hue)
    hue = torch.where(b == value, 4.0 + (r - g) / safe, hue)
    hue = torch.remainder(hue / 6.0, 1.0)  # numpy's %, the same for a divisor of 1
    hue = torch.where(flat, torch.zeros_like(hue), hue)
    return torch.stack([hue, saturation, value], 1)


def skimage_hsv2rgb(hsv: torch.Tensor) -> torch.Tensor:
    """skimage.color.hsv2rgb on (N, 3, H, W), operation for operation."""
    h, s, v = hsv.unbind(1)
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    sector = hi.to(torch.int64).remainder(6)  # skimage: astype(uint8) % 6
    choices = torch.stack([torch.stack(c, 1) for c in
                           ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    index = sector[None, :, None].expand(1, -1, 3, -1, -1)
    return choices.gather(0, index)[0]


@functools.cache
def scipy_gaussian_taps(sigma: float, truncate: float = 4.0) -> tuple[float, ...]:
    """scipy.ndimage's 1-D Gaussian weights, computed as scipy computes them (NumPy float64)."""
    radius = int(truncate * float(sigma) + 0.5)
    grid = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * grid**2)
    return tuple((phi / phi.sum()).tolist())


def scipy_gaussian_f64(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """skimage.filters.gaussian (scipy.ndimage.gaussian_filter, border 'nearest') on float64
    (N, C, H, W), in scipy's order: rows axis first, then columns, and along each axis its
    symmetric sum, centre * w0 + (left_j + right_j) * w_j from the farthest j inwards. Equal
    to skimage bit for bit (values on an 8-bit boundary truncate to the same side)."""
    taps = scipy_gaussian_taps(sigma, truncate)
    r = len(taps) // 2
    for dim in (2, 3):
        n = x.shape[dim]
        padded = pad(x, (r, r), (0, 0), "edge") if dim == 2 else pad(x, (0, 0), (r, r), "edge")
        out = padded.narrow(dim, r, n) * taps[r]
        for j in range(r, 0, -1):
            out = out + (padded.narrow(dim, r - j, n) + padded.narrow(dim, r + j, n)) * taps[r + j]
        x = out
    return x
