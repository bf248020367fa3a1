"""Camera-based BN -- Zhuang, Wei, Xie, Zhang, Zhang, Wu, Ai, Tian. "Rethinking the Distribution
Gap of Person Re-identification with Camera-based Batch Normalization", ECCV 2020
(arXiv:2001.08680); summarized in Lei Huang's CVPR 2021 tutorial
"Normalization Techniques in Deep Learning: Methods, Analyses and Applications"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.adapter import Adapter, TargetStream, single_id
from benchmark.layers.norm import estimate_statistics
from benchmark.registry import ADAPTERS


class CameraBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with one shared affine (weight, bias) and running statistics per camera.

    Buffers ``camera_mean`` / ``camera_var`` (max_cameras, C) hold each camera's running
    statistics, ``camera_batches`` how many training batches each camera contributed.
    ``select(camera)`` makes one camera's statistics the layer's active ones (the inherited
    ``running_mean`` / ``running_var``, which eval mode normalizes with, so BN-statistics
    methods such as AdaBN or Tent compose with it); ``None`` selects the pooled statistics of
    all cameras seen in training (their mixture: what one shared BN would have estimated).
    In training mode the batch (a single camera's) is normalized with its own statistics,
    which update that camera's running statistics only; the active statistics follow the
    pooled ones, so a checkpoint used without any camera selection acts as one shared BN.
    """

    def __init__(self, num_features: int, max_cameras: int, eps: float = 1e-5,
                 momentum: float | None = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.max_cameras = max_cameras
        self.register_buffer("camera_mean", torch.zeros(max_cameras, num_features))
        self.register_buffer("camera_var", torch.ones(max_cameras, num_features))
        self.register_buffer("camera_batches", torch.zeros(max_cameras, dtype=torch.long))
        self.camera: int | None = None

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, max_cameras: int) -> CameraBatchNorm2d:
        layer = cls(bn.num_features, max_cameras, bn.eps, bn.momentum)
        if not (bn.affine and bn.track_running_stats):
            raise ValueError("camera BN converts BatchNorm2d layers with affine parameters and "
                             "running statistics")
        layer.load_state_dict(bn.state_dict(), strict=False)  # weight, bias, running stats
        return layer

    def has_statistics(self, camera: int) -> bool:
        return bool(self.camera_batches[camera] > 0)

    def pooled_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of the mixture of the seen cameras, weighted by their batches."""
        weights = self.camera_batches.double()
        if weights.sum() == 0:
            return self.running_mean.clone(), self.running_var.clone()
        weights = (weights / weights.sum())[:, None]
        mean = (weights * self.camera_mean.double()).sum(0)
        second = (weights * (self.camera_var.double() + self.camera_mean.double() ** 2)).sum(0)
        return mean.float(), (second - mean**2).clamp_min(0).float()

    @torch.no_grad()
    def select(self, camera: int | None) -> None:
        """Use ``camera``'s statistics; a camera without any (unseen) gets the pooled ones
        until its own are set (``CameraBN.adapt``)."""
        if camera is not None and not 0 <= camera < self.max_cameras:
            raise ValueError(f"camera id {camera} is outside 0..{self.max_cameras - 1}; raise "
                             "camera_bn's max_cameras hyper-parameter")
        self.camera = camera
        if camera is not None and self.has_statistics(camera):
            mean, var = self.camera_mean[camera], self.camera_var[camera]
        else:
            mean, var = self.pooled_statistics()
        self.running_mean.copy_(mean)
        self.running_var.copy_(var)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats):
            return super().forward(x)  # active statistics (eval) or batch statistics
        if self.camera is None:
            raise RuntimeError("camera BN in training needs the batch's camera id "
                               "(CameraBN.set_context with a 'camera' field)")
        k = self.camera
        # Rows of the per-camera buffers are views: F.batch_norm updates them in place.
        out = F.batch_norm(x, self.camera_mean[k], self.camera_var[k], self.weight, self.bias,
                           True, 0.1 if self.momentum is None else self.momentum, self.eps)
        with torch.no_grad():  # a checkpoint's active statistics: the pooled ones
            self.camera_batches[k] += 1
            mean, var = self.pooled_statistics()
            self.running_mean.copy_(mean)
            self.running_var.copy_(var)
        return out


def camera_layers(model: nn.Module) -> list[CameraBatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, CameraBatchNorm2d)]


def convert_to_camera_bn(module: nn.Module, max_cameras: int) -> nn.Module:
    """Replace every BatchNorm2d below ``module`` (in place) by a CameraBatchNorm2d."""
    if type(module) is nn.BatchNorm2d:
        return CameraBatchNorm2d.from_batchnorm(module, max_cameras)
    for name, child in module.named_children():
        setattr(module, name, convert_to_camera_bn(child, max_cameras))
    return module


@ADAPTERS.register("camera_bn")
class CameraBN(Adapter):
    """Camera-based BN: per-camera BN statistics, shared affine (Zhuang et al. ECCV 2020).

    An unseen camera gets statistics from its own unlabeled images.

    Training: every BatchNorm2d becomes a ``CameraBatchNorm2d``; each training
    batch holds images of a single camera (``batch_key = "camera"``), is normalized with its
    own statistics and updates that camera's running statistics; gamma, beta and all other
    weights are shared by all cameras. Test time: a seen camera is normalized with its stored
    statistics; an unseen camera (an id without training statistics, or a target stream
    without a camera id) gets statistics computed in ``adapt`` over all of its unlabeled
    images before any prediction, exactly as AdaBN does for a target domain (whole-set mean
    and unbiased variance per BN channel, each layer seeing inputs normalized as in
    training). A stream that mixes cameras without a constant id (the source domain's test
    split) is normalized with the pooled statistics of the seen cameras.

    Trains: the whole network (shared affine, per-camera statistics). Adapts: the active BN
    statistics of an unseen camera. Resets: the model state of attach time; the camera
    selected by ``set_context`` is kept and re-applied.
    """

    defaults = {"max_cameras": 16}
    setting = "dg"
    changes_training = True
    requires = frozenset({"camera_ids"})
    batch_key = "camera"

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        self._needs_statistics = False

    def prepare(self, model: nn.Module) -> nn.Module:
        model = convert_to_camera_bn(model, int(self.hparams["max_cameras"]))
        if not camera_layers(model):
            raise ValueError("camera_bn converts BatchNorm2d layers, but the model has none")
        return model

    def set_context(self, model: nn.Module, context: Mapping[str, Any]) -> None:
        camera = single_id(context.get(self.batch_key), "camera")
        layers = camera_layers(model)
        for layer in layers:
            layer.select(camera)
        # Unseen: a known id without training statistics, or an unnamed target camera.
        seen = camera is not None and layers[0].has_statistics(camera)
        self._needs_statistics = not seen and (camera is not None
                                               or context.get("role") == "target")

    def setup(self, model: nn.Module) -> None:
        model.eval()
        for layer in camera_layers(model):  # after reset: back to the selected camera
            layer.select(layer.camera)

    def adapt(self, stream: TargetStream) -> None:
        if not self._needs_statistics:
            return
        model = self._require_model()
        estimate_statistics(model, camera_layers(model), stream)
