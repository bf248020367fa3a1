"""Weather corruptions of CIFAR-10-C: snow, frost, fog (brightness is in ``digital``) and
the extra spatter."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from suites.corruptions import _ops

# loc, scale, zoom, threshold, motion radius, motion sigma, blend
SNOW = ((0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))
FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))  # image, frost weights
FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))  # strength, wibble decay
# loc, scale, sigma, threshold, intensity (water) / mask sigma (mud), mud?
SPATTER = ((0.62, 0.1, 0.7, 0.7, 0.5, 0),
           (0.65, 0.1, 0.8, 0.7, 0.5, 0),
           (0.65, 0.3, 1, 0.69, 0.5, 0),
           (0.65, 0.1, 0.7, 0.69, 0.6, 1),
           (0.65, 0.1, 0.5, 0.68, 0.6, 1))
RGB_TO_GREY = (0.299, 0.587, 0.114)  # cv2.COLOR_RGB2GRAY


def _grey(x: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(RGB_TO_GREY, dtype=x.dtype, device=x.device)
    return (x * weights[:, None, None]).sum(1, keepdim=True)


def snow(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    loc, scale, zoom, threshold, radius, sigma, blend = SNOW[severity - 1]
    n, _, h, w = x.shape
    flakes = loc + scale * torch.randn((n, 1, h, w), generator=gen, device=x.device,
                                       dtype=x.dtype)
    flakes = _ops.clipped_zoom(flakes, zoom)
    flakes = _ops.truncate_u8(torch.where(flakes < threshold, 0, flakes))  # to a uint8 PIL image
    angle = torch.rand(n, generator=gen, device=x.device, dtype=torch.float64) * 90 - 135
    flakes = _ops.round_u8(_ops.motion_blur(flakes, radius, sigma, angle))
    x = blend * x + (1 - blend) * torch.maximum(x, _grey(x) * 1.5 + 0.5)
    return x + flakes + flakes.flip(-1, -2)


@functools.cache
def frost_textures(count: int = 5, size: tuple[int, int] = (96, 128)) -> torch.Tensor:
    """Procedural stand-ins for the script's frost photographs (float (count, 3, H, W) in
    [0, 1], fixed seed, so they are the same on every machine).

    The original blends crops of frost photos (downscaled to 1/5, 63-120 px high); we do
    not ship photos, so each texture is drawn instead: a smooth base of bluish-white ice
    plus needle-like crystals that branch at +-60 degrees, blurred slightly. Mean level,
    contrast and tint of the five textures span the range measured on the five photos the
    script samples from (channel means about 75-215 of 255, blue > green > red, crop
    standard deviation 17-41 of 255). These are not the release's frost images: frost
    results are comparable with other runs of this engine, not pixel for pixel with
    CIFAR-10-C."""
    rng = np.random.default_rng(20190101)
    h, w = size
    # per texture: base level, crystal gain, tint (r, g, b) -- spans the photos' statistics
    looks = ((0.50, 0.45, (0.55, 1.0, 1.1)), (0.78, 0.25, (0.94, 0.97, 1.0)),
             (0.78, 0.25, (0.94, 0.97, 1.0)), (0.52, 0.50, (0.88, 0.97, 1.05)),
             (0.42, 0.55, (0.85, 0.93, 1.02)))
    textures = []
    for base_level, gain, tint in looks[:count]:
        base = _smooth_noise(rng, h, w)
        crystals = _crystal_needles(rng, h, w)
        grey = base_level * (0.8 + 0.4 * base) + gain * crystals
        colour = np.clip(grey[None] * np.asarray(tint)[:, None, None], 0, 1)
        textures.append(colour)
    return torch.from_numpy(np.stack(textures).astype(np.float32))


def _smooth_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: uniform noise on a coarse grid, upsampled bilinearly."""
    coarse = torch.from_numpy(rng.uniform(size=(1, 1, h // 16 + 2, w // 16 + 2)))
    fine = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear",
                                           align_corners=True)[0, 0].numpy()
    return (fine - fine.min()) / (np.ptp(fine) + 1e-12)


def _crystal_needles(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Bright straight needles with side branches at +-60 degrees, splatted and blurred."""
    canvas = np.zeros((h, w))
    for _ in range(int(h * w / 60)):
        y, x0 = rng.uniform(0, h), rng.uniform(0, w)
        angle = rng.uniform(0, 2 * math.pi)
        length, brightness = rng.uniform(3, 14), rng.uniform(0.3, 1.0)
        _draw_line(canvas, y, x0, angle, length, brightness)
        for step in np.arange(1.5, length, 2.5):  # side branches, shorter towards the tip
            by, bx = y + step * math.sin(angle), x0 + step * math.cos(angle)
            side = rng.choice((-1, 1)) * math.pi / 3
            _draw_line(canvas, by, bx, angle + side, (length - step) * 0.4, brightness * 0.7)
    blurred = _ops.gaussian(torch.from_numpy(canvas)[None, None], 0.7, mode="symmetric")
    crystals = blurred[0, 0].numpy()
    return np.clip(crystals / (np.quantile(crystals, 0.99) + 1e-12), 0, 1.2)


def _draw_line(canvas: np.ndarray, y: float, x: float, angle: float, length: float,
               brightness: float) -> None:
    t = np.arange(0, length, 0.5)
    rows = np.round(y + t * math.sin(angle)).astype(int) % canvas.shape[0]  # wraps: tileable
    cols = np.round(x + t * math.cos(angle)).astype(int) % canvas.shape[1]
    np.maximum.at(canvas, (rows, cols), brightness)


def frost(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """``c0 * image + c1 * frost crop``: a random one of five textures (the script draws
    randint(5), so its sixth photo is never used) and a random crop position, also drawn
    like the script (the last row/column offset is never drawn). The image is also scaled
    down at severities 3-5 (0.9, 0.85, 0.75). Textures are procedural: see
    ``frost_textures``."""
    image_weight, frost_weight = FROST[severity - 1]
    n, _, h, w = x.shape
    textures = frost_textures().to(device=x.device, dtype=x.dtype)
    th, tw = textures.shape[-2:]
    if th <= h or tw <= w:
        raise ValueError(f"frost textures are {th}x{tw}; images must be smaller, got {h}x{w}")
    which = torch.randint(0, len(textures), (n,), generator=gen, device=x.device)
    top = torch.randint(0, th - h, (n,), generator=gen, device=x.device)
    left = torch.randint(0, tw - w, (n,), generator=gen, device=x.device)
    rows = top[:, None] + torch.arange(h, device=x.device)  # (n, h)
    cols = left[:, None] + torch.arange(w, device=x.device)
    crops = textures[which[:, None, None, None], torch.arange(3, device=x.device)[None, :, None,
                     None], rows[:, None, :, None], cols[:, None, None, :]]
    return image_weight * x + frost_weight * crops


def plasma_fractal(n: int, mapsize: int, wibble_decay: float, gen: torch.Generator,
                   device, dtype=torch.float64) -> torch.Tensor:
    """The script's diamond-square heightmap, one per image, (n, mapsize, mapsize) in [0, 1].
    As in the original, the random offset at each level is wibble * U(-wibble, wibble)."""
    assert mapsize & (mapsize - 1) == 0, "mapsize must be a power of two"
    heights = torch.zeros((n, mapsize, mapsize), dtype=dtype, device=device)
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(total.shape, generator=gen, device=device, dtype=dtype)
        return total / 4 + wibble * (2 * noise - 1) * wibble

    while step >= 2:
        half = step // 2
        corners = heights[:, 0::step, 0::step]  # squares: centres from the four corners
        total = corners + corners.roll(-1, 1)
        total = total + total.roll(-1, 2)
        heights[:, half::step, half::step] = wibbled_mean(total)
        centres = heights[:, half::step, half::step]  # diamonds: edge midpoints
        corners = heights[:, 0::step, 0::step]
        total = centres + centres.roll(1, 1) + corners + corners.roll(-1, 2)
        heights[:, 0::step, half::step] = wibbled_mean(total)
        total = centres + centres.roll(1, 2) + corners + corners.roll(-1, 1)
        heights[:, half::step, 0::step] = wibbled_mean(total)
        step //= 2
        wibble /= wibble_decay
    flat = heights.reshape(n, -1)
    low = flat.amin(1)[:, None, None]
    heights = heights - low
    return heights / heights.reshape(n, -1).amax(1)[:, None, None]


def fog(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    strength, decay = FOG[severity - 1]
    n, _, h, w = x.shape
    mapsize = 1 << (max(h, w) - 1).bit_length()  # next power of two: 32 for CIFAR, as there
    plasma = plasma_fractal(n, mapsize, decay, gen, x.device)[:, None, :h, :w].to(x.dtype)
    brightest = x.reshape(n, -1).amax(1)[:, None, None, None]
    return (x + strength * plasma) * brightest / (brightest + strength)


# ---- spatter ----------------------------------------------------------------------------

def _canny(grey_u8: torch.Tensor, low: float = 50, high: float = 150) -> torch.Tensor:
    """cv2.Canny(img, 50, 150) on (N, 1, H, W) uint8-valued floats: 3x3 Sobel (replicated
    border), L1 magnitude, non-maximum suppression in 4 directions, hysteresis by
    8-connected growth from strong edges. Returns a bool edge map."""
    sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=grey_u8.dtype)
    gx = _ops.correlate(grey_u8, sobel, "edge")
    gy = _ops.correlate(grey_u8, sobel.T, "edge")
    magnitude = gx.abs() + gy.abs()
    padded = torch.nn.functional.pad(magnitude, (1, 1, 1, 1))
    h, w = magnitude.shape[-2:]

    def neighbour(dy: int, dx: int) -> torch.Tensor:
        return padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    ax, ay = gx.abs(), gy.abs()
    tan22, tan67 = math.tan(math.pi / 8), math.tan(3 * math.pi / 8)
    horizontal = ay < ax * tan22
    vertical = ay > ax * tan67
    s = torch.where(gx * gy < 0, -1, 1)
    keep_h = (magnitude > neighbour(0, -1)) & (magnitude >= neighbour(0, 1))
    keep_v = (magnitude > neighbour(-1, 0)) & (magnitude >= neighbour(1, 0))
    keep_d = torch.where(s > 0, (magnitude > neighbour(-1, -1)) & (magnitude > neighbour(1, 1)),
                         (magnitude > neighbour(-1, 1)) & (magnitude > neighbour(1, -1)))
    maximal = torch.where(horizontal, keep_h, torch.where(vertical, keep_v, keep_d))
    weak = maximal & (magnitude > low)
    edges = weak & (magnitude > high)
    while True:
        grown = torch.nn.functional.max_pool2d(edges.to(grey_u8.dtype), 3, 1, 1) > 0
        grown &= weak
        if torch.equal(grown, edges):
            return edges
        edges = grown


def _distance_to(mask: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of every pixel to the nearest True pixel of ``mask`` (N, 1, H, W),
    inf where there is none. Exact: the nearest marked pixel of each column by two running
    scans, then a min over columns of (row distance^2 + column distance^2). OpenCV's DIST_L2
    with a 5x5 mask, which the script uses, approximates this exact distance."""
    n, _, h, w = mask.shape
    marked = mask[:, 0]
    rows = torch.arange(h, device=mask.device, dtype=torch.float32)[None, :, None]
    inf = torch.tensor(float("inf"), device=mask.device)
    above = torch.where(marked, rows, -inf).cummax(1).values  # nearest marked row at or above
    below = torch.where(marked, rows, inf).flip(1).cummin(1).values.flip(1)  # at or below
    column = torch.minimum(rows - above, below - rows) ** 2  # (n, h, w)
    cols = torch.arange(w, device=mask.device, dtype=torch.float32)
    across = (cols[:, None] - cols[None, :]) ** 2  # (w_out, w_in)
    total = (column[:, :, None, :] + across).amin(3)
    return total.sqrt()[:, None]


def _equalize_hist(u8: torch.Tensor) -> torch.Tensor:
    """cv2.equalizeHist per image on (N, 1, H, W) uint8-valued floats."""
    n = len(u8)
    values = u8.reshape(n, -1).long()
    hist = torch.zeros((n, 256), dtype=torch.float64, device=u8.device)
    hist.scatter_add_(1, values, torch.ones_like(values, dtype=torch.float64))
    total = values.shape[1]
    first = (hist > 0).to(torch.int64).argmax(1, keepdim=True)
    first_count = hist.gather(1, first)
    scale = 255.0 / (total - first_count).clamp(min=1)
    cumulative = hist.cumsum(1) - first_count
    lut = torch.round(cumulative * scale).clamp(0, 255)
    lut = torch.where(torch.arange(256, device=u8.device)[None] <= first, 0.0, lut)
    single = first_count == total  # one grey level: OpenCV maps it to itself
    lut = torch.where(single, first.to(lut.dtype).expand(-1, 256), lut)
    return lut.gather(1, values).reshape(u8.shape).to(u8.dtype)


def spatter(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Water drops (severities 1-3) or mud (4-5), as in the script. The water branch
    outlines thresholded blobs with Canny edges and a distance transform, equalises and
    embosses it, and adds pale turquoise (175, 238, 238); the mud branch paints blurred
    blobs brown (63, 42, 20). The script treats its RGB arrays as BGR in the water
    branch, so turquoise is added with 175 on the red channel; kept."""
    loc, scale, sigma, threshold, strength, mud = SPATTER[severity - 1]
    n, _, h, w = x.shape
    liquid = loc + scale * torch.randn((n, 1, h, w), generator=gen, device=x.device,
                                       dtype=x.dtype)
    liquid = _ops.gaussian(liquid, sigma)
    liquid = torch.where(liquid < threshold, 0, liquid)
    if mud:
        mask = _ops.gaussian((liquid > threshold).to(x.dtype), strength)
        mask = torch.where(mask < 0.8, 0, mask)
        colour = torch.tensor((63, 42, 20), dtype=x.dtype, device=x.device)[:, None, None] / 255
        return x * (1 - mask) + colour * mask
    liquid_u8 = torch.floor(liquid * 255).clamp(0, 255)  # .astype(np.uint8)
    dist = _distance_to(_canny(liquid_u8)).clamp(max=20).to(x.dtype)
    dist = torch.floor(_ops.box_blur3(dist))
    dist = _equalize_hist(dist)
    emboss = torch.tensor([[-2.0, -1, 0], [-1, 1, 1], [0, 1, 2]])
    dist = torch.round(_ops.correlate(dist, emboss, "mirror")).clamp(0, 255)  # CV_8U
    dist = _ops.box_blur3(dist)
    m = liquid_u8 * dist
    m = m / m.reshape(n, -1).amax(1).clamp(min=1e-12)[:, None, None, None] * strength
    colour = torch.tensor((175, 238, 238), dtype=x.dtype, device=x.device)[:, None, None] / 255
    return x + m * colour
