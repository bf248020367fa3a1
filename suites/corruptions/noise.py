"""Noise corruptions of CIFAR-10-C and ImageNet-C (Hendrycks & Dietterich, ICLR 2019):
gaussian, shot, impulse and speckle noise. Constants: ``make_cifar_c.py`` (CIFAR, 32x32) and
``make_imagenet_c.py`` (ImageNet, 224x224); each function receives its severity's entry.

The corruption functions own their input tensor (``corrupt`` passes a fresh copy), so they
work in place where that saves a pass over the batch."""

from __future__ import annotations

import functools
import math

import torch

GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)  # standard deviation
SHOT_NOISE = (500, 250, 100, 75, 50)  # photons per unit intensity
IMPULSE_NOISE = (0.01, 0.02, 0.03, 0.05, 0.07)  # fraction of values flipped
SPECKLE_NOISE = (0.06, 0.1, 0.12, 0.16, 0.2)  # standard deviation of the multiplier
IMAGENET = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),
}

LEVELS = 256  # 8-bit input levels
CELL_BITS = 12  # the Poisson inversion table has 2**12 cells of equal probability per level


def gaussian_noise(x: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return x.add_(noise.mul_(std))


def shot_noise(x: torch.Tensor, photons: float, gen: torch.Generator) -> torch.Tensor:
    """``poisson(x * c) / c``, an exact Poisson draw per value.

    On 8-bit input (the script's, and ours with ``quantize=True``) the rate takes one of 256
    values, so the draw is an inversion of that rate's cumulative distribution, looked up:
    see ``poisson_inversion_tables``. Other input is split as x = l/255 + r with l the level
    below: by the additivity of independent Poisson variables, poisson(x c) is
    poisson(l c / 255) (from the table) plus poisson(r c) (torch.poisson), the same law."""
    scaled = x.mul(LEVELS - 1)
    levels = scaled.round()
    if (scaled - levels).abs_().max() <= 1e-3:  # on the 8-bit grid up to float rounding
        return poisson_of_levels(levels, photons, gen).div_(photons)
    levels = scaled.floor_().clamp_(0, LEVELS - 1)
    remainder = (x - levels / (LEVELS - 1)).clamp_(min=0).mul_(photons)
    counts = poisson_of_levels(levels, photons, gen)
    return counts.add_(torch.poisson(remainder, generator=gen)).div_(photons)


@functools.cache
def poisson_inversion_tables(photons: float, device: torch.device
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables for drawing poisson(l * photons / 255), l = 0..255, by inversion: k is the
    smallest count whose CDF exceeds a uniform u. The top 12 bits of u pick one of 4096
    equally likely cells of [0, 1); where no CDF value falls inside the cell (about 97% or
    more of them), every u in it gives the same k, stored in ``counts`` (levels, 4096,
    int16). Other cells store -1 - (smallest candidate k), and the draw is finished with a
    float64 uniform within the cell and a binary search of ``cdf`` (levels, kmax + 1).
    The CDF (a float64 cumulative sum) is accurate to ~1e-13 and the tail beyond kmax
    (photons + 14 sqrt(photons) + 40 counts, probability < 1e-40) is folded into kmax, so
    every count's probability is right to ~1e-13: an exact sampler in practice, unlike a
    normal approximation (numpy's own sampler also works in float64)."""
    cells = 1 << CELL_BITS
    rate = torch.arange(LEVELS, dtype=torch.float64)[:, None] * (photons / (LEVELS - 1))
    kmax = int(photons + 14 * math.sqrt(photons) + 40)
    k = torch.arange(kmax + 1, dtype=torch.float64)
    log_pmf = k * torch.log(rate.clamp(min=1e-300)) - rate - torch.lgamma(k + 1)
    cdf = torch.exp(log_pmf).cumsum(1)  # float64 sum from k = 0: accurate to ~1e-13
    cdf.clamp_(max=1.0)
    cdf[0] = 1.0  # rate 0: always 0
    cdf[:, -1] = 1.0
    # first[l, j] = smallest k with cdf[l, k] > j / cells, from the cells the CDF values
    # reach: cdf <= j / cells exactly when ceil(cdf * cells) <= j (scaling by 2**12 is exact)
    reached = torch.ceil(cdf * cells).long()
    histogram = torch.zeros((LEVELS, cells + 2), dtype=torch.int64)
    histogram.scatter_add_(1, reached, torch.ones_like(reached))
    first = histogram.cumsum(1)[:, :cells + 1].clamp(max=kmax)
    lowest, next_lowest = first[:, :-1], first[:, 1:]
    single = lowest == next_lowest  # no CDF value inside the cell: k is fixed
    counts = torch.where(single, lowest, -1 - lowest).to(torch.int16)  # kmax < 2**15
    return counts.to(device), cdf.to(device)


def poisson_of_levels(levels: torch.Tensor, photons: float, gen: torch.Generator
                      ) -> torch.Tensor:
    """poisson(levels * photons / 255) for float tensors of integer levels 0..255, as
    floats; ``levels`` is overwritten."""
    counts, cdf = poisson_inversion_tables(float(photons), levels.device)
    cells = 1 << CELL_BITS
    # table index: level * cells + a uniform cell, built in float32 (exact below 2**24)
    cell = torch.randint(0, cells, levels.shape, generator=gen, device=levels.device,
                         dtype=levels.dtype)
    index = levels.mul_(cells).add_(cell).int().reshape(-1)
    out = counts.view(-1).index_select(0, index)  # int16: a small table stays in cache
    pending = (out < 0).nonzero().squeeze(1)
    if len(pending):
        out[pending] = _invert_within_cells(index[pending].long(), -1 - out[pending].long(),
                                            counts, cdf, gen).to(out.dtype)
    return out.view(levels.shape).to(levels.dtype)


def _invert_within_cells(index: torch.Tensor, low: torch.Tensor, counts: torch.Tensor,
                         cdf: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Finish inversion draws whose cell holds CDF values: u = (cell + v) / cells with a
    fresh float64 v, then a binary search for the smallest k >= ``low`` with cdf > u. The
    answer is at most the smallest candidate of the next cell (or kmax)."""
    cells = 1 << CELL_BITS
    level, cell = index // cells, index % cells
    u = (torch.rand(len(index), generator=gen, device=index.device, dtype=torch.float64)
         + cell) / cells
    last = cell == cells - 1
    following = counts.view(-1)[torch.where(last, index, index + 1)].long()
    high = torch.where(following < 0, -1 - following, following)
    high = torch.where(last, cdf.shape[1] - 1, high)
    row_start = level * cdf.shape[1]
    flat_cdf = cdf.view(-1)
    active = torch.arange(len(index), device=index.device)
    while len(active):
        lo, hi = low[active], high[active]
        mid = (lo + hi) // 2
        below = flat_cdf[row_start[active] + mid] <= u[active]
        lo = torch.where(below, mid + 1, lo)
        hi = torch.where(below, hi, mid)
        low[active], high[active] = lo, hi
        active = active[lo < hi]
    return low


def impulse_noise(x: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """skimage's salt & pepper: every channel value independently flips with probability
    ``amount``, to 1 or 0 with equal odds (so a flipped pixel is usually coloured).

    Rather than a uniform per value, the flipped positions are drawn as a Bernoulli process:
    the gaps between successive flips are independent geometric variables (inversion:
    1 + floor(log U / log(1 - amount))), which gives the same law with ~amount as many
    random numbers."""
    flat = x.view(-1) if x.is_contiguous() else x.reshape(-1)
    total = flat.numel()
    expected = total * amount
    gaps = []
    reached = 0
    while reached < total:  # almost always one round: the draw exceeds the mean by 6 sd
        draw = int(expected + 6 * math.sqrt(expected) + 16)
        uniform = 1 - torch.rand(draw, generator=gen, device=x.device, dtype=torch.float64)
        gap = torch.floor(torch.log(uniform) / math.log1p(-amount)).long() + 1
        gaps.append(gap)
        reached += int(gap.sum())
    positions = torch.cat(gaps).cumsum(0) - 1
    positions = positions[positions < total]
    salt = torch.rand(len(positions), generator=gen, device=x.device) < 0.5
    flat[positions] = salt.to(x.dtype)
    return flat.view(x.shape)


def speckle_noise(x: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return x.add_(noise.mul_(x * std))
