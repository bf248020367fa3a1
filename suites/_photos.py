"""Natural photographs bundled with scikit-learn and scikit-image (no download).

Used as backgrounds and textures by embedded suites, the way MNIST-M uses BSDS500 crops.
"""

from __future__ import annotations

import functools

import numpy as np

# Colour photos shipped inside the installed packages; none is fetched from the network.
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


@functools.cache
def bundled_photos(downscale: int = 2) -> tuple[np.ndarray, ...]:
    """Float32 RGB photos in [0, 1], shape (H, W, 3), each downscaled by an integer factor
    (block mean) so a small crop holds more texture. Always in the same order."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    photos += [getattr(skimage.data, name)() for name in SKIMAGE_PHOTOS]
    out = []
    for photo in photos:
        img = np.asarray(photo, dtype=np.float32)[..., :3] / 255.0
        h = img.shape[0] // downscale * downscale
        w = img.shape[1] // downscale * downscale
        img = img[:h, :w].reshape(h // downscale, downscale, w // downscale, downscale, 3)
        out.append(img.mean(axis=(1, 3)))
    return tuple(out)


def random_crops(n: int, size: int, rng: np.random.Generator, downscale: int = 2) -> np.ndarray:
    """``n`` random ``size``x``size`` crops from the bundled photos, (n, size, size, 3)."""
    photos = bundled_photos(downscale)
    which = rng.integers(0, len(photos), size=n)
    crops = np.empty((n, size, size, 3), dtype=np.float32)
    for i, k in enumerate(which):
        photo = photos[k]
        y = rng.integers(0, photo.shape[0] - size + 1)
        x = rng.integers(0, photo.shape[1] - size + 1)
        crops[i] = photo[y : y + size, x : x + size]
    return crops


def package_data_paths() -> list:
    """The package data folders embedded suites are built from (scikit-learn's digits and
    sample images, scikit-image's photos): hidden from sandboxed adapter processes."""
    from pathlib import Path

    import sklearn.datasets

    folders = [Path(sklearn.datasets.__file__).parent / "data",
               Path(sklearn.datasets.__file__).parent / "images"]
    try:
        import skimage.data

        folders.append(Path(skimage.data.__file__).parent)
    except ImportError:
        pass
    return [f for f in folders if f.exists()]
