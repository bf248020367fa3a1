"""The message format from an adapter process to the scoring process.

The adapter process runs code the scoring process does not trust, so nothing it sends is
unpickled: a message is one JSON header (plain numbers, strings, lists, dicts) followed by
raw tensor bytes, each described in the header by a dtype from a fixed list and a shape.
Decoding is ``json.loads`` and ``torch.frombuffer``, which cannot run code. (The other way,
scoring -> adapter, uses pickle: the adapter process trusts the scoring process.)
"""

from __future__ import annotations

import json
import math
from multiprocessing.connection import Connection
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
                  torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
}
MAX_HEADER = 64 << 20  # a header is small; a longer one is a misbehaving sender
MAX_TENSOR = 4 << 30  # bytes; a batch of logits or images is far smaller


class WireError(RuntimeError):
    """A message that does not follow the format (a broken or hostile adapter process)."""


def send(conn: Connection, header: dict[str, Any],
         tensors: dict[str, torch.Tensor] | None = None) -> None:
    tensors = tensors or {}
    specs, payload = [], []
    for name, tensor in tensors.items():
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in DTYPES:
            raise WireError(f"cannot send a tensor of dtype {dtype} ({name})")
        # Keep a channels-last batch channels-last: convolutions pick their kernels by
        # memory layout, so a re-laid-out copy would compute slower (and not bit-equal).
        layout = "nchw"
        if tensor.ndim == 4 and not tensor.is_contiguous() \
                and tensor.is_contiguous(memory_format=torch.channels_last):
            tensor, layout = tensor.permute(0, 2, 3, 1), "nhwc"
        specs.append([name, dtype, list(tensor.shape), layout])
        payload.append(tensor)
    conn.send_bytes(json.dumps({**header, "tensors": specs}).encode())
    for tensor in payload:
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        conn.send_bytes(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")


def receive(conn: Connection) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """One message: (header, tensors). Raises WireError on anything malformed and EOFError
    when the other side is gone."""
    try:
        header = json.loads(conn.recv_bytes(MAX_HEADER))
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        if isinstance(exc, OSError) and "bad message length" not in str(exc):
            raise
        raise WireError(f"malformed message header ({exc})") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list):
        raise WireError("message header is not a JSON object with a tensor list")
    tensors: dict[str, torch.Tensor] = {}
    for spec in header.pop("tensors"):
        try:
            name, dtype_name, shape, layout = spec
            dtype = DTYPES[dtype_name]
            shape = [int(s) for s in shape]
            if layout not in ("nchw", "nhwc") or (layout == "nhwc" and len(shape) != 4):
                raise ValueError(layout)
        except (ValueError, TypeError, KeyError):
            raise WireError(f"malformed tensor description {spec!r}") from None
        if any(s < 0 for s in shape):
            raise WireError(f"negative tensor size {shape}")
        numel = math.prod(shape)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if numel * itemsize > MAX_TENSOR:
            raise WireError(f"tensor {name!r} of shape {shape} is larger than {MAX_TENSOR} bytes")
        data = conn.recv_bytes(max(1, numel * itemsize))
        if len(data) != numel * itemsize:
            raise WireError(f"tensor {name!r}: {len(data)} bytes for shape {shape} {dtype_name}")
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8) if numel \
            else torch.empty(0, dtype=torch.uint8)
        tensor = raw.view(dtype).reshape(shape)
        tensors[str(name)] = tensor.permute(0, 3, 1, 2) if layout == "nhwc" else tensor
    return header, tensors
