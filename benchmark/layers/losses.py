"""Losses shared by adapters."""

from __future__ import annotations

import torch


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of softmax(logits) over the class dimension (dim 1), per prediction;
    for segmentation logits (N, C, H, W) that is one entropy per pixel."""
    # the reference implementations' exact expression (Tent, EATA, SAR): bit-equal updates
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
