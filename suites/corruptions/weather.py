"""Weather corruptions of CIFAR-10-C and ImageNet-C: snow, frost, fog (brightness is in
``digital``) and the extra spatter. Each function receives its severity's entry of a
constants table (the CIFAR tables below, or ``IMAGENET``)."""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path

import numpy as np
import torch

from suites.corruptions import _ops

# loc, scale, zoom, threshold, motion radius, motion sigma, blend
SNOW = ((0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))
# image weight, frost weight, scale of the frost photos (CIFAR's script shrinks them to 1/5)
FROST = ((1, 0.2, 0.2), (1, 0.3, 0.2), (0.9, 0.4, 0.2), (0.85, 0.4, 0.2), (0.75, 0.45, 0.2))
FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))  # strength, wibble decay
# loc, scale, sigma, threshold, intensity (water) / mask sigma (mud), mud?
SPATTER = ((0.62, 0.1, 0.7, 0.7, 0.5, 0),
           (0.65, 0.1, 0.8, 0.7, 0.5, 0),
           (0.65, 0.3, 1, 0.69, 0.5, 0),
           (0.65, 0.1, 0.7, 0.69, 0.6, 1),
           (0.65, 0.1, 0.5, 0.68, 0.6, 1))
# make_imagenet_c.py's constants (224x224)
IMAGENET = {
    "snow": ((0.1, 0.3, 3, 0.5, 10, 4, 0.8),
             (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
             (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
             (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
             (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
    "frost": ((1, 0.4, 1), (0.8, 0.6, 1), (0.7, 0.7, 1), (0.65, 0.7, 1), (0.6, 0.75, 1)),
    "fog": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
    "spatter": ((0.65, 0.3, 4, 0.69, 0.6, 0),
                (0.65, 0.3, 3, 0.68, 0.6, 0),
                (0.65, 0.3, 2, 0.68, 0.5, 0),
                (0.65, 0.3, 1, 0.65, 1.5, 1),
                (0.67, 0.4, 1, 0.65, 1.5, 1)),
}
RGB_TO_GREY = (0.299, 0.587, 0.114)  # cv2.COLOR_RGB2GRAY


def _grey(x: torch.Tensor) -> torch.Tensor:
    r, g, b = RGB_TO_GREY
    return (x[:, 0:1] * r).add_(x[:, 1:2] * g).add_(x[:, 2:3] * b)


def snow(x: torch.Tensor, c: tuple[float, ...], gen: torch.Generator) -> torch.Tensor:
    """Snowflakes: thresholded Gaussian noise, zoomed, cast to uint8, motion-blurred by
    ImageMagick at an angle in [-135, -45) degrees; the image is lightened towards
    ``max(x, 1.5 grey + 0.5)`` and the flakes are added twice, once rotated by 180
    degrees."""
    loc, scale, zoom, threshold, radius, sigma, blend = c
    n, _, h, w = x.shape
    flakes = torch.randn((n, 1, h, w), generator=gen, device=x.device, dtype=x.dtype)
    flakes = flakes.mul_(scale).add_(loc)
    if zoom != 1:  # clipped_zoom by 1 is the identity
        flakes = _ops.clipped_zoom(flakes, zoom)
    flakes = _ops.truncate_u8(flakes.mul_(_ops.mask_of(torch.ge, flakes, threshold)))
    angle = torch.rand(n, generator=gen, device=x.device, dtype=torch.float64) * 90 - 135
    flakes = _ops.truncate_u8(_ops.motion_blur(flakes, radius, sigma, angle))  # as blur.py
    lighter = torch.maximum(x, _grey(x).mul_(1.5).add_(0.5)).mul_(1 - blend)
    return x.mul_(blend).add_(lighter).add_(flakes).add_(flakes.flip(-1, -2))


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


FROST_PHOTOS = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
FROST_PACKAGE = "imagecorruptions"  # ships the release's frost photos (Apache-2.0, as the script)


@functools.cache
def frost_images(scale: float = 0.2) -> tuple[tuple[torch.Tensor, ...], str]:
    """The frost images crops are drawn from, and where they come from.

    The release's five frost photos when an installed package ships them (``pip install
    imagecorruptions``, the package of Michaelis et al. 2019, arXiv:1907.07484, which carries
    the original photos), prepared as the script prepares them: scaled by ``scale`` (the
    CIFAR script's 0.2: bilinear, half-pixel centres like cv2.resize; OpenCV's fixed-point
    rounding may differ by a grey level; the ImageNet script's 1: as read), kept as 8-bit
    RGB. Otherwise the procedural ``frost_textures``, made at the CIFAR scale and upsampled
    bilinearly for other scales. The source --
    ``photos:<sha256 of the files>`` or ``procedural`` -- is part of the engine's identity,
    so data generated with one never passes for the other."""
    from importlib import metadata

    try:
        dist = metadata.distribution(FROST_PACKAGE)
        paths = [Path(str(dist.locate_file(f"{FROST_PACKAGE}/frost/{n}"))) for n in FROST_PHOTOS]
    except metadata.PackageNotFoundError:
        paths = []
    if not paths or not all(p.is_file() for p in paths):
        textures = frost_textures()
        if scale != 0.2:
            h, w = textures.shape[-2:]
            textures = torch.nn.functional.interpolate(
                textures, size=(round(h * scale / 0.2), round(w * scale / 0.2)),
                mode="bilinear", align_corners=False)
        return tuple(textures), "procedural"
    from PIL import Image

    digest = hashlib.sha256()
    images = []
    for path in paths:
        digest.update(path.read_bytes())
        with Image.open(path) as photo:
            rgb = torch.from_numpy(np.asarray(photo.convert("RGB")).copy())
        h, w = rgb.shape[:2]
        image = rgb.permute(2, 0, 1).double()
        if scale != 1:
            image = torch.nn.functional.interpolate(
                image[None], size=(round(h * scale), round(w * scale)),
                mode="bilinear", align_corners=False, antialias=False)[0].round_()
        images.append(image.clamp_(0, 255).float().div_(255))
    return tuple(images), f"photos:{digest.hexdigest()}"


def frost(x: torch.Tensor, c: tuple[float, float, float], gen: torch.Generator
          ) -> torch.Tensor:
    """``c0 * image + c1 * frost crop``: a random one of five frost images (the scripts draw
    randint(5), so their sixth photo is never used) at scale c2, and a random crop position,
    also drawn like the scripts (the last row/column offset is never drawn). The images are
    the release's photos when installed, else procedural textures (see ``frost_images``)."""
    image_weight, frost_weight, scale = c
    n, _, h, w = x.shape
    images, _ = frost_images(scale)
    sizes = torch.tensor([img.shape[-2:] for img in images], device=x.device)
    if (sizes[:, 0] <= h).any() or (sizes[:, 1] <= w).any():
        raise ValueError(f"frost images are {sizes.tolist()}; images must be smaller, got "
                         f"{h}x{w}")
    which = torch.randint(0, len(images), (n,), generator=gen, device=x.device)
    spans = sizes[which] - torch.tensor([h, w], device=x.device)  # randint(0, size - 32)
    offsets = (torch.rand((n, 2), generator=gen, device=x.device, dtype=torch.float64)
               * spans).long()
    crops = torch.empty_like(x)
    for k, image in enumerate(images):
        chosen = (which == k).nonzero().flatten()
        if len(chosen) == 0:
            continue
        image = image.to(device=x.device, dtype=x.dtype)
        rows = offsets[chosen, 0, None] + torch.arange(h, device=x.device)  # (m, h)
        cols = offsets[chosen, 1, None] + torch.arange(w, device=x.device)  # (m, w)
        crops[chosen] = image[:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3)
    return x.mul_(image_weight).add_(crops.mul_(frost_weight))


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


def fog(x: torch.Tensor, c: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    strength, decay = c
    n, _, h, w = x.shape
    mapsize = 1 << (max(h, w) - 1).bit_length()  # next power of two: 32 for CIFAR, as there
    plasma = plasma_fractal(n, mapsize, decay, gen, x.device)[:, None, :h, :w].to(x.dtype)
    brightest = x.reshape(n, -1).amax(1)[:, None, None, None]
    return x.add_(plasma.mul_(strength)).mul_(brightest).div_(brightest + strength)


# ---- spatter ----------------------------------------------------------------------------

def _canny(grey_u8: torch.Tensor, low: float = 50, high: float = 150) -> torch.Tensor:
    """cv2.Canny(img, 50, 150) on (N, 1, H, W) uint8-valued floats: 3x3 Sobel (replicated
    border), L1 magnitude, non-maximum suppression in 4 directions, hysteresis by
    8-connected growth from strong edges. Returns the edge map as float 0/1 (masks are
    float arithmetic throughout, see ``_ops.mask_of``)."""
    sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=grey_u8.dtype)
    gx = _ops.correlate(grey_u8, sobel, "edge")
    gy = _ops.correlate(grey_u8, sobel.T, "edge")
    ax, ay = gx.abs(), gy.abs()
    magnitude = ax + ay
    padded = torch.nn.functional.pad(magnitude, (1, 1, 1, 1))
    h, w = magnitude.shape[-2:]

    def beats(dy: int, dx: int, or_equal: bool = False) -> torch.Tensor:
        other = padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        return _ops.mask_of(torch.ge if or_equal else torch.gt, magnitude, other)

    tan22, tan67 = math.tan(math.pi / 8), math.tan(3 * math.pi / 8)
    horizontal = _ops.mask_of(torch.lt, ay, ax * tan22)
    vertical = _ops.mask_of(torch.gt, ay, ax * tan67)
    diagonal = 1 - horizontal - vertical  # the two are exclusive
    anti = _ops.mask_of(torch.lt, gx * gy, 0)  # gradient along the anti-diagonal
    keep_d = (beats(-1, -1) * beats(1, 1)).mul_(1 - anti).add_(
        anti.mul_(beats(-1, 1)).mul_(beats(1, -1)))
    maximal = horizontal.mul_(beats(0, -1)).mul_(beats(0, 1, True))
    maximal += vertical.mul_(beats(-1, 0)).mul_(beats(1, 0, True))
    maximal += diagonal.mul_(keep_d)
    weak = maximal.mul_(_ops.mask_of(torch.gt, magnitude, low))
    edges = weak * _ops.mask_of(torch.gt, magnitude, high)
    count = edges.sum()
    if count == weak.sum():
        return edges
    while True:  # grow strong edges into 8-connected weak ones until nothing changes
        grown = torch.nn.functional.pad(edges, (1, 1, 1, 1))
        grown = torch.maximum(torch.maximum(grown[..., :-2], grown[..., 1:-1]), grown[..., 2:])
        grown = torch.maximum(torch.maximum(grown[..., :-2, :], grown[..., 1:-1, :]),
                              grown[..., 2:, :]).mul_(weak)
        grown_count = grown.sum()
        if grown_count == count:  # growth only adds pixels: same count, same map
            return edges
        edges, count = grown, grown_count


def _distance_to(mask: torch.Tensor, cap: float) -> torch.Tensor:
    """Euclidean distance of every pixel to the nearest marked pixel of the float 0/1
    ``mask`` (N, 1, H, W), capped at ``cap`` (also where nothing is marked). Exact: the
    nearest marked pixel of each column by two running scans, then the least row distance^2
    + column distance^2 over all columns (in chunks of rows). OpenCV's DIST_L2 with a 5x5
    mask, which the script uses, approximates this exact distance."""
    n, _, h, w = mask.shape
    marked = mask[:, 0]
    far = 1e6  # beyond any distance here, and exact in float32 with a row index added
    rows = torch.arange(h, device=mask.device, dtype=mask.dtype)[None, :, None]
    # nearest marked row at or above each pixel, and (on the flipped mask) at or below
    above = (rows + far).mul(marked).sub_(far).cummax(1).values
    below = (rows + far).mul(marked.flip(1)).sub_(far).cummax(1).values.flip(1)
    column = torch.minimum(rows - above, (h - 1) - below - rows).square_()
    column = column.clamp_(max=cap * cap + 1).view(-1, w)  # beyond the cap: all alike
    cols = torch.arange(w, device=mask.device, dtype=mask.dtype)
    across = (cols[:, None] - cols[None, :]).square_()  # (w_out, w_in)
    best = torch.empty_like(column)
    chunk = max(1, 2**20 // (w * w))  # rows per step: a reused buffer of ~4 MB
    buffer = torch.empty((min(chunk, len(column)), w, w), dtype=mask.dtype,
                         device=mask.device)
    for start in range(0, len(column), chunk):
        part = column[start:start + chunk]
        total = torch.add(part[:, None, :], across, out=buffer[:len(part)])
        torch.amin(total, 2, out=best[start:start + chunk])
    return best.sqrt_().clamp_(max=cap).view(n, 1, h, w)


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


def spatter(x: torch.Tensor, c: tuple[float, ...], gen: torch.Generator) -> torch.Tensor:
    """Water drops (severities 1-3) or mud (4-5), as in the script. The water branch
    outlines thresholded blobs with Canny edges and a distance transform, equalises and
    embosses it, and adds pale turquoise (175, 238, 238); the mud branch paints blurred
    blobs brown (63, 42, 20). The script treats its RGB arrays as BGR in the water
    branch, so turquoise is added with 175 on the red channel; kept."""
    loc, scale, sigma, threshold, strength, mud = c
    n, _, h, w = x.shape
    liquid = torch.randn((n, 1, h, w), generator=gen, device=x.device, dtype=x.dtype)
    liquid = _ops.gaussian(liquid.mul_(scale).add_(loc), sigma)
    liquid = liquid.mul_(_ops.mask_of(torch.ge, liquid, threshold))
    if mud:
        mask = _ops.gaussian(_ops.mask_of(torch.gt, liquid, threshold), strength)
        mask = mask.mul_(_ops.mask_of(torch.ge, mask, 0.8))
        colour = torch.tensor((63, 42, 20), dtype=x.dtype, device=x.device)[:, None, None] / 255
        return x.mul_(1 - mask).add_(colour * mask)
    liquid_u8 = liquid.mul_(255).floor_().clamp_(0, 255)  # .astype(np.uint8)
    dist = _distance_to(_canny(liquid_u8), cap=20)
    dist = _ops.box_blur3(dist).floor_()
    dist = _equalize_hist(dist)
    emboss = torch.tensor([[-2.0, -1, 0], [-1, 1, 1], [0, 1, 2]])
    dist = _ops.correlate(dist, emboss, "mirror").round_().clamp_(0, 255)  # CV_8U
    dist = _ops.box_blur3(dist)
    m = liquid_u8.mul_(dist)
    m = m.div_(m.reshape(n, -1).amax(1).clamp(min=1e-12)[:, None, None, None]).mul_(strength)
    colour = torch.tensor((175, 238, 238), dtype=x.dtype, device=x.device)[:, None, None] / 255
    return x.add_(m * colour)
