"""Digital corruptions of CIFAR-10-C: contrast, elastic transform, pixelate, JPEG, plus
brightness (a weather corruption in the paper) and the extra saturate, which share the
HSV helpers."""

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
# Fractions of the image size (the script's IMSIZE * ...): elastic alpha, elastic sigma,
# affine jitter. Alpha grows while sigma and the jitter shrink, so severity 1 (pure affine,
# +-2.56 px) moves pixels most and severity 5 least: the corruption gets milder.
ELASTIC = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
           (0.1, 0.03, 0.03))
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)  # downscale factor
JPEG_QUALITY = (80, 65, 58, 50, 40)
SATURATE = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))  # HSV saturation * a + b


def brightness(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """skimage's HSV round trip with V + c (clipped to 1). With hue and saturation fixed,
    every channel is V times a factor of (H, S), so the round trip is a rescaling by
    V' / V; black (V = 0, saturation 0) becomes grey c."""
    value = x.amax(1, keepdim=True)
    lifted = (value + BRIGHTNESS[severity - 1]).clamp(max=1)
    return torch.where(value > 0, x * (lifted / value.clamp(min=1e-12)), lifted)


def saturate(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """skimage's HSV round trip with S * a + b (clipped to [0, 1]): *0.3 and *0.1
    (desaturate) at severities 1-2, then *1.5, *2+0.1, *2.5+0.2 (oversaturate).

    With hue and value fixed, each channel is V * (1 - S * k) with k set by the hue alone,
    so a channel moves to V - (V - channel) * S' / S. skimage gives greys (S = 0) hue 0,
    i.e. red: a grey becomes (V, V(1 - S'), V(1 - S')), so the +0.1/+0.2 offsets tint grey
    pixels red, as in the release."""
    a, b = SATURATE[severity - 1]
    value = x.amax(1, keepdim=True)
    delta = value - x.amin(1, keepdim=True)
    saturation = delta / value.clamp(min=1e-12)
    new = (saturation * a + b).clamp(0, 1)
    coloured = value - (value - x) * (new / saturation.clamp(min=1e-12))
    red = torch.tensor([0.0, 1.0, 1.0], dtype=x.dtype, device=x.device)[None, :, None, None]
    grey = value * (1 - new * red)
    return torch.where(delta > 0, coloured, grey)


def contrast(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    means = x.mean((2, 3), keepdim=True)  # per image and channel, as the script's axis=(0, 1)
    return (x - means) * CONTRAST[severity - 1] + means


def elastic_transform(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """A random affine warp (three control points jittered by U(-a, a), OpenCV's
    reflect-101 border) followed by a smooth random displacement field (uniform noise
    blurred with sigma, times alpha; scipy 'reflect' border), both bilinear."""
    n, _, h, w = x.shape
    alpha, sigma, jitter = (f * h for f in ELASTIC[severity - 1])
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
    # grid_sample's reflection padding with align_corners=True.
    linear_inverse = torch.linalg.inv(forward[:, :, :2])
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=dev),
                            torch.arange(w, dtype=torch.float64, device=dev), indexing="ij")
    points = torch.stack([xs, ys], -1)[None] - forward[:, None, None, :, 2]  # (n, h, w, 2)
    source = torch.einsum("nij,nhwj->nhwi", linear_inverse, points)
    scale = torch.tensor([w - 1, h - 1], dtype=torch.float64, device=dev)
    x = F.grid_sample(x, (2 * source / scale - 1).to(x.dtype), mode="bilinear",
                      padding_mode="reflection", align_corners=True)

    def field() -> torch.Tensor:
        noise = torch.rand((n, 1, h, w), generator=gen, device=dev, dtype=x.dtype) * 2 - 1
        return _ops.gaussian(noise, sigma, mode="symmetric", truncate=3)[:, 0] * alpha

    # scipy map_coordinates(order=1, mode='reflect') at (y + dy, x + dx): reflection about
    # the pixel edges, which is grid_sample's reflection with align_corners=False.
    dx, dy = field(), field()
    cols = (2 * (xs.to(x.dtype)[None] + dx) + 1) / w - 1
    rows = (2 * (ys.to(x.dtype)[None] + dy) + 1) / h - 1
    return F.grid_sample(x, torch.stack([cols, rows], -1), mode="bilinear",
                         padding_mode="reflection", align_corners=False)


def pixelate(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """PIL BOX resize down to int(size * c) and back up, in PIL's 8-bit fixed point."""
    factor = PIXELATE[severity - 1]
    h, w = x.shape[-2:]
    u8 = torch.round(x.clamp(0, 1) * 255)
    small = _ops.pil_box_resize(u8, (int(h * factor), int(w * factor)))
    return _ops.pil_box_resize(small, (h, w)) / 255


def jpeg_compression(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """JPEG encode/decode at the script's quality. The script uses PIL; torchvision's
    libjpeg encoder and decoder with the same defaults (quality-scaled IJG tables, 4:2:0
    chroma, islow DCT) give byte-identical images (checked in the tests) and take a batch.
    Falls back to PIL, one image at a time, if torchvision's codec is unavailable."""
    quality = JPEG_QUALITY[severity - 1]
    u8 = torch.round(x.clamp(0, 1) * 255).to(torch.uint8).cpu()
    try:
        from torchvision.io import decode_jpeg, encode_jpeg
    except ImportError:  # torchvision plans to move its codecs to torchcodec
        out = torch.stack([_pil_jpeg(image, quality) for image in u8])
    else:
        with warnings.catch_warnings():  # "deprecated in favour of torchcodec"
            warnings.simplefilter("ignore", DeprecationWarning)
            out = torch.stack(decode_jpeg(encode_jpeg(list(u8), quality=quality)))
    return out.to(device=x.device, dtype=x.dtype) / 255


def _pil_jpeg(image_u8: torch.Tensor, quality: int) -> torch.Tensor:
    buffer = io.BytesIO()
    Image.fromarray(image_u8.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert("RGB"))
    return torch.from_numpy(decoded.copy()).permute(2, 0, 1)
