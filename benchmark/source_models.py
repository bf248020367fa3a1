"""Pretrained source models by name: the public checkpoints test-time adaptation papers use.

``--source-model LIBRARY:NAME`` replaces the suite's trained source model by a published one:

- ``torchvision:<weights>``, e.g. ``torchvision:resnet50.IMAGENET1K_V1`` (the ResNet-50 that
  ImageNet-C results in the TTA literature start from). The file is read from torch hub's
  cache, ``$TORCH_HOME/hub/checkpoints/`` (default ``~/.cache/torch``), where torchvision
  itself caches it.
- ``timm:<model>[.<tag>]``, e.g. ``timm:resnet50.a1_in1k``, from the Hugging Face hub cache
  where timm caches it (``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``); needs the
  ``timm`` extra.
- ``robustbench:[<dataset>/]<name>``, e.g. ``robustbench:Standard`` (CIFAR-10's WRN-28-10,
  Tent's source model) or ``robustbench:cifar100/Hendrycks2020AugMix_ResNeXt``, from
  RobustBench's model folder layout ``<dir>/<dataset>/corruptions/<name>.pt`` with ``<dir>``
  = ``$ROBUSTBENCH_MODELS``, else ``./models`` (the default of RobustBench's ``load_model``).
  Built here, with RobustBench's module names (``benchmark.layers.models``): ``Standard``
  (WRN-28-10) and, for CIFAR-10 and CIFAR-100, ``Hendrycks2020AugMix_ResNeXt`` (ResNeXt-29,
  the usual CIFAR-100-C source) and ``Hendrycks2020AugMix_WRN`` (WRN-40-2); other names need
  the ``robustbench`` package for their architecture. The
  checkpoint is read with ``weights_only=True``, never executed.

Nothing is downloaded during a run: when the weights are not in the cache, the run stops
before any cell with one line saying what to download and where. The model is wrapped to
take the suite's [0, 1] images and standardize them with the weights' own mean and std.
Its identity -- the name and the sha256 of the weights file -- is part of every cell's key.
Only test-time adapters apply (the model is not retrained), as with ``--source-checkpoint``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmark.errors import ShiftbenchError
from benchmark.store import file_sha256

LIBRARIES = ("torchvision", "timm", "robustbench")


class Standardized(nn.Module):
    """A pretrained classifier that takes [0, 1] images: (x - mean) / std, then the model."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]
                 ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


@dataclass
class SourceModel:
    """A named pretrained model (see the module docstring)."""

    library: str
    name: str
    _loaded: tuple[nn.Module, Path] | None = field(default=None, repr=False)
    _digest: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str) -> SourceModel:
        library, sep, name = text.partition(":")
        if not sep or not name or library not in LIBRARIES:
            raise ShiftbenchError(
                f"--source-model {text!r}: expected LIBRARY:NAME with LIBRARY one of "
                f"{', '.join(LIBRARIES)}, e.g. torchvision:resnet50.IMAGENET1K_V1 or "
                "timm:resnet50.a1_in1k")
        return cls(library, name)

    @property
    def text(self) -> str:
        return f"{self.library}:{self.name}"

    def _load(self) -> tuple[nn.Module, Path]:
        if self._loaded is None:
            loader = {"torchvision": _load_torchvision, "timm": _load_timm,
                      "robustbench": _load_robustbench}[self.library]
            self._loaded = loader(self.name)
        return self._loaded

    def build(self) -> nn.Module:
        """A fresh copy of the model with its pretrained weights, in eval mode."""
        return copy.deepcopy(self._load()[0])

    def state(self) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in self._load()[0].state_dict().items()}

    def identity(self) -> dict[str, Any]:
        if self._digest is None:  # once: the file is read when the model is loaded
            self._digest = file_sha256(self._load()[1])
        return {"source_model": self.text, "weights_sha256": self._digest}

    def weights_file(self) -> Path:
        return self._load()[1]

    def num_classes(self) -> int:
        from benchmark.layers.tta import classifier_head

        return classifier_head(self._load()[0]).out_features


def _load_torchvision(name: str) -> tuple[nn.Module, Path]:
    import torchvision
    from torch.hub import get_dir

    architecture, _, tag = name.partition(".")
    try:  # "resnet50.IMAGENET1K_V1": an architecture and one of its weights
        weights = torchvision.models.get_model_weights(architecture)[tag]
    except (KeyError, ValueError):
        raise ShiftbenchError(
            f"torchvision has no weights {name!r}; names look like resnet50.IMAGENET1K_V1 "
            "(an architecture of torchvision.models.list_models() and a member of its "
            "get_model_weights)") from None
    path = Path(get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not path.is_file():
        raise ShiftbenchError(
            f"the weights of torchvision:{name} are not in torch hub's cache: download "
            f"{weights.url} to {path} (or run torchvision.models.get_model once with network)")
    # the file is in the cache, so torchvision reads it from there (no download)
    model = torchvision.models.get_model(architecture, weights=weights)
    transforms = weights.transforms()
    return Standardized(model, tuple(transforms.mean), tuple(transforms.std)).eval(), path


def _load_timm(name: str) -> tuple[nn.Module, Path]:
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        raise ShiftbenchError("--source-model timm:... needs timm: pip install -e '.[timm]'"
                              ) from None
    if not timm.is_model(name):
        raise ShiftbenchError(f"timm has no model {name!r} (timm.list_models lists them)")
    config = timm.models.get_pretrained_cfg(name)
    repo = getattr(config, "hf_hub_id", None) if config is not None else None
    if not repo:
        raise ShiftbenchError(f"timm:{name} has no Hugging Face weights; name a model with a "
                              "pretrained tag, e.g. resnet50.a1_in1k")
    found = None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, filename)
        if isinstance(hit, str):
            found = Path(hit)
            break
    if found is None:
        raise ShiftbenchError(
            f"the weights of timm:{name} are not in the Hugging Face cache: download them "
            f"with `huggingface-cli download {repo} model.safetensors` (cache: "
            f"{os.environ.get('HF_HUB_CACHE', '~/.cache/huggingface/hub')})")
    # timm's own loading (its checkpoint filters included) from the cached file: no request
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(found)})
    cfg = model.pretrained_cfg
    return Standardized(model, tuple(cfg["mean"]), tuple(cfg["std"])).eval(), found


def robustbench_dir() -> Path:
    return Path(os.environ.get("ROBUSTBENCH_MODELS", "models"))


def _load_robustbench(name: str) -> tuple[nn.Module, Path]:
    from benchmark.weights import load_state_dict_file

    dataset, _, model_name = name.rpartition("/")
    dataset = dataset or "cifar10"  # RobustBench's default data set
    path = robustbench_dir() / dataset / "corruptions" / f"{model_name}.pt"
    if not path.is_file():
        raise ShiftbenchError(
            f"the weights of robustbench:{name} are not in {path}: run robustbench.utils."
            f"load_model(model_name={model_name!r}, dataset={dataset!r}, threat_model="
            f"'corruptions', model_dir={str(robustbench_dir())!r}) once with network, or put "
            "the checkpoint there")
    built_in = _robustbench_built_in(dataset, model_name)
    if built_in is not None:
        model, mean_std = built_in
    else:
        mean_std = None
        try:
            from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
            from robustbench.model_zoo.models import model_dicts
        except ImportError:
            raise ShiftbenchError(f"robustbench:{name} needs the robustbench package for its "
                                  "architecture (pip install robustbench)") from None
        entries = model_dicts[BenchmarkDataset(dataset)][ThreatModel("corruptions")]
        if model_name not in entries:
            raise ShiftbenchError(f"RobustBench has no {dataset} corruptions model "
                                  f"{model_name!r}")
        model = entries[model_name]["model"]()
    state = load_state_dict_file(path)  # safe load, "state_dict" / "module." unwrapped
    state = {k.removeprefix("model."): v for k, v in state.items()}
    if mean_std is not None:  # built here: RobustBench's standardizing buffers are ours
        state = {k: v for k, v in state.items() if k not in ("mu", "sigma")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ShiftbenchError(f"{path} does not fit robustbench:{name}'s architecture: "
                              f"{str(exc).splitlines()[0]}") from None
    if mean_std is not None:
        model = Standardized(model, *mean_std)
    # RobustBench's models take [0, 1] images (those that standardize do it inside)
    return model.eval(), path


HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _robustbench_built_in(dataset: str, name: str
                          ) -> tuple[nn.Module, tuple[tuple[float, ...], ...] | None] | None:
    """The corruption models TTA papers start from, built here with RobustBench's module
    names (no robustbench package needed): the architecture, and the mean/std RobustBench
    standardizes its input with (None: the model takes [0, 1] pixels as they are). The
    AugMix models' checkpoints carry no standardization buffers; RobustBench adds mean =
    std = 0.5 around them."""
    from benchmark.layers.models import CifarResNeXt, WideResNet

    classes = {"cifar10": 10, "cifar100": 100}.get(dataset)
    if classes is None:
        return None
    if name == "Standard" and dataset == "cifar10":
        return WideResNet(10, depth=28, widen_factor=10), None  # Tent's CIFAR-10 source
    if name == "Hendrycks2020AugMix_ResNeXt":  # Hendrycks et al., ICLR 2020
        return CifarResNeXt(classes, depth=29, groups=4, path_width=32), HALF
    if name == "Hendrycks2020AugMix_WRN":
        return WideResNet(classes, depth=40, widen_factor=2), HALF
    return None
