"""The adapter protocol: one small base class for every method, training-time or test-time.

The runner calls these hooks, always in this order, and nothing else:

Training (once per seed and training signature; skipped when the checkpoint is cached)::

    model = adapter.prepare(suite.build_model())   # model surgery (IBN, DSBN, ...), or no-op
    each step:
        adapter.set_context(model, {"role": "source", <side info of the batch>})
        loss  = task loss on the labelled source batch
              + adapter.extra_loss(model)           # e.g. ISW's loss on stored features
        if adapter.setting == "da":                 # unlabeled target batches, images only
            adapter.set_context(model, {"role": "target", "domain": <target>})
            loss += adapter.target_loss(model, x_target)   # None adds nothing
        # or, when adapter.owns_training_loss (AdaMatch: shared forward passes):
        loss = adapter.training_loss(model, x, y, x_target, step)
    adapter.finish_training(model, images)  # once, after the last step: final statistics

Batches are shuffled across the whole source set, unless ``batch_key`` names a side-info
field (``"camera"``, ``"domain"``): then every batch holds a single value of it (DSBN,
camera BN). In the ``da`` setting each target domain gets its own trained model.

Before ``prepare`` (in training, in describing an adapter and at test time) the runner tells
every adapter what problem it is on: ``adapter.num_classes``, ``adapter.task``
("classification" or "segmentation") and, in training only, ``adapter.total_steps`` (the
number of optimizer steps the source model trains for; None at test time). Class-count
dependent constants (EATA's and SAR's entropy margin 0.4 ln C) are computed from them.

Test time (once per cell, on a fresh copy of the trained model)::

    adapter.attach(model)     # remember the model and its state; calls setup(model)
    adapter.use_source(stream)   # setting "tta+src" only: unlabeled source images, once
    adapter.set_context(model, stream.context)   # {"role", "domain", constant side info}
    adapter.adapt(stream)     # optional pass over the *unlabeled* target images (AdaBN)
    for x in stream:
        logits = adapter.predict(x)   # online methods (Tent) update inside predict
        # protocol "online": a batch arriving while the method is still busy gets
        # logits = adapter.infer(x) instead, a prediction without adapting
    adapter.reset()           # back to the state right after attach (protocols use it)

An adapter whose setting is ``tta+src`` uses unlabeled *source* images at test time (EATA's
Fisher regularizer): it must have an integer hyper-parameter ``source_images``, and once per
job, right after ``attach``, ``use_source`` gets a :class:`TargetStream` of that many images
of the source domain's training split, a fixed subset drawn with the job's seed. Images
only, never labels; its rows are ranked apart from source-free rows.

A subclass overrides only the hooks it needs. Target data reaches an adapter only
through a :class:`TargetStream` (or ``target_loss`` / ``finish_training`` in training),
which carries images and side information such as a camera id, never labels; the runner
alone holds the labels and computes every score.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import nn

from benchmark.provenance import source_hash

TRAINING_HOOKS = ("prepare", "extra_loss", "set_context", "target_loss", "finish_training",
                  "training_signature")
TEST_HOOKS = ("attach", "setup", "use_source", "set_context", "adapt", "predict", "infer",
              "reset")
HOOKS = tuple(dict.fromkeys((*TRAINING_HOOKS, *TEST_HOOKS)))
"""Every method of the protocol the runner calls (the lifecycle above)."""
BEHAVIOUR_HOOKS = ("prepare", "extra_loss", "set_context", "target_loss", "finish_training",
                   "setup", "use_source", "adapt", "predict", "infer")
"""The hooks that change what a method computes (the rest is bookkeeping): an adapter that
overrides none of them scores exactly like ``source``."""

Setting = Literal["tta", "tta+src", "dg", "da"]
"""tta: source model adapted at test time; tta+src: the same, also using unlabeled source
images at test time; dg: trained on labelled source only; da: unlabeled target data also
seen during training. A composition joins its parts' settings (``dg+tta``)."""
SETTINGS = ("tta", "tta+src", "dg", "da")


def uses_source_images(setting: str) -> bool:
    """Whether rows of this setting used unlabeled source images at test time."""
    return "src" in setting.split("+")


class Indexable(Protocol):
    """Anything that returns a batch of images for a 1-D index tensor (a Tensor does)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor: ...


class TargetStream:
    """Unlabeled target images, in a fixed order, in batches of a fixed size.

    Iterating yields image tensors only, on the run's device. The stream can be iterated
    any number of times (AdaBN reads it once in ``adapt`` before the runner predicts);
    every pass yields the same batches in the same order.
    """

    def __init__(
        self,
        images: Indexable,
        batch_size: int,
        order: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        context: Mapping[str, Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._images = images
        self._order = torch.arange(len(images)) if order is None else order.clone()
        self.batch_size = batch_size
        self.device = torch.device(device)
        # What the adapter may know about the data besides the images: its role ("source"
        # or "target"), the domain's name and side information constant over it (a camera
        # id). Never labels.
        self.context: dict[str, Any] = dict(context or {})

    @property
    def num_examples(self) -> int:
        return len(self._order)

    def __len__(self) -> int:
        """Number of batches."""
        return -(-self.num_examples // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for index in self.indices():
            yield self._images[index].to(self.device, non_blocking=True)

    def indices(self) -> Iterator[torch.Tensor]:
        """Dataset indices of each batch, in stream order (the runner scores with them)."""
        for start in range(0, self.num_examples, self.batch_size):
            yield self._order[start : start + self.batch_size]


class TrainingImages(Protocol):
    """The training images as :meth:`Adapter.finish_training` sees them: un-augmented
    batches in the training loop's batching (single ``batch_key`` value per batch)."""

    def source(self) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
        """(images, context) per source batch; the context is what ``set_context`` gets in
        training (``role`` "source" and the batch's side-information fields)."""
        ...

    def target(self) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
        """(images, context) per batch of the unlabeled target training images (``da``
        only; empty otherwise); the context is ``role`` "target" and the ``domain``."""
        ...


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None] | None) -> None:
    if state is None:
        return
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def single_id(value: Any, what: str) -> int | None:
    """A context field's id as an int: in training the batch's tensor of ids, which must all
    be equal (single-``what`` batches), at test time a constant, or None when absent."""
    if isinstance(value, torch.Tensor):
        values = value.unique()
        if len(values) != 1:
            raise ValueError(f"needs single-{what} batches, got ids {values.tolist()}")
        return int(values.item())
    return None if value is None else int(value)


def hparam_type_problem(default: Any, value: Any) -> str | None:
    """Why ``value`` cannot replace ``default`` (None if it can): it must have the default's
    type; an int may stand for a float; a default of None accepts anything."""
    if default is None:
        return None
    kind = type(default)
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (tuple, list))
    else:
        ok = isinstance(value, kind)
    if ok:
        return None
    return (f"must be a {kind.__name__} like its default {default!r}, got "
            f"{type(value).__name__}")


def hparams_text(items: Iterable[tuple[str, Any]]) -> str:
    """``k=v,k=v`` as written on the command line (strings quoted): what parses back."""
    return ",".join(f"{k}={v!r}" for k, v in items)


class Adapter:
    """Base class of every adaptation method. See the module docstring for the lifecycle.

    Class attributes a method sets:

    - ``defaults``: hyper-parameters with their reference values. A run may override them
      (``tent(lr=1e-4)``); the resolved values are part of every result's identity.
    - ``setting``: ``tta``, ``dg`` or ``da`` (see :data:`Setting`).
    - ``changes_training``: True when ``prepare``/``extra_loss`` change the source model,
      so it gets its own checkpoint instead of sharing the plain one.
    - ``requires``: suite capabilities the method needs (e.g. ``{"camera_ids"}``); the
      runner only pairs it with suites that provide them.
    - ``tasks``: the tasks it works on.
    - ``batch_key``: a per-sample side-information field (``DomainData.extra``) whose value
      must be the same across each training batch, e.g. ``"camera"``; None mixes freely.
    - ``heavy``: True when each batch costs tens of forward passes (augmentation-averaged
      methods such as CoTTA and DUA). Such methods are left out of the quick default job
      (``--adapters quick``) so it stays within about a minute; every other job includes
      them.
    """

    name: ClassVar[str] = ""  # set by the registry
    defaults: ClassVar[Mapping[str, Any]] = {}
    setting: ClassVar[Setting] = "tta"
    changes_training: ClassVar[bool] = False
    requires: ClassVar[frozenset[str]] = frozenset()
    tasks: ClassVar[frozenset[str]] = frozenset({"classification", "segmentation"})
    batch_key: ClassVar[str | None] = None
    heavy: ClassVar[bool] = False

    def __init__(self, **hparams: Any) -> None:
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise TypeError(
                f"{type(self).__name__} got unknown hyper-parameter(s) {', '.join(unknown)}; "
                f"valid: {valid}"
            )
        for key, value in hparams.items():
            problem = hparam_type_problem(self.defaults[key], value)
            if problem:
                raise TypeError(f"{type(self).__name__}: hyper-parameter {key}={value!r} "
                                f"{problem}")
        self.hparams: dict[str, Any] = {**self.defaults, **hparams}
        self.model: nn.Module | None = None
        self._attached_state: dict[str, torch.Tensor] | None = None
        # the problem, told by the runner before prepare() (see the module docstring)
        self.num_classes: int | None = None
        self.task: str | None = None
        self.total_steps: int | None = None

    def bind(self, task: str, num_classes: int, total_steps: int | None = None) -> None:
        """Called by the runner before ``prepare``: the suite's task and class count, and in
        training the number of optimizer steps. Not a hook to override."""
        self.task, self.num_classes, self.total_steps = task, int(num_classes), total_steps

    def source_image_count(self) -> int:
        """How many unlabeled source images ``use_source`` gets (0: none; setting tta+src
        only, from the ``source_images`` hyper-parameter)."""
        if not uses_source_images(self.setting):
            return 0
        count = self.hparams.get("source_images")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise TypeError(f"{type(self).__name__} has setting {self.setting!r}, so it needs "
                            f"an integer hyper-parameter source_images >= 1, got {count!r}")
        return count

    # ---- training time -------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        """Model surgery before training (and before a checkpoint is loaded into it)."""
        return model

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A loss term added to the task loss at every training step, or None."""
        return None

    def set_context(self, model: nn.Module, context: Mapping[str, Any]) -> None:
        """Side information about the next batches, in training before every forward pass and
        at test time once per target: ``role`` ("source"/"target"), the ``domain`` name, and
        the suite's side-information fields (batch tensors in training, constants at test
        time). Domain-specific normalization (DSBN, camera BN) selects its branch here."""

    def target_loss(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """``da`` setting only: a loss on one *unlabeled* target training batch (after
        ``set_context(role="target")``), added to the step's loss; None adds nothing. A
        forward pass here also updates target-branch statistics, as DSBN's training does."""
        return None

    owns_training_loss: ClassVar[bool] = False
    """True: ``training_loss`` computes each step's whole loss (methods whose source and
    target terms share forward passes, such as AdaMatch); the runner then calls it instead
    of summing the task loss, ``extra_loss`` and ``target_loss``."""

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      x_target: torch.Tensor | None, step: int) -> torch.Tensor:
        """The loss of training step ``step`` (from 0, of ``total_steps``) on a labelled
        source batch ``(x, y)`` and, in the ``da`` setting, an unlabeled target batch, both
        already augmented by the suite's recipe. Only when ``owns_training_loss``."""
        raise NotImplementedError(f"{type(self).__name__} sets owns_training_loss but does "
                                  "not implement training_loss")

    def finish_training(self, model: nn.Module, data: TrainingImages) -> None:
        """Once after the last optimizer step, before the checkpoint is saved, with the
        model in train mode: re-estimate statistics with the final weights (Switchable
        Norm's batch average, DSBN's target branch). ``data`` gives the training images
        again, never labels. Default: nothing."""

    code_files: ClassVar[tuple[str, ...]] = ()
    """Further files (paths relative to the adapter's own file) whose content decides its
    results, beyond the modules it imports from its own folder and from ``benchmark.layers``
    (those are found for it)."""

    def code_hash(self) -> str:
        """Hash of the code that decides this adapter's results: its defining file, the
        modules it imports from its own folder and from ``benchmark.layers`` (transitively)
        and its ``code_files``."""
        return source_hash(type(self))

    def training_signature(self) -> dict[str, Any] | None:
        """What about training this adapter changes; None shares the plain source model."""
        if not self.changes_training:
            return None
        return {"adapter": self.name, "hparams": self.hparams}

    # ---- test time -----------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Take the trained model; remember its state so ``reset`` can return to it."""
        self.model = model
        self._attached_state = copy.deepcopy(model.state_dict())
        # torch's random stream too: a reset stochastic method (CoTTA's augmentations)
        # draws what a fresh one would
        self._attached_rng = _rng_state()
        self.setup(model)

    def setup(self, model: nn.Module) -> None:
        """Configure the model and any per-target state (optimizers). Default: eval mode."""
        model.eval()

    def use_source(self, stream: TargetStream) -> None:
        """Setting ``tta+src`` only: once per job right after ``attach``, a stream of
        ``source_images`` unlabeled images of the source training split (a seeded subset;
        context role "source"). State computed here (EATA's Fisher information) describes
        the source model, so ``reset`` keeps it."""

    def adapt(self, stream: TargetStream) -> None:
        """Optional pass over the unlabeled target data before any prediction."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for one batch of target images."""
        with torch.no_grad():
            return self._require_model()(x)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch the method does not adapt on: the ``online`` protocol's
        batches that arrive while it is still busy. Its current prediction, with no update.
        Default: the model's forward in its current mode, without gradient; a method that
        predicts with something else (a teacher, prototypes, a corrected output) says so."""
        with torch.no_grad():
            return self._require_model()(x)

    def reset(self) -> None:
        """Return the model and the adapter's state to how they were right after attach
        (torch's random number generator included)."""
        model = self._require_model()
        assert self._attached_state is not None
        model.load_state_dict(self._attached_state)
        _set_rng_state(getattr(self, "_attached_rng", None))
        self.setup(model)

    # ---- helpers -------------------------------------------------------------------
    def _require_model(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__}: call attach(model) before using it")
        return self.model

    @classmethod
    def summary(cls) -> str:
        """First line of the class docstring, for ``run.py list``."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def label(self) -> str:
        """Row name in leaderboards: the name, plus any hyper-parameter that differs."""
        changed = {k: v for k, v in self.hparams.items() if self.defaults.get(k) != v}
        if not changed:
            return self.name
        return f"{self.name}({hparams_text(sorted(changed.items()))})"
