"""Reading a user's model weights: ``load_state_dict_file`` and ``check_compatible``.

Accepts the two common on-disk forms of a PyTorch state dict -- a ``.safetensors`` file and a
``torch.save`` pickle, read with ``weights_only=True`` so a file can never run code -- and the
usual wrappers around it: a checkpoint dict holding the weights under ``"state_dict"`` or
``"model"`` (RobustBench, Tent and most training scripts), and the ``"module."`` prefix that
``nn.DataParallel`` / DDP add to every key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmark.errors import ShiftbenchError

# Keys under which checkpoint dicts commonly nest the weights, tried in this order.
NESTING_KEYS = ("state_dict", "model", "model_state_dict", "net")
PREFIXES = ("module.",)
MAX_LISTED = 5


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """The state dict in ``path`` (safetensors, or a ``torch.save`` file of tensors), unwrapped
    from a ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoint and stripped of a
    ``module.`` prefix. Raises ``ShiftbenchError`` naming the file when it cannot be read or
    holds no tensors."""
    path = Path(path)
    if not path.is_file():
        raise ShiftbenchError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(path)
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and safetensors header errors all land here
        raise ShiftbenchError(
            f"cannot read weights file {path} ({type(exc).__name__}: {exc}); it must be a "
            ".safetensors file or a torch.save'd state dict of tensors (objects other than "
            "tensors, dicts, lists and numbers are refused: weights_only=True)"
        ) from None
    state = _unwrap(raw, path)
    return _strip_prefixes(state)


def _unwrap(raw: Any, path: Path) -> dict[str, Tensor]:
    seen = []
    while isinstance(raw, Mapping):
        if raw and all(isinstance(v, Tensor) for v in raw.values()):
            return {str(k): v for k, v in raw.items()}
        nested = next((k for k in NESTING_KEYS if isinstance(raw.get(k), Mapping)), None)
        if nested is None:
            break
        seen.append(nested)
        raw = raw[nested]
    if isinstance(raw, Mapping):
        tensors = {str(k): v for k, v in raw.items() if isinstance(v, Tensor)}
        if tensors:  # e.g. a state dict saved alongside a few scalars: keep the tensors
            return tensors
        keys = ", ".join(map(repr, list(raw)[:MAX_LISTED]))
        where = "".join(f"[{k!r}]" for k in seen)
        raise ShiftbenchError(
            f"weights file {path}{where} holds no tensors (keys: {keys}); expected a state dict, "
            f"possibly nested under one of {', '.join(map(repr, NESTING_KEYS))}"
        )
    raise ShiftbenchError(
        f"weights file {path} holds a {type(raw).__name__}, not a state dict; save "
        "model.state_dict(), not the model object"
    )


def _strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    for prefix in PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def check_compatible(model: nn.Module, state: Mapping[str, Tensor], source: str = "weights"
                     ) -> None:
    """Raise ``ShiftbenchError`` unless ``state`` has exactly the model's state-dict keys with
    the same shapes, naming the first missing, unexpected and mismatched keys.

    Missing BatchNorm ``num_batches_tracked`` counters are allowed: checkpoints saved before
    PyTorch 0.4.1 (e.g. RobustBench's CIFAR-10 ``Standard`` WRN-28-10) have none, and
    ``load_state_dict`` fills them in for a plain state dict."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected),
                        ("shape mismatch", mismatched)):
        if keys:
            more = f" (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
            parts.append(f"{label} {len(keys)}: {', '.join(keys[:MAX_LISTED])}{more}")
    raise ShiftbenchError(
        f"{source} do not fit the {type(model).__name__} of this suite's recipe: "
        + "; ".join(parts)
    )
