"""Test-time protocols: how target images are streamed to an adapter, and when it is reset.

- ``episodic`` (default): every target is its own episode; the model and the adapter's
  state (optimizer included) start from the source model for each one.
- ``continual``: one model adapts across all targets in the suite's order (recorded in each
  cell) without any reset; each target is still scored on its own predictions, and every
  cell carries the online accuracy curve of its stretch of the stream.
- ``mixed``: all targets shuffled together (seeded) into one stream, one episode; scores are
  split per target by the runner, which alone knows where each image came from.
- ``noniid``: each target is its own episode (as in episodic), but the images arrive in a
  class-correlated order: a Dirichlet(alpha) mixture over classes per time slot of 40
  images, as in the non-i.i.d. TTA literature (NOTE, RoTTA). Small alpha = long runs of a
  few classes.
- ``mixed-noniid``: the targets mixed into one stream (as ``mixed``) *and* in a
  class-correlated order (as ``noniid``), RoTTA's "practical" setting.
- ``gradual``: one model, never reset; per corruption its severities rise 1 -> 5 and fall
  back 5 -> 1 (CoTTA's gradual setting). A severity visited twice streams half of its
  images on the way up and the other half on the way down: every image is seen once.
- ``recurring``: the continual sequence of targets repeated ``rounds`` times (10, as in
  the long-horizon studies of RDumb and of recurring TTA), one model, never reset; each
  cell scores all its visits and records its online curve, so collapse shows over time.
- ``online``: episodic, but the stream does not wait: while an adapter works on a batch,
  the next ones arrive. Its cost on a batch is counted, not timed: images through the
  model forward, plus twice the images through a backward pass, per image of the batch
  (a forward-only method costs 1, Tent 3). After adapting on a batch of cost c, the next
  ceil(c) - 1 batches are predicted by the current model without adapting (the
  computational-budget evaluation of Alfarra et al., ICML 2024, arXiv:2304.04795). Each
  cell records how many batches the adapter adapted on and its mean cost.

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
    online: ClassVar[bool] = False  # batches arrive while the adapter is busy (see above)

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

    def visits(self, cells: int, factors: list[dict[str, Any]], params: dict[str, Any]
               ) -> list[tuple[int, int, int]]:
        """The stretches of an episode's stream, in order: (cell, part, parts) streams the
        ``part``-th of ``parts`` equal slices of that cell's ordered images. ``factors``
        are the cells' target factors (corruption, severity). Default: each cell once."""
        return [(i, 0, 1) for i in range(cells)]

    def mixed_order(self, labels: list[torch.Tensor], params: dict[str, Any]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For ``mixes_targets``: (domain id, local index) per position of the stream."""
        return mixed_order([len(x) for x in labels], params["shuffle_seed"])


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
    defaults = {"alpha": 0.1, "slot_size": 40}

    def params(self, seed: int, targets: tuple[str, ...]) -> dict[str, Any]:
        return {**super().params(seed, targets), "shuffle_seed": seed}

    def order(self, labels: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        return dirichlet_order(labels, params["alpha"], slots_for(len(labels), params),
                               params["shuffle_seed"])


class MixedNonIID(Protocol):
    name = "mixed-noniid"
    description = "all targets mixed into one stream, in a class-correlated order"
    sequential = True
    mixes_targets = True
    defaults = {"alpha": 0.1, "slot_size": 40}

    def params(self, seed: int, targets: tuple[str, ...]) -> dict[str, Any]:
        return {**super().params(seed, targets), "shuffle_seed": seed}

    def mixed_order(self, labels: list[torch.Tensor], params: dict[str, Any]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        domain = torch.cat([torch.full((len(x),), i, dtype=torch.long)
                            for i, x in enumerate(labels)])
        local = torch.cat([torch.arange(len(x)) for x in labels])
        flat = torch.cat([x.reshape(len(x), -1)[:, 0] for x in labels])
        perm = dirichlet_order(flat, params["alpha"], slots_for(len(flat), params),
                               params["shuffle_seed"])
        return domain[perm], local[perm]


class Gradual(Protocol):
    name = "gradual"
    description = ("one model, never reset; each corruption's severities rise 1->5 and fall "
                   "back 5->1")
    sequential = True
    records_curve = True

    def visits(self, cells: int, factors: list[dict[str, Any]], params: dict[str, Any]
               ) -> list[tuple[int, int, int]]:
        if not factors or any("corruption" not in f or "severity" not in f for f in factors):
            from benchmark.errors import ShiftbenchError

            raise ShiftbenchError("the gradual protocol needs a suite whose targets are "
                                  "corruptions x severities (digits-c, cifar10-c)")
        by_corruption: dict[str, dict[int, int]] = {}
        for i, f in enumerate(factors):
            by_corruption.setdefault(f["corruption"], {})[int(f["severity"])] = i
        out = []
        for severities in by_corruption.values():
            levels = sorted(severities)
            top = levels[-1]
            for s in levels:  # up: the first half of every level below the top
                out.append((severities[s], 0, 1 if s == top else 2))
            for s in reversed(levels[:-1]):  # down: the second half
                out.append((severities[s], 1, 2))
        return out


class Recurring(Protocol):
    name = "recurring"
    description = "the continual sequence of targets repeated `rounds` times, never reset"
    sequential = True
    records_curve = True
    defaults = {"rounds": 10}

    def visits(self, cells: int, factors: list[dict[str, Any]], params: dict[str, Any]
               ) -> list[tuple[int, int, int]]:
        return [(i, 0, 1) for _ in range(int(params["rounds"])) for i in range(cells)]


class Online(Protocol):
    name = "online"
    description = ("episodic, but batches keep arriving: a method costing c forward passes "
                   "per batch adapts on one batch in ceil(c)")
    online = True


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Episodic(), Continual(), Mixed(), NonIID(), MixedNonIID(), Gradual(), Recurring(),
    Online())}


def get_protocol(name: str) -> Protocol:
    from benchmark.errors import ShiftbenchError

    if name not in PROTOCOLS:
        raise ShiftbenchError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def slots_for(n: int, params: dict[str, Any]) -> int:
    """Time slots of ``slot_size`` images each (NOTE's CIFAR setting: 10,000 test images in
    250 slots, i.e. 40 per slot), so a batch of 64 spans one or two slots, whatever the
    target's size."""
    return max(1, round(n / params["slot_size"]))


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
