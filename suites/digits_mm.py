"""Embedded digits-mm suite: every digit seen by two modalities, RGB and a thermal-like sensor.

Modelled on visible-infrared person re-identification (Li et al., "Bridging the Distribution
Gap of Visible-Infrared Person Re-identification with Modality Batch Normalization", 2021):
two sensors with very different statistics see the same object, and one network processes
both. Each sample is one tensor of 6 channels::

    channels 0-2  RGB: the digit in a saturated ink colour over a dimmed photo crop
    channels 3-5  thermal: one heat image (a blurred "warm" digit over an ambient level, with
                  sensor noise), repeated in 3 channels as visible-infrared datasets store
                  infrared frames

A two-modality model (``two_stream_resnet`` in benchmark.layers.models) splits the channels again.
The targets shift one modality each: a different thermal sensor (warmer background, lower
contrast, more blur and noise) or a different RGB camera (the unseen camera of digits-cams).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark.registry import SUITES
from benchmark.suite import DomainData, Recipe, Split, Suite
from suites.digits import digit_splits
from suites.digits_cams import UNSEEN_CAMERA, gaussian_blur, render_scene

MODALITY_CHANNELS = {"rgb": (0, 1, 2), "thermal": (3, 4, 5)}


@dataclass(frozen=True)
class ThermalSensor:
    """Heat image of a digit: ``ambient + contrast * blur(ink, blur_sigma) + noise``, in [0, 1]
    (white-hot: the warm digit is brighter than the background when ``contrast > 0``)."""

    ambient: float
    contrast: float
    blur_sigma: float
    noise: float

    def render(self, digits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        heat = gaussian_blur(digits[:, :1], self.blur_sigma)
        heat = self.ambient + self.contrast * heat
        heat = heat + self.noise * torch.randn(heat.shape, generator=generator)
        return heat.clamp(0, 1).expand(-1, 3, -1, -1)


SOURCE_THERMAL = ThermalSensor(ambient=0.15, contrast=0.8, blur_sigma=1.2, noise=0.02)
SHIFTED_THERMAL = ThermalSensor(ambient=0.3, contrast=0.6, blur_sigma=1.6, noise=0.03)


@functools.cache
def _render(split: Split, domain: str, seed: int, repeats: int) -> DomainData:
    images, labels = digit_splits(DigitsMM.size, DigitsMM.split_seed)[split]
    images, labels = images.repeat(repeats, 1, 1, 1), labels.repeat(repeats)
    generator = torch.Generator().manual_seed(seed)
    rgb = render_scene(images, seed)
    if domain == "rgb-shift":
        rgb = UNSEEN_CAMERA.render(rgb, generator)
    sensor = SHIFTED_THERMAL if domain == "thermal-shift" else SOURCE_THERMAL
    thermal = sensor.render(images, generator)
    both = torch.round(torch.cat([rgb, thermal], 1) * 255) / 255  # stored as 8-bit frames
    return DomainData(both.contiguous(), labels)


@SUITES.register("digits-mm")
class DigitsMM(Suite):
    """Embedded: digits as RGB + thermal pairs (6 channels) -> one modality's sensor changed.

    Source ``mm``: the ``digits`` splits (1,198 train, 599 test), each digit as an RGB image
    (channels 0-2: ink colour over a dimmed photo) and a thermal-like heat image (channels
    3-5, one channel repeated) from sensor ``SOURCE_THERMAL``. Targets: ``thermal-shift``
    (the heat images come from ``SHIFTED_THERMAL``: warmer ambient, lower contrast, more blur and
    noise; RGB unchanged) and ``rgb-shift`` (the RGB image is recorded by the unseen camera
    of ``digits-cams``; thermal unchanged). Target test splits render each test digit 3
    times (1,797 images). Every sample holds both modalities, so there is no per-sample side
    information; the channel layout is ``modality_channels``. Recipe: ``two_stream_resnet``
    (one SmallResNet trunk shared by both modalities, late fusion). Fixed seeds per domain
    and split.
    """

    source = "mm"
    targets = ("thermal-shift", "rgb-shift")
    num_classes = 10
    size = 32
    split_seed = 0
    recipe = Recipe(arch="two_stream_resnet", epochs=12, batch_size=64, lr=0.05,
                    augment="shift")
    eval_batch_size = 128
    provides = frozenset({"modalities", "domain_ids"})
    modality_channels = MODALITY_CHANNELS
    target_test_renders = 3
    _seeds = {("mm", "train"): 4101, ("mm", "test"): 4102,
              ("thermal-shift", "train"): 4103, ("thermal-shift", "test"): 4104,
              ("rgb-shift", "train"): 4105, ("rgb-shift", "test"): 4106}

    def data_paths(self) -> list[Path]:
        from suites._photos import package_data_paths

        return package_data_paths()

    def load(self, domain: str, split: Split) -> DomainData:
        if domain not in self.domains:
            raise KeyError(f"suite {self.name!r} has no domain {domain!r}; has {self.domains}")
        if split not in ("train", "test"):
            raise KeyError(f"unknown split {split!r}; use 'train' or 'test'")
        repeats = self.target_test_renders if (domain != self.source and split == "test") else 1
        return _render(split, domain, self._seeds[(domain, split)], repeats)
