"""Test-time protocols: how target images are streamed to an adapter, and when it is reset.

- ``episodic`` (default): every target is its own episode; the model and the adapter's
  state (optimizer included) start from the source model for each one.
- ``continual``: one model adapts across all targets in the suite's order (recorded in each
  cell) without any reset; each target is still scored on its own predictions, and every
  cell carries the online accuracy curve of its stretch of the stream.
- ``mixed``: all targets shuffled together (seeded) into one stream, one episode; scores are
  split per target by the runner, which alone knows where each image came from.
- ``noniid``: each target is its own episode (as in episodic), but the images arrive in a
  class-correlated order: a Dirichlet(alpha) mixture over classes per time slot, as in the
  non-i.i.d. TTA literature (RoTTA, NOTE). Small alpha = long runs of a few classes.

The runner orders the stream with the labels it holds; the adapter only ever sees images.
The source domain's row is always evaluated as its own episode, in the natural order.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

T = TypeVar("T")

class Protocol:
    """How a run streams target images to an adapter and when the adapter is reset.

    A protocol decides three things and nothing else: which target cells share one model
    (:meth:`episodes`), the order of a cell's images (:meth:`order`, which may use the
    labels: the scoring side alone calls it), and what each cell records besides its
    score (:attr:`records_curve`). The source domain's row is never streamed by a
    protocol: it is always its own episode in the natural order.
    """

    name: ClassVar[str]
    description: ClassVar[str]  # one line, for leaderboards and ``--help``
    defaults: ClassVar[dict[str, Any]] = {}
    sequential: ClassVar[bool] = False  # one model across all targets (no ``da`` adapters)
    mixes_targets: ClassVar[bool] = False  # the targets' images interleave in one stream
    records_curve: ClassVar[bool] = False  # each cell stores its online score curve

    def params(self, seed: int, targets: tuple[str, ...]) -> dict[str, Any]:
        """The protocol's parameters for a run, recorded in (and keying) every cell."""
        params = dict(self.defaults)
        if self.sequential:
            params["order"] = list(targets)  # the stream's recorded target order
        return params

    def episodes(self, cells: tuple[T, ...]) -> list[tuple[T, ...]]:
        """Target cells grouped into episodes: each episode is one model, one job."""
        return [cells] if self.sequential else [(cell,) for cell in cells]

    def order(self, labels: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """The order in which a target's images are streamed (dataset indices)."""
        return torch.arange(len(labels))


class Episodic(Protocol):
    name = "episodic"
    description = ("the model and optimizer are reset to the source model before each "
                   "target domain")


class Continual(Protocol):
    name = "continual"
    description = "one model adapts across all targets in a fixed, recorded order without reset"
    sequential = True
    records_curve = True


class Mixed(Protocol):
    name = "mixed"
    description = "all targets shuffled into one stream"
    sequential = True
    mixes_targets = True

    def params(self, seed: int, targets: tuple[str, ...]) -> dict[str, Any]:
        return {**super().params(seed, targets), "shuffle_seed": seed}


class NonIID(Protocol):
    name = "noniid"
    description = "a class-imbalanced, temporally correlated target stream"
    defaults = {"alpha": 0.1, "slots": 100}

    def params(self, seed: int, targets: tuple[str, ...]) -> dict[str, Any]:
        return {**super().params(seed, targets), "shuffle_seed": seed}

    def order(self, labels: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        return dirichlet_order(labels, params["alpha"], params["slots"], params["shuffle_seed"])


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (Episodic(), Continual(), Mixed(),
                                                       NonIID())}


def get_protocol(name: str) -> Protocol:
    from benchmark.errors import ShiftbenchError

    if name not in PROTOCOLS:
        raise ShiftbenchError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def dirichlet_order(labels: torch.Tensor, alpha: float, slots: int, seed: int) -> torch.Tensor:
    """A class-correlated order of ``labels``' indices.

    The stream is cut into ``slots`` time slots; each class spreads its samples over the
    slots with proportions drawn from Dirichlet(alpha) (one draw per class), and within a
    slot samples are shuffled. With a small alpha each class sits in a few slots, so a test
    batch sees few classes (the label shift that breaks batch statistics); as alpha grows
    the order approaches i.i.d. Deterministic for a seed; a permutation of all indices.
    """
    if alpha <= 0 or slots < 1:
        raise ValueError(f"noniid needs alpha > 0 and slots >= 1, got {alpha}, {slots}")
    rng = np.random.default_rng(seed)
    labels_np = labels.reshape(len(labels), -1)[:, 0].numpy() if labels.ndim > 1 \
        else labels.numpy()
    buckets: list[list[int]] = [[] for _ in range(slots)]
    for cls in np.unique(labels_np):
        members = rng.permutation(np.flatnonzero(labels_np == cls))
        shares = rng.dirichlet(np.full(slots, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).round().astype(int)
        for slot, part in enumerate(np.split(members, cuts)):
            buckets[slot].extend(part.tolist())
    order = [i for bucket in buckets for i in rng.permutation(bucket).tolist()]
    return torch.tensor(order, dtype=torch.long)


def mixed_order(sizes: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded shuffle of the concatenation of several targets: (domain id, local index)
    per position of the stream."""
    domain = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(sizes)])
    local = torch.cat([torch.arange(n) for n in sizes])
    perm = torch.randperm(len(domain), generator=torch.Generator().manual_seed(seed))
    return domain[perm], local[perm]


class ConcatImages:
    """Images of several domains addressed by one global index (no concatenated copy)."""

    def __init__(self, parts: list[torch.Tensor], domain: torch.Tensor, local: torch.Tensor):
        self.parts, self.domain, self.local = parts, domain, local

    def __len__(self) -> int:
        return len(self.domain)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        domains, locals_ = self.domain[index], self.local[index]
        out: torch.Tensor | None = None
        for d in domains.unique().tolist():
            where = domains == d
            piece = self.parts[d][locals_[where]]  # parts may be lazy (uint8-backed) views
            if out is None:
                out = piece.new_empty((len(index), *piece.shape[1:]))
            out[where] = piece
        assert out is not None
        return out
