"""The CIFAR-10-C corruption engine: behaviour, the release's severity table, and agreement of
the deterministic corruptions with a restatement of the original script's formulas
(hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py) written here with numpy, scipy,
scikit-image and PIL."""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from skimage import color, filters

from suites.corruptions import (
    ALL_CORRUPTIONS,
    CORRUPTIONS,
    DETERMINISTIC,
    EXTRA_CORRUPTIONS,
    SEVERITIES,
    corrupt,
)
from suites.corruptions.blur import defocus_kernel
from suites.corruptions.weather import FROST


def natural_batch(n: int = 6, seed: int = 0) -> torch.Tensor:
    """Smooth, colourful 32x32 images on the 1/255 grid (like 8-bit photos), plus a grey and
    a black-and-white image to reach the formulas' special cases."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(size=(n, 3, 6, 6))
    images = ndimage.zoom(coarse, (1, 1, 32 / 6, 32 / 6), order=3)[:, :, :32, :32]
    images = np.clip(images + rng.normal(scale=0.05, size=images.shape), 0, 1)
    grey = np.full((1, 3, 32, 32), 0.5)
    split = np.zeros((1, 3, 32, 32))
    split[..., 16:] = 1
    batch = np.concatenate([images, grey, split])
    return torch.from_numpy(np.round(batch * 255) / 255).float()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return natural_batch()


def to_u8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) tensor on the 1/255 grid -> (N, H, W, 3) uint8, like the script's input."""
    return np.round(x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)


# ---- the public interface --------------------------------------------------------------

def test_names_are_the_release_corruptions():
    assert len(CORRUPTIONS) == 15 and len(EXTRA_CORRUPTIONS) == 4
    assert set(EXTRA_CORRUPTIONS) == {"speckle_noise", "gaussian_blur", "spatter", "saturate"}
    assert {"glass_blur", "frost", "elastic_transform", "jpeg_compression"} <= set(CORRUPTIONS)


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_every_corruption_changes_images_stays_in_range_and_is_seeded(name, batch):
    original = batch.clone()
    for severity in SEVERITIES:
        out = corrupt(batch, name, severity, seed=7)
        assert out.shape == batch.shape and out.dtype == batch.dtype
        assert out.min() >= 0 and out.max() <= 1
        assert not torch.equal(out, batch), f"{name}-{severity} left the images unchanged"
        # quantize=True: 8-bit values, as the release's uint8 arrays
        assert torch.allclose(out * 255, torch.round(out * 255), atol=1e-3)
        assert torch.equal(out, corrupt(batch, name, severity, seed=7))
    assert torch.equal(batch, original), "the input was modified in place"
    other_seed = corrupt(batch, name, 5, seed=8)
    if name in DETERMINISTIC:
        assert torch.equal(other_seed, corrupt(batch, name, 5, seed=7))
    else:
        assert not torch.equal(other_seed, corrupt(batch, name, 5, seed=7))


def test_each_image_gets_its_own_random_draws(batch):
    same = batch[:1].expand(4, -1, -1, -1)
    out = corrupt(same, "gaussian_noise", 3, seed=0)
    assert not torch.equal(out[0], out[1])


def test_unquantized_output_is_continuous(batch):
    out = corrupt(batch, "gaussian_noise", 3, seed=0, quantize=False)
    assert not torch.allclose(out * 255, torch.round(out * 255), atol=1e-3)
    assert out.min() >= 0 and out.max() <= 1


def test_bad_arguments_are_clear_errors(batch):
    with pytest.raises(ValueError, match="did you mean gaussian_noise"):
        corrupt(batch, "gausian_noise", 1, seed=0)
    with pytest.raises(ValueError, match="severity"):
        corrupt(batch, "fog", 6, seed=0)
    with pytest.raises(ValueError, match="3 channels"):
        corrupt(batch[:, :1], "fog", 1, seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_runs_on_cuda(name, batch):
    out = corrupt(batch.cuda(), name, 3, seed=0)
    assert out.device.type == "cuda" and out.min() >= 0 and out.max() <= 1


# ---- agreement with the original formulas ----------------------------------------------

def reference_disk(radius: float, alias_blur: float) -> np.ndarray:
    """The script's ``disk``: 17x17 aliased disk in float32, then cv2.GaussianBlur((3, 3),
    alias_blur), which computes its taps in float64, stores them as float32 and filters in
    float32, rows then columns, each as centre * t1 + (left + right) * t0 (checked equal
    bit for bit with OpenCV 4 on all five severities)."""
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float32)
    disk /= np.sum(disk)
    g = np.exp(-(np.arange(-1, 2) ** 2) / (2 * alias_blur**2))
    g = (g / g.sum()).astype(np.float32)

    def blur_rows(a: np.ndarray) -> np.ndarray:
        p = np.pad(a, ((0, 0), (1, 1)), mode="reflect")  # BORDER_REFLECT_101
        return p[:, 1:-1] * g[1] + (p[:, :-2] + p[:, 2:]) * g[0]

    return blur_rows(blur_rows(disk).T).T


def reference_clipped_zoom(img: np.ndarray, factor: float) -> np.ndarray:
    h = img.shape[0]
    crop = int(np.ceil(h / factor))
    top = (h - crop) // 2
    zoomed = ndimage.zoom(img[top:top + crop, top:top + crop], (factor, factor, 1), order=1)
    trim = (zoomed.shape[0] - h) // 2
    return zoomed[trim:trim + h, trim:trim + h]


def reference(name: str, image: np.ndarray, severity: int) -> np.ndarray:
    """The script's deterministic corruptions on one uint8 HxWx3 image, before its final
    np.uint8 cast (0..255 floats)."""
    x = image / 255.0
    if name == "defocus_blur":
        radius, alias = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][severity - 1]
        kernel = reference_disk(radius, alias)
        out = np.stack([ndimage.correlate(x[..., d], kernel, mode="mirror") for d in range(3)],
                       -1)
    elif name == "zoom_blur":
        stop = [1.06, 1.11, 1.16, 1.21, 1.26][severity - 1]
        factors = np.arange(1, stop, 0.01)
        x = x.astype(np.float32)
        out = (x + sum(reference_clipped_zoom(x, z) for z in factors)) / (len(factors) + 1)
    elif name == "gaussian_blur":
        sigma = [0.4, 0.6, 0.7, 0.8, 1][severity - 1]
        out = filters.gaussian(x, sigma=sigma, channel_axis=-1)
    elif name == "brightness":
        hsv = color.rgb2hsv(x)
        hsv[..., 2] = np.clip(hsv[..., 2] + [0.05, 0.1, 0.15, 0.2, 0.3][severity - 1], 0, 1)
        out = color.hsv2rgb(hsv)
    elif name == "saturate":
        a, b = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][severity - 1]
        hsv = color.rgb2hsv(x)
        hsv[..., 1] = np.clip(hsv[..., 1] * a + b, 0, 1)
        out = color.hsv2rgb(hsv)
    elif name == "contrast":
        c = [0.75, 0.5, 0.4, 0.3, 0.15][severity - 1]
        means = x.mean(axis=(0, 1), keepdims=True)
        out = (x - means) * c + means
    elif name == "pixelate":
        c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
        pil = Image.fromarray(image).resize((int(32 * c), int(32 * c)), Image.BOX)
        return np.asarray(pil.resize((32, 32), Image.BOX), dtype=np.float64)
    elif name == "jpeg_compression":
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=[80, 65, 58, 50, 40][severity - 1])
        buffer.seek(0)
        return np.asarray(Image.open(buffer), dtype=np.float64)
    else:
        raise KeyError(name)
    return np.clip(out, 0, 1) * 255


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_deterministic_corruptions_match_the_original_formula(name, batch):
    images = to_u8(batch)
    for severity in SEVERITIES:
        expected = np.stack([reference(name, image, severity) for image in images])
        ours = corrupt(batch, name, severity, seed=0)
        ours_u8 = to_u8(ours).astype(np.int64)
        released = np.uint8(expected).astype(np.int64)  # the script's truncating cast
        diff = np.abs(ours_u8 - released)
        if name in ("pixelate", "jpeg_compression"):  # 8-bit PIL all the way: exact
            assert diff.max() == 0, f"{name}-{severity}"
        elif name in ("brightness", "saturate", "defocus_blur"):
            # computed in float64 with the script's operations: many values are whole
            # levels up to float error, and they must truncate to the same side
            assert diff.max() == 0, f"{name}-{severity}: {(diff > 0).mean():.2%} differ"
        else:  # float formulas: equal, except values within float error of a level boundary
            frac = expected - np.floor(expected)
            on_boundary = (frac < 1e-3) | (frac > 1 - 1e-3)
            assert diff.max() <= 1 and diff[~on_boundary].max() == 0, f"{name}-{severity}"
            unquantized = corrupt(batch, name, severity, seed=0, quantize=False)
            np.testing.assert_allclose(unquantized.permute(0, 2, 3, 1).numpy() * 255,
                                       expected, atol=2e-3, err_msg=f"{name}-{severity}")


# ---- the severity table, quirks included -------------------------------------------------

def mean_change(batch: torch.Tensor, name: str, severity: int, seed: int = 0) -> float:
    return (corrupt(batch, name, severity, seed) - batch).abs().mean().item()


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise",
                                  "speckle_noise", "defocus_blur", "zoom_blur",
                                  "gaussian_blur", "contrast", "brightness", "fog", "pixelate"])
def test_severity_increases_the_distortion(name):
    batch = natural_batch(16, seed=1)
    changes = [mean_change(batch, name, s) for s in SEVERITIES]
    assert changes == sorted(changes), (name, changes)
    assert changes[-1] > 1.5 * changes[0]


def test_elastic_transform_gets_milder_with_severity():
    batch = natural_batch(24, seed=2)
    changes = [mean_change(batch, "elastic_transform", s) for s in SEVERITIES]
    assert changes[0] > changes[2] > changes[4], changes


def _imagemagick() -> str | None:
    """ImageMagick's command (Debian's imagemagick names it convert-im6.q16 too, which
    finds it when another program called ``convert`` comes first on PATH)."""
    import shutil
    import subprocess

    for name in ("magick", "convert-im6.q16", "convert"):
        path = shutil.which(name)
        if path:
            version = subprocess.run([path, "-version"], capture_output=True, text=True)
            if "ImageMagick" in version.stdout:
                return path
    return None


@pytest.fixture
def imagemagick() -> str:
    path = _imagemagick()
    if path is None:
        message = "ImageMagick is not installed (apt-get install imagemagick; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message + ", and CI must run this test")
        pytest.skip(message)
    return path


def test_motion_blur_matches_imagemagick_which_truncates(batch, tmp_path, imagemagick):
    """The script's Wand call is ImageMagick's motion blur, and ImageMagick writes the 8-bit
    PNG by truncating. Compared with the installed ImageMagick at one angle per image."""
    import subprocess

    from suites.corruptions import _ops
    from suites.corruptions.blur import MOTION_BLUR

    images = to_u8(batch)
    for severity in SEVERITIES:
        radius, sigma = MOTION_BLUR[severity - 1]
        angles = np.linspace(-44, 44, len(images))
        ours = _ops.truncate_u8(_ops.motion_blur(batch.clone(), radius, sigma,
                                                 torch.tensor(angles, dtype=torch.float64)))
        ours_u8 = to_u8(ours).astype(np.int64)
        equal = []
        for i, image in enumerate(images):
            Image.fromarray(image).save(tmp_path / "in.png")
            subprocess.run([imagemagick, str(tmp_path / "in.png"), "-motion-blur",
                            f"{radius}x{sigma}+{angles[i]}", str(tmp_path / "out.png")],
                           check=True)
            theirs = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"), np.int64)
            assert np.abs(ours_u8[i] - theirs).max() <= 1
            equal.append((ours_u8[i] == theirs).mean())
        assert np.mean(equal) > 0.99, f"severity {severity}: {np.mean(equal):.3f} equal"


def test_glass_blur_severities_one_to_three_nearly_equal():
    batch = natural_batch(32, seed=3)
    low = [mean_change(batch, "glass_blur", s) for s in (1, 2, 3)]
    assert max(low) < 1.15 * min(low), low
    assert mean_change(batch, "glass_blur", 4) > 1.2 * max(low)


def test_motion_blur_severities_three_and_four_almost_equal(batch):
    three = corrupt(batch, "motion_blur", 3, seed=5)  # same seed: same angles
    four = corrupt(batch, "motion_blur", 4, seed=5)
    assert (three - four).abs().max() <= 1 / 255 + 1e-6
    assert not torch.equal(corrupt(batch, "motion_blur", 2, seed=5), three)


def test_defocus_blur_is_a_3x3_gaussian_at_severities_one_to_three():
    for radius, alias in [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6)]:
        kernel = defocus_kernel(radius, alias)
        assert kernel.shape == (3, 3)
        g = torch.exp(-torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64) / (2 * alias**2))
        g = g / g.sum()
        torch.testing.assert_close(kernel, torch.outer(g, g))
    assert defocus_kernel(1.5, 0.1).shape == (5, 5)


def mean_saturation(x: torch.Tensor) -> float:
    hsv = color.rgb2hsv(x.permute(0, 2, 3, 1).numpy())
    return float(hsv[..., 1].mean())


def test_saturate_desaturates_at_one_and_two_and_oversaturates_after():
    batch = natural_batch(8, seed=4)[:8]
    before = mean_saturation(batch)
    after = [mean_saturation(corrupt(batch, "saturate", s, seed=0)) for s in SEVERITIES]
    assert after[0] < before and after[1] < after[0]
    assert all(a > before for a in after[2:]), (before, after)


def test_spatter_adds_water_at_one_to_three_and_mud_at_four_and_five():
    batch = natural_batch(16, seed=5)
    for severity in (1, 2, 3):  # water is added: never darker, beyond the truncating cast
        out = corrupt(batch, "spatter", severity, seed=1)
        assert (out - batch).min() >= -1.5 / 255
    for severity in (4, 5):  # mud paints dark brown over the image
        out = corrupt(batch, "spatter", severity, seed=1)
        assert (out - batch).min() < -0.2
        painted = (out - batch).abs().sum(1) > 0.05
        mud = torch.tensor([63, 42, 20]) / 255
        assert painted.any()
        # where fully covered (mask 1), pixels are the mud colour
        near_mud = ((out.permute(0, 2, 3, 1) - mud).abs().max(-1).values < 3 / 255)
        assert near_mud.any()


def test_frost_rescales_the_image_at_three_to_five():
    """out = clip(c0 * image + c1 * frost): white minus black (same seed, same crop) equals
    c0 wherever white is not clipped, and never exceeds it."""
    white, black = torch.ones(8, 3, 32, 32), torch.zeros(8, 3, 32, 32)
    for severity in SEVERITIES:
        c0 = FROST[severity - 1][0]
        diff = corrupt(white, "frost", severity, 2) - corrupt(black, "frost", severity, 2)
        assert diff.max() <= c0 + 1.5 / 255
        if c0 < 1:
            assert diff.max() >= c0 - 1.5 / 255
    assert [c0 for c0, _, _ in FROST] == [1, 1, 0.9, 0.85, 0.75]


def test_frost_uses_the_release_photos_when_a_package_ships_them(batch, tmp_path, monkeypatch):
    """An installed distribution laid out like imagecorruptions (dist-info + frost/ folder):
    its photos are read, downscaled by 0.2, cropped, and named in the engine's identity."""
    from suites._cache import engine_identity
    from suites.corruptions import weather

    weather.frost_images.cache_clear()
    installed, identity = weather.frost_images()[1], engine_identity()
    package = tmp_path / "imagecorruptions" / "frost"
    package.mkdir(parents=True)
    info = tmp_path / "imagecorruptions-1.1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: imagecorruptions\n"
                                   "Version: 1.1.2\n")
    colours = [(200, 210, 230), (90, 100, 120), (150, 160, 170), (30, 40, 60), (250, 250, 250)]
    for name, colour in zip(weather.FROST_PHOTOS, colours, strict=True):
        photo = Image.new("RGB", (400 + 20 * len(name), 300), colour)  # flat: exact after resize
        photo.save(package / name, quality=100)
    monkeypatch.syspath_prepend(str(tmp_path))
    weather.frost_images.cache_clear()
    try:
        images, source = weather.frost_images()
        assert source.startswith("photos:") and source != installed
        assert engine_identity() != identity
        assert [tuple(i.shape[-2:]) for i in images] == [(60, 80 + 4 * len(n))
                                                          for n in weather.FROST_PHOTOS]
        out = corrupt(batch, "frost", 2, seed=0)
        # every crop is one of the flat photos: out = image + 0.3 * colour, so the added
        # colour is one of the five (JPEG may move a flat colour by a level)
        added = (to_u8(out).astype(float) - to_u8(batch).astype(float))[:, 5, 5] / 0.3
        unsaturated = (to_u8(out)[:, 5, 5] < 255).all(1)
        assert unsaturated.sum() >= 3
        for pixel in added[unsaturated]:
            assert min(np.abs(pixel - np.array(c)).max() for c in colours) <= 5
    finally:
        monkeypatch.undo()
        weather.frost_images.cache_clear()
    assert weather.frost_images()[1] == installed and engine_identity() == identity


def test_caller_thread_count_is_restored_and_does_not_change_outputs(batch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = corrupt(batch, "gaussian_blur", 3, seed=0)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        assert torch.equal(two, corrupt(batch, "gaussian_blur", 3, seed=0))
    finally:
        torch.set_num_threads(before)


def test_impulse_noise_flips_channels_independently():
    grey = torch.full((64, 3, 32, 32), 128 / 255)  # on the 8-bit grid: untouched unless hit
    out = corrupt(grey, "impulse_noise", 5, seed=0)
    changed = out != grey
    assert set(torch.unique(out[changed]).tolist()) <= {0.0, 1.0}
    assert abs(changed.float().mean().item() - 0.07) < 0.01
    per_pixel = changed.sum(1)[changed.any(1)]
    # independent flips at 7%: most hit pixels have exactly one channel flipped
    assert (per_pixel == 1).float().mean() > 0.85


def test_truncating_cast_biases_down(batch):
    """quantize=True floors like np.uint8: on average half a level below unquantized."""
    exact = corrupt(batch, "gaussian_blur", 3, seed=0, quantize=False)
    cast = corrupt(batch, "gaussian_blur", 3, seed=0)
    bias = ((cast - exact) * 255).mean().item()
    assert -0.7 < bias < -0.3


@pytest.mark.parametrize("severity", [1, 5])
@pytest.mark.parametrize("value", [1 / 255, 37 / 255, 128 / 255, 1.0, 0.3337])  # last: off-grid
def test_shot_noise_draws_follow_the_poisson_law(severity, value):
    """Our sampler (table inversion on the 8-bit grid, plus torch.poisson off it) against
    the Poisson pmf: chi-square goodness of fit over 120k draws, and the mean."""
    from scipy import stats

    from suites.corruptions.noise import SHOT_NOISE, shot_noise

    photons = SHOT_NOISE[severity - 1]
    x = torch.full((40, 3, 32, 32), value)
    gen = torch.Generator().manual_seed(severity)
    counts = torch.round(shot_noise(x.clone(), photons, gen) * photons).long().flatten()
    rate = value * photons
    ks = np.arange(int(counts.max()) + 2)
    expected = stats.poisson.pmf(ks, rate) * len(counts)
    expected[-1] += stats.poisson.sf(ks[-1], rate) * len(counts)
    observed = np.bincount(counts.numpy(), minlength=len(ks)).astype(float)
    # merge sparse bins (expected < 5) into their neighbours, as the test requires
    merged_obs, merged_exp, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(observed, expected, strict=True):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 5:
            merged_obs.append(acc_o)
            merged_exp.append(acc_e)
            acc_o = acc_e = 0.0
    merged_obs[-1] += acc_o
    merged_exp[-1] += acc_e
    if len(merged_obs) > 1:
        p = stats.chisquare(merged_obs, np.array(merged_exp) * sum(merged_obs) / sum(merged_exp)
                            ).pvalue
        assert p > 1e-4
    assert abs(counts.double().mean().item() - rate) < 5 * math.sqrt(rate / len(counts)) + 1e-9


@pytest.mark.parametrize("size", [17, 28, 64])
def test_pixelate_round_trip_equals_pil_box_down_and_up_at_other_sizes(size):
    """The folded two-pass BOX round trip is exact against PIL beyond the 32x32 case."""
    from suites.corruptions._ops import pil_box_down_up
    from suites.corruptions.digital import PIXELATE

    rng = np.random.default_rng(size)
    images = rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    for factor in PIXELATE:
        small = int(size * factor)
        ours = pil_box_down_up(torch.from_numpy(images).permute(0, 3, 1, 2).float(),
                               (small, small))
        for image, out in zip(images, ours, strict=True):
            pil = Image.fromarray(image).resize((small, small), Image.BOX)
            expected = np.asarray(pil.resize((size, size), Image.BOX))
            np.testing.assert_array_equal(out.permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("delta", [1, 2, 4])
def test_glass_walk_equals_the_scripts_sequential_swaps(delta):
    """The script's pixel walk, run literally in NumPy (bottom-right to top-left, the tuple
    "swap" of numpy views), with the same offsets: equal to ``glass_walk``. With delta >= 2
    (ImageNet-C) a pixel can read a neighbour that was already overwritten."""
    from suites.corruptions.blur import glass_walk

    rng = np.random.default_rng(delta)
    n, h, w = 2, 13, 11
    image = rng.integers(0, 256, (n, h, w, 3)).astype(np.float64)
    dy = rng.integers(-delta, delta, (n, h, w))
    dx = rng.integers(-delta, delta, (n, h, w))
    expected = image.copy()
    for k in range(n):
        x = expected[k]
        for row in range(h - delta, delta, -1):
            for col in range(w - delta, delta, -1):
                r, c = row + dy[k, row, col], col + dx[k, row, col]
                x[row, col], x[r, c] = x[r, c], x[row, col]
    out = glass_walk(torch.from_numpy(image).permute(0, 3, 1, 2).contiguous(),
                     torch.from_numpy(dy), torch.from_numpy(dx), delta)
    assert np.array_equal(out.permute(0, 2, 3, 1).numpy(), expected)
    one_step = image.copy()  # every interior pixel reading its source's original value
    for k in range(n):
        for row in range(delta + 1, h - delta + 1):
            for col in range(delta + 1, w - delta + 1):
                one_step[k, row, col] = image[k, row + dy[k, row, col], col + dx[k, row, col]]
    # with delta 1 that is the walk; from 2 on the chains of overwritten pixels matter
    assert np.array_equal(one_step, expected) == (delta == 1)


@pytest.mark.parametrize("radius, alias", [(3, 0.1), (8, 0.5), (10, 0.5)])
def test_imagenet_defocus_kernels_follow_the_scripts_disk(radius, alias):
    """ImageNet-C's ``disk``, restated in NumPy: for radius <= 8 a 17x17 grid and a 3x3
    Gaussian, above it a (2r+1)^2 grid and a 5x5 Gaussian, reflect-101 border (OpenCV's
    default; radius 8 and 10 reach the grid's edge). Large kernels correlate through the
    FFT, equal to the direct correlation up to float rounding."""
    from suites.corruptions import _ops
    from suites.corruptions.blur import DFT_TAPS, _fft_correlate

    half, taps = (8, 3) if radius <= 8 else (radius, 5)
    grid = np.arange(-half, half + 1)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2).astype(np.float32)
    disk /= disk.sum()
    offsets = np.arange(taps) - taps // 2
    g = np.exp(-(offsets**2) / (2 * alias**2))
    g = (g / g.sum()).astype(np.float32)
    pad = taps // 2
    rows = np.pad(disk, ((0, 0), (pad, pad)), mode="reflect")
    rows = sum(rows[:, k:k + disk.shape[1]] * g[k] for k in range(taps))
    cols = np.pad(rows, ((pad, pad), (0, 0)), mode="reflect")
    expected = sum(cols[k:k + disk.shape[0]] * g[k] for k in range(taps))
    kernel = defocus_kernel(radius, alias).numpy()
    r = kernel.shape[0] // 2  # trimmed to its support, centred
    assert np.allclose(kernel, expected[half - r:half + r + 1, half - r:half + r + 1],
                       atol=1e-7)
    assert np.abs(expected).sum() == pytest.approx(np.abs(kernel).sum(), abs=1e-6)
    assert kernel.size >= DFT_TAPS
    x = torch.rand(2, 3, 30, 27, dtype=torch.float64)
    direct = _ops.correlate(x, torch.from_numpy(kernel), "mirror")
    assert torch.allclose(_fft_correlate(x, torch.from_numpy(kernel)), direct, atol=1e-12)
