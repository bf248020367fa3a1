"""Shared pieces of the segmentation suites: the Cityscapes label table and lazy PNG splits.

Cityscapes (Cordts et al., CVPR 2016) labels pixels with 34 label ids; evaluation uses the 19
classes that have a ``trainId`` (0..18), everything else becomes 255 and is ignored. GTA5
(Richter et al., ECCV 2016) labels its frames with the same label ids, so both map through
one table (the ``labels`` list of the official ``cityscapesScripts/helpers/labels.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.errors import ShiftbenchError
from benchmark.metrics import IGNORE_INDEX, MeanIoU

# (label id, name, trainId); trainId 255 = not evaluated.
CITYSCAPES_LABELS: tuple[tuple[int, str, int], ...] = (
    (0, "unlabeled", 255), (1, "ego vehicle", 255), (2, "rectification border", 255),
    (3, "out of roi", 255), (4, "static", 255), (5, "dynamic", 255), (6, "ground", 255),
    (7, "road", 0), (8, "sidewalk", 1), (9, "parking", 255), (10, "rail track", 255),
    (11, "building", 2), (12, "wall", 3), (13, "fence", 4), (14, "guard rail", 255),
    (15, "bridge", 255), (16, "tunnel", 255), (17, "pole", 5), (18, "polegroup", 255),
    (19, "traffic light", 6), (20, "traffic sign", 7), (21, "vegetation", 8),
    (22, "terrain", 9), (23, "sky", 10), (24, "person", 11), (25, "rider", 12),
    (26, "car", 13), (27, "truck", 14), (28, "bus", 15), (29, "caravan", 255),
    (30, "trailer", 255), (31, "train", 16), (32, "motorcycle", 17), (33, "bicycle", 18),
)

NUM_CLASSES = 19
CLASS_NAMES: tuple[str, ...] = tuple(
    name for _, name, train_id in sorted(CITYSCAPES_LABELS, key=lambda r: r[2])
    if train_id != IGNORE_INDEX
)
TRAIN_ID = {name: i for i, name in enumerate(CLASS_NAMES)}

# The official colour of each trainId (cityscapesScripts), used to draw label maps.
TRAIN_ID_COLORS: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)


def id_to_train_id_lut() -> np.ndarray:
    """A 256-entry lookup table label id -> trainId; every id not in the table maps to 255."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, _, train_id in CITYSCAPES_LABELS:
        lut[label_id] = train_id
    return lut


_LUT = id_to_train_id_lut()


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map an array of Cityscapes label ids (any integer dtype) to trainIds (uint8)."""
    ids = np.asarray(label_ids)
    out = np.full(ids.shape, IGNORE_INDEX, dtype=np.uint8)
    inside = (ids >= 0) & (ids < 256)
    out[inside] = _LUT[ids[inside]]
    return out


def make_miou(num_classes: int = NUM_CLASSES) -> MeanIoU:
    """mIoU over the 19 Cityscapes classes, per-class columns named after them."""
    return MeanIoU(num_classes, CLASS_NAMES[:num_classes])


# ---- files ------------------------------------------------------------------------------
def read_rgb(path: Path) -> np.ndarray:
    """uint8 (H, W, 3); palette and grey images are converted to RGB."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def read_label_ids(path: Path) -> np.ndarray:
    """Label ids of a label PNG. GTA5 stores them as a palette image whose palette *indices*
    are the ids, Cityscapes as 8-bit grey; both read as the raw index/value here."""
    from PIL import Image

    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I", "I;16"):
            raise ShiftbenchError(
                f"{path}: label PNG has mode {img.mode}; expected label ids as a palette (P) or "
                "grey (L) image (GTA5 labels/*.png, Cityscapes *_gtFine_labelIds.png)"
            )
        return np.asarray(img)


RandomCrop = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class PngSplit:
    """A lazily read segmentation split: image/label PNG pairs. ``images`` and ``labels`` are
    views indexed like tensors (a 1-D index tensor or a slice gives a stacked batch), so the
    runner's ``TargetStream`` and ``train_source`` read them without holding the split in
    memory.

    Without ``augment`` every image is resized to ``size`` = (H, W) when it differs (bilinear;
    labels nearest) so a batch stacks; a label whose size differs from its image's is resized
    to the image's first (nearest). With ``augment`` each (image, label) pair becomes a random
    training sample (see ``random_scale_crop_flip``).
    """

    def __init__(
        self, pairs: Sequence[tuple[Path, Path]], size: tuple[int, int],
        augment: RandomCrop | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.size = size
        self.augment = augment
        self.images = _View(self, 0)
        self.labels = _View(self, 1)
        self._last_batch: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def read_image(self, i: int) -> torch.Tensor:
        return torch.from_numpy(read_rgb(self.pairs[i][0]).copy()).permute(2, 0, 1).float() / 255

    def read_label(self, i: int, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """trainIds (H, W) int64, resized to the image's size if it differs."""
        from PIL import Image

        image_path, label_path = self.pairs[i]
        label = torch.from_numpy(to_train_ids(read_label_ids(label_path))).long()
        if image_size is None:
            with Image.open(image_path) as img:  # reads the header only
                image_size = (img.height, img.width)
        return label if tuple(label.shape) == image_size else _resize_label(label, image_size)

    def item(self, i: int, part: int) -> torch.Tensor:
        """Evaluation view of one sample, at ``size``."""
        if part == 0:
            image = self.read_image(i)
            if tuple(image.shape[1:]) != self.size:
                image = F.interpolate(image[None], size=self.size, mode="bilinear",
                                      align_corners=False)[0]
            return image
        label = self.read_label(i)
        return label if tuple(label.shape) == self.size else _resize_label(label, self.size)

    def training_batch(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.augment is not None
        pairs = []
        for i in rows:
            image = self.read_image(i)
            pairs.append(self.augment(image, self.read_label(i, tuple(image.shape[1:]))))
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


class _View:
    """``split.images[index]`` or ``split.labels[index]``. With augmentation, images and labels
    of a batch must come from one random draw: the training loop reads images first, so the
    pair batch is kept and the labels of the same index are served from it."""

    def __init__(self, split: PngSplit, part: int) -> None:
        self.split, self.part = split, part

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: torch.Tensor | slice) -> torch.Tensor:
        split = self.split
        if isinstance(index, slice):
            rows = list(range(len(split))[index])
        else:
            rows = [int(i) for i in torch.as_tensor(index).flatten()]
        if split.augment is None:
            return torch.stack([split.item(i, self.part) for i in rows])
        key = tuple(rows)
        if split._last_batch is None or split._last_batch[0] != key or self.part == 0:
            split._last_batch = (key, split.training_batch(rows))
        return split._last_batch[1][self.part]


def _resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()


def random_scale_crop_flip(
    crop: int, scale: tuple[float, float] = (0.5, 2.0), seed: int = 0
) -> RandomCrop:
    """RobustNet's training transform (``RandomSizeAndCrop`` + flip, re-implemented): scale
    the pair by a uniform factor in ``scale`` (image bilinear, label nearest), take a random
    ``crop`` x ``crop`` window, padding with 0 / ignore when the scaled image is smaller,
    then flip horizontally with probability 1/2. Draws come from a generator seeded here."""
    generator = torch.Generator().manual_seed(seed)

    def transform(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        factor = scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=generator).item()
        h, w = image.shape[1:]
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        label = _resize_label(label, size)
        pad_h, pad_w = max(crop - size[0], 0), max(crop - size[1], 0)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h))
            label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        h, w = image.shape[1:]
        y = int(torch.randint(0, h - crop + 1, (), generator=generator))
        x = int(torch.randint(0, w - crop + 1, (), generator=generator))
        image, label = image[:, y : y + crop, x : x + crop], label[y : y + crop, x : x + crop]
        if torch.rand((), generator=generator).item() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image.contiguous(), label.contiguous()

    return transform
