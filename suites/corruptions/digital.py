"""Digital corruptions of CIFAR-10-C and ImageNet-C: contrast, elastic transform, pixelate,
JPEG, plus brightness (a weather corruption in the paper) and the extra saturate, which
share the HSV helpers. Each function receives its severity's entry of a constants table
(the CIFAR tables below, or ``IMAGENET``)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from suites.corruptions import _ops

BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)  # added to HSV value
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # factor towards the per-channel mean
# Elastic alpha, elastic sigma, affine jitter as fractions of a reference size: the image
# height (None; the CIFAR script's IMSIZE * ...) or a fixed size in pixels. Alpha grows
# while sigma and the jitter shrink, so severity 1 (pure affine, +-2.56 px) moves pixels
# most and severity 5 least: the corruption gets milder.
ELASTIC = ((0, 0, 0.08, None), (0.05, 0.2, 0.07, None), (0.08, 0.06, 0.06, None),
           (0.1, 0.04, 0.05, None), (0.1, 0.03, 0.03, None))
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)  # downscale factor
JPEG_QUALITY = (80, 65, 58, 50, 40)
SATURATE = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))  # HSV saturation * a + b
# make_imagenet_c.py's constants (224x224). Its elastic sizes are 244 * ..., "244 should
# have been 224, but ultimately nothing is incorrect" (the script's comment): kept.
IMAGENET = {
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "elastic_transform": ((2, 0.7, 0.1, 244), (2, 0.08, 0.2, 244), (0.05, 0.01, 0.02, 244),
                          (0.07, 0.01, 0.02, 244), (0.12, 0.01, 0.02, 244)),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
    "jpeg_compression": (25, 18, 15, 10, 7),
    "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
}


def brightness(x: torch.Tensor, c: float, gen: torch.Generator) -> torch.Tensor:
    """skimage's HSV round trip with V + c (clipped to 1), in float64 and in skimage's
    order of operations: the script truncates the result to 8 bits, and many results are
    whole levels up to float error, so only the script's own arithmetic puts them on the
    same side of the level (see ``corrupt``: float64 results are truncated exactly)."""
    hsv = _ops.skimage_rgb2hsv(_ops.script_input_f64(x))
    hsv[:, 2] = (hsv[:, 2] + c).clamp_(0, 1)
    return _ops.skimage_hsv2rgb(hsv)


def saturate(x: torch.Tensor, c: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """skimage's HSV round trip with S * a + b (clipped to [0, 1]): *0.3 and *0.1
    (desaturate) at CIFAR's severities 1-2, then *1.5, *2+0.1, *2.5+0.2 (oversaturate). skimage
    gives greys (S = 0) hue 0, i.e. red, so the +0.1/+0.2 offsets tint grey pixels red, as
    in the release. In float64, in skimage's order of operations (see ``brightness``)."""
    a, b = c
    hsv = _ops.skimage_rgb2hsv(_ops.script_input_f64(x))
    hsv[:, 1] = (hsv[:, 1] * a + b).clamp_(0, 1)
    return _ops.skimage_hsv2rgb(hsv)


def contrast(x: torch.Tensor, factor: float, gen: torch.Generator) -> torch.Tensor:
    """(x - mean) * c + mean per image and channel, in float64 as the script computes it;
    the means are NumPy's (its pairwise summation over each channel plane, which
    ``np.mean(x, axis=(0, 1))`` equals), so the result equals the script's bit for bit."""
    x = _ops.script_input_f64(x)
    n, c, h, w = x.shape
    planes = x.reshape(n * c, h * w).cpu().numpy()
    means = torch.from_numpy(np.add.reduce(planes, axis=1) / (h * w)).to(x.device)
    means = means.view(n, c, 1, 1)
    return (x - means) * factor + means


def elastic_transform(x: torch.Tensor, params: tuple[float, float, float, int | None],
                      gen: torch.Generator) -> torch.Tensor:
    """A random affine warp (three control points jittered by U(-a, a), OpenCV's
    reflect-101 border) followed by a smooth random displacement field (uniform noise
    blurred with sigma, times alpha; scipy 'reflect' border), both bilinear. At severity
    1 alpha is 0: the field is zero and scipy's resampling at the pixel centres returns
    the image, so that step is skipped (its draws would be unused)."""
    n, c, h, w = x.shape
    *fractions, reference = params
    alpha, sigma, jitter = (f * (h if reference is None else reference) for f in fractions)
    dev = x.device
    centre = torch.tensor([h // 2, w // 2], dtype=torch.float64, device=dev)
    half = min(h, w) // 3
    src = torch.stack([centre + half, centre + torch.tensor([half, -half], device=dev),
                       centre - half])  # (3, 2) as (x, y) points, as the script uses them
    dst = src + (torch.rand((n, 3, 2), generator=gen, device=dev, dtype=torch.float64) * 2 - 1
                 ) * jitter
    # cv2.getAffineTransform: M (2x3) with M @ [p, 1] = q for the three pairs.
    ones = torch.ones((3, 1), dtype=torch.float64, device=dev)
    forward = torch.linalg.solve(torch.cat([src, ones], 1), dst).transpose(1, 2)  # (n, 2, 3)
    # warpAffine samples the source at M^-1 (output position), reflect-101 border: that is
    # grid_sample's reflection padding with align_corners=True, whose normalised
    # coordinates are u = 2 p / (size - 1) - 1, i.e. p = D (u + 1) with D = diag((size-1)/2).
    # In those coordinates the inverse map is u -> D^-1 A^-1 D u + D^-1 (A^-1 (D 1 - t)) - 1.
    inverse = torch.linalg.inv(forward[:, :, :2])
    scale = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64, device=dev)
    linear = inverse * scale[None, None, :] / scale[None, :, None]
    shift = (inverse @ (scale - forward[:, :, 2])[:, :, None])[:, :, 0] / scale - 1
    # (affine_grid would do this as a batched product; a broadcast sum is faster, float64)
    grid = torch.empty((n, h, w, 2), dtype=x.dtype, device=dev)
    u = torch.linspace(-1, 1, w, dtype=torch.float64, device=dev)[None, None, :]
    v = torch.linspace(-1, 1, h, dtype=torch.float64, device=dev)[None, :, None]
    for k in range(2):
        coefficients = linear[:, k, :, None, None]
        grid[..., k] = coefficients[:, 0] * u + (coefficients[:, 1] * v + shift[:, k, None, None])
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    if alpha == 0:
        return x

    # The two displacement fields, dx drawn first: uniform noise, scipy gaussian
    # ('reflect' border, truncate 3) times alpha.
    noise = torch.rand((2 * n, 1, h, w), generator=gen, device=dev, dtype=x.dtype)
    fields = _ops.gaussian(noise.mul_(2).sub_(1), sigma, mode="symmetric", truncate=3)
    fields = fields.view(2, n, h, w).mul_(alpha)
    # scipy map_coordinates(order=1, mode='reflect') at (y + dy, x + dx): reflection about
    # the pixel edges, which is grid_sample's reflection with align_corners=False, whose
    # normalised coordinate is (2 p + 1) / size - 1.
    grid = torch.empty((n, h, w, 2), dtype=x.dtype, device=dev)
    cols = torch.arange(w, dtype=x.dtype, device=dev).mul_(2 / w).add_(1 / w - 1)
    rows = torch.arange(h, dtype=x.dtype, device=dev).mul_(2 / h).add_(1 / h - 1)
    torch.add(cols, fields[0], alpha=2 / w, out=grid[..., 0])
    torch.add(rows[:, None], fields[1], alpha=2 / h, out=grid[..., 1])
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def pixelate(x: torch.Tensor, factor: float, gen: torch.Generator) -> torch.Tensor:
    """PIL BOX resize down to int(size * c) and back up, in PIL's 8-bit fixed point."""
    h, w = x.shape[-2:]
    u8 = x.mul_(255).round_()
    return _ops.pil_box_down_up(u8, (int(h * factor), int(w * factor))).div_(255)


def jpeg_compression(x: torch.Tensor, quality: int, gen: torch.Generator) -> torch.Tensor:
    """JPEG encode/decode at the script's quality. The script uses PIL; torchvision's
    libjpeg encoder and decoder with the same defaults (quality-scaled IJG tables, 4:2:0
    chroma, islow DCT) give byte-identical images (checked in the tests) and take a batch.
    Falls back to PIL, one image at a time, if torchvision's codec is unavailable."""
    u8 = x.mul_(255).round_().to(torch.uint8).cpu()
    try:
        from torchvision.io import decode_jpeg, encode_jpeg
    except ImportError:  # torchvision plans to move its codecs to torchcodec
        out = torch.stack([_pil_jpeg(image, quality) for image in u8])
    else:
        with warnings.catch_warnings():  # "deprecated in favour of torchcodec"
            warnings.simplefilter("ignore", DeprecationWarning)
            out = torch.stack(decode_jpeg(encode_jpeg(list(u8), quality=quality)))
    return out.to(device=x.device, dtype=x.dtype).div_(255)


def _pil_jpeg(image_u8: torch.Tensor, quality: int) -> torch.Tensor:
    buffer = io.BytesIO()
    Image.fromarray(image_u8.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert("RGB"))
    return torch.from_numpy(decoded.copy()).permute(2, 0, 1)
