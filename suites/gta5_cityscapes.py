"""GTA5 -> Cityscapes: synthetic-to-real semantic segmentation on the real datasets.

The shift IBN-Net (Pan et al., ECCV 2018) and RobustNet / ISW (Choi et al., CVPR 2021) are
judged on. Nothing is downloaded: both datasets need a manual download (Cityscapes needs a
registered account).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from torch import nn

from benchmark.errors import DatasetNotFoundError
from benchmark.layers.models import create_model
from benchmark.metrics import Metric
from benchmark.registry import SUITES
from benchmark.store import file_sha256
from benchmark.suite import DomainData, Recipe, Split, Suite
from suites.segmentation import NUM_CLASSES, PngSplit, make_miou, random_scale_crop_flip

GTA5_URL = "https://download.visinf.tu-darmstadt.de/data/from_games/"
CITYSCAPES_URL = "https://www.cityscapes-dataset.com/downloads/"
RESNET50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"


@SUITES.register("gta5-cityscapes")
class GTA5Cityscapes(Suite):
    """Real: GTA5 (synthetic, labelled) -> Cityscapes val, 19 classes, mIoU (needs --data-root).

    Layout under ``--data-root``::

        gta5/images/00001.png ...          GTA5 frames (24,966)
        gta5/labels/00001.png ...          label ids (palette PNGs; Cityscapes label ids)
        cityscapes/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
        cityscapes/gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png
        pretrained/resnet50_imagenet.pth   optional ImageNet ResNet-50 (torchvision format)

    Labels: both datasets map label ids to the 19 Cityscapes trainIds; every other id
    (and unlabelled pixels) becomes 255, ignored by the loss and by mIoU.

    Splits: ``gta5`` train = every GTA5 frame except every 50th in sorted file order, which
    forms the ``gta5`` test split (the source-domain column; IBN-Net trains on all 24,966, so
    we train on 2% fewer). ``cityscapes`` test = the 500 val images (scored); ``cityscapes``
    train = the 2,975 train images (unlabelled target data of DA methods).

    Resize/crop policy, as RobustNet's GTAV -> Cityscapes setting: training samples are
    scaled by a random factor in [0.5, 2.0], randomly cropped to 768x768 (padded with ignore
    when smaller) and flipped with probability 1/2; evaluation uses full-resolution images,
    no resizing and no cropping (Cityscapes 2048x1024; GTA5 test frames at 1914x1052, the
    few frames of another size are resized to it). Inputs are standardized with the ImageNet
    mean/std inside the model. RobustNet also applies colour jitter and Gaussian blur during
    training; we leave photometric augmentation out so the style shift stays what methods fix.

    Recipe: DeepLabV3-ResNet-50 (torchvision, output stride 8), SGD momentum 0.9, lr 0.01,
    weight decay 5e-4, batch 16, 26 epochs (about RobustNet's 40k iterations of batch 16);
    cosine instead of RobustNet's poly(0.9) schedule (the recipe offers cosine or constant).
    Realistically this needs a GPU (``--device cuda``).
    """

    task = "segmentation"
    metric = "miou"
    source = "gta5"
    targets = ("cityscapes",)
    num_classes = NUM_CLASSES
    recipe = Recipe(arch="deeplabv3_resnet50", epochs=26, batch_size=16, lr=0.01,
                    momentum=0.9, weight_decay=5e-4)
    eval_batch_size = 2
    crop_size = 768
    scale_range = (0.5, 2.0)
    gta5_size = (1052, 1914)
    cityscapes_size = (1024, 2048)
    gta5_test_every = 50
    backbone_file = Path("pretrained/resnet50_imagenet.pth")

    def __init__(self, root: str | Path | None = None, download: bool = False) -> None:
        super().__init__(root, download)
        self._pairs: dict[tuple[str, str], list[tuple[Path, Path]]] = {}
        self._backbone: Path | None = None
        if self.root is not None and (self.root / self.backbone_file).is_file():
            # The backbone's checksum (not its path) goes into the recipe, hence every key.
            self._backbone = self.root / self.backbone_file
            self.recipe = dataclasses.replace(
                type(self).recipe,
                arch_kwargs=(("imagenet_backbone_sha256", file_sha256(self._backbone)),),
            )

    # ---- files ------------------------------------------------------------------------
    def _require_root(self) -> Path:
        if self.root is None:
            raise DatasetNotFoundError(
                f"suite {self.name!r} reads GTA5 and Cityscapes from disk: pass --data-root "
                f"DIR with DIR/gta5/{{images,labels}} (from {GTA5_URL}) and "
                f"DIR/cityscapes/{{leftImg8bit,gtFine}} (leftImg8bit_trainvaltest.zip and "
                f"gtFine_trainvaltest.zip from {CITYSCAPES_URL}, free registration)"
            )
        return self.root

    def _gta5_pairs(self) -> list[tuple[Path, Path]]:
        base = self._require_root() / "gta5"
        images_dir, labels_dir = base / "images", base / "labels"
        for folder in (images_dir, labels_dir):
            if not folder.is_dir():
                raise DatasetNotFoundError(
                    f"GTA5 folder {folder} not found; download the images and labels zips "
                    f"from {GTA5_URL} and unpack them so that {images_dir}/*.png and "
                    f"{labels_dir}/*.png exist"
                )
        images = sorted(images_dir.glob("*.png"))
        if not images:
            raise DatasetNotFoundError(f"no GTA5 images (*.png) in {images_dir}; get them "
                                       f"from {GTA5_URL}")
        pairs = []
        for image in images:
            label = labels_dir / image.name
            if not label.is_file():
                raise DatasetNotFoundError(f"GTA5 label {label} for image {image} not found; "
                                           f"unpack the labels zip from {GTA5_URL}")
            pairs.append((image, label))
        return pairs

    def _cityscapes_pairs(self, split: str) -> list[tuple[Path, Path]]:
        base = self._require_root() / "cityscapes"
        images_dir, labels_dir = base / "leftImg8bit" / split, base / "gtFine" / split
        for folder, archive in ((images_dir, "leftImg8bit_trainvaltest.zip"),
                                (labels_dir, "gtFine_trainvaltest.zip")):
            if not folder.is_dir():
                raise DatasetNotFoundError(
                    f"Cityscapes folder {folder} not found; download {archive} from "
                    f"{CITYSCAPES_URL} (free registration) and unpack it into {base}"
                )
        images = sorted(images_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise DatasetNotFoundError(f"no Cityscapes images (<city>/*_leftImg8bit.png) in "
                                       f"{images_dir}; see {CITYSCAPES_URL}")
        pairs = []
        for image in images:
            stem = image.name[: -len("_leftImg8bit.png")]
            label = labels_dir / image.parent.name / f"{stem}_gtFine_labelIds.png"
            if not label.is_file():
                raise DatasetNotFoundError(f"Cityscapes label {label} for image {image} not "
                                           f"found; unpack gtFine_trainvaltest.zip into {base}")
            pairs.append((image, label))
        return pairs

    def pairs(self, domain: str, split: Split) -> list[tuple[Path, Path]]:
        """(image, label) files of one split, in a fixed order."""
        if domain not in self.domains:
            raise KeyError(f"suite {self.name!r} has no domain {domain!r}; has {self.domains}")
        if split not in ("train", "test"):
            raise KeyError(f"unknown split {split!r}; use 'train' or 'test'")
        if (domain, split) not in self._pairs:
            if domain == "gta5":
                every = self._gta5_pairs()
                held_out = set(range(0, len(every), self.gta5_test_every))
                chosen = [p for i, p in enumerate(every) if (i in held_out) == (split == "test")]
            else:
                chosen = self._cityscapes_pairs("val" if split == "test" else "train")
            self._pairs[(domain, split)] = chosen
        return self._pairs[(domain, split)]

    # ---- suite protocol ---------------------------------------------------------------
    def load(self, domain: str, split: Split) -> DomainData:
        pairs = self.pairs(domain, split)
        if domain == "gta5" and split == "train":
            # A fresh generator per load: every training run sees the same sample sequence.
            data = PngSplit(pairs, (self.crop_size, self.crop_size),
                            augment=random_scale_crop_flip(self.crop_size, self.scale_range))
        else:
            size = self.gta5_size if domain == "gta5" else self.cityscapes_size
            data = PngSplit(pairs, size)
        return DomainData(data.images, data.labels)  # type: ignore[arg-type]

    def split_fingerprint(self, domain: str, split: Split) -> str:
        """Names and byte sizes of the split's files (hashing ~60 GB of PNGs on every run
        would take minutes); replacing a file by one of another size changes it."""
        h = hashlib.sha256()
        for image, label in self.pairs(domain, split):
            for path in (image, label):
                rel = path.relative_to(self._require_root()).as_posix()
                h.update(f"{domain}/{split}:{rel}:{path.stat().st_size}\n".encode())
        return h.hexdigest()

    def fingerprint(self) -> str:
        """Every split's :meth:`split_fingerprint`."""
        if self._fingerprint is None:
            h = hashlib.sha256(self.name.encode())
            for domain in self.domains:
                for split in ("train", "test"):
                    h.update(self.split_fingerprint(domain, split).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def build_model(self) -> nn.Module:
        kwargs = {k: v for k, v in self.recipe.arch_kwargs if k != "imagenet_backbone_sha256"}
        if self._backbone is not None:
            kwargs["backbone_weights"] = self._backbone
        return create_model(self.recipe.arch, self.num_classes, **kwargs)

    def make_metric(self) -> Metric:
        return make_miou(self.num_classes)
