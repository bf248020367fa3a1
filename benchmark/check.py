"""``run.py check``: is an adapter class ready to be scored? A conformance kit, CPU, seconds.

It loads the class (a file ``path.py:Class``, optionally with ``(k=v)`` hyper-parameters, or
a registered name) and runs it the way the runner does, on a tiny in-process version of the
``digits`` suite (:class:`CheckSuite`), then checks:

1. protocol: subclasses :class:`benchmark.adapter.Adapter`, hook signatures match, it
   implements at least one hook, it can be built from its ``defaults``;
2. it runs: every hook returns, ``predict`` gives (batch, classes) finite logits;
3. deterministic: the same cell twice (same seed, each with a *fresh class*: for a file
   adapter its file executed again, so class attributes and module globals start empty)
   gives the same predictions;
4. episodic: a target gives the same predictions with a fresh class and after another
   target ran (as the runner does: a new instance per cell, the class and module shared);
5. reset: ``reset()`` returns every model tensor to its state right after ``attach``, and
   predictions after a reset equal a fresh adapter's;
6. no labels: while any hook runs, reading ``DomainData.labels`` (of any suite's data) or
   loading the check suite's data raises and is recorded -- an adapter sees target data only
   through its :class:`~benchmark.adapter.TargetStream`;
7. finite: no NaN/inf in the model's parameters and buffers after adapting.

It is not a sandbox: it catches the ways an honest mistake reads labels, not deliberate
circumvention (a raw tensor found by walking memory).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from benchmark.adapter import Adapter, TargetStream
from benchmark.plugins import (
    BEHAVIOUR_HOOKS,
    HOOKS,
    adapter_origin,
    file_adapter_name,
    fresh_copy_of_file_class,
    is_file_reference,
    load_file_class,
    protocol_problems,
)
from benchmark.registry import ADAPTERS
from benchmark.specs import _FILE_SPEC, AdapterSpec
from benchmark.suite import DomainData, Recipe, Split, Suite
from benchmark.training import seed_everything, train_source

TARGET_A, TARGET_B = "digits-m", "digits-noisy"
TOLERANCE = 1e-5  # max |difference| of logits that still counts as "the same prediction"


# ---- the tiny suite ------------------------------------------------------------------------
class LabelAccessError(RuntimeError):
    """Raised inside an adapter hook that reads labels or suite data (the check records it)."""


class _Guard:
    """While active, ``DomainData.labels`` of every DomainData raises and is recorded.

    ``labels`` is a plain dataclass field (stored in the instance dict); a data descriptor on
    the class takes precedence over the instance dict, so installing one intercepts every read
    of every DomainData, including data an adapter finds or loads by itself.
    """

    def __init__(self) -> None:
        self.hook: str | None = None
        self.violations: list[str] = []

    @property
    def active(self) -> bool:
        return self.hook is not None

    def record(self, what: str) -> LabelAccessError:
        message = f"{self.hook}() {what}"
        if message not in self.violations:
            self.violations.append(message)
        return LabelAccessError(f"{message}: adapters get target images only through the stream")

    @contextlib.contextmanager
    def watching(self, hook: str) -> Iterator[None]:
        guard = self

        class GuardedLabels:
            def __get__(self, obj: Any, owner: type) -> Any:
                if obj is None:
                    return self
                raise guard.record("read target labels (DomainData.labels)")

            def __set__(self, obj: Any, value: Any) -> None:
                obj.__dict__["labels"] = value

        had = "labels" in vars(DomainData)
        previous = vars(DomainData).get("labels")
        DomainData.labels = GuardedLabels()  # type: ignore[assignment,misc]
        self.hook = hook
        try:
            yield
        finally:
            self.hook = None
            if had:
                DomainData.labels = previous  # type: ignore[misc]
            else:
                del DomainData.labels


class CheckSuite(Suite):
    """Check-only, not registered: a tiny digits suite built in memory in about a second.

    Source: 600 scikit-learn digits at 16x16. Targets (128 test digits each): ``digits-m``,
    blended with photo crops as in the ``digits`` suite, and ``digits-noisy``, low contrast
    with Gaussian noise. The source model is a narrow SmallResNet trained for 5 epochs.
    """

    name = "check-digits"
    source = "digits"
    targets = (TARGET_A, TARGET_B)
    num_classes = 10
    recipe = Recipe(arch="small_resnet", epochs=5, batch_size=32, lr=0.05, augment="shift",
                    arch_kwargs=(("widths", (8, 16, 32)),))
    eval_batch_size = 32
    provides = frozenset({"domain_ids"})
    size, n_train, n_test = 16, 600, 128
    guard: ClassVar[_Guard | None] = None

    def load(self, domain: str, split: Split) -> DomainData:
        guard = type(self).guard
        if guard is not None and guard.active:
            raise guard.record(f"loaded suite data ({domain!r}, {split!r})")
        return _check_data(domain, split)


@functools.cache
def _check_data(domain: str, split: Split) -> DomainData:
    from suites.digits import _digit_splits, blend_with_photos

    images, labels = _digit_splits(CheckSuite.size, 0)[split]
    n = CheckSuite.n_train if split == "train" else CheckSuite.n_test
    images, labels = images[:n], labels[:n]
    if domain == TARGET_A:
        images = blend_with_photos(images, seed=3001 if split == "test" else 3002)
    elif domain == TARGET_B:
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(3003))
        images = (0.25 + 0.4 * images + 0.15 * noise).clamp(0, 1)
    elif domain != CheckSuite.source:
        raise KeyError(domain)
    return DomainData(images.contiguous(), labels)


@functools.cache
def _plain_source_state(seed: int) -> dict[str, torch.Tensor]:
    """The check suite's source model for a seed, trained once per process (about 2 s)."""
    return _train(CheckSuite(), Adapter(), seed)


def _train(suite: CheckSuite, trainer: Adapter, seed: int) -> dict[str, torch.Tensor]:
    seed_everything(seed)
    model = trainer.prepare(suite.build_model())
    train_source(model, suite.load(suite.source, "train"), suite.recipe, seed, trainer,
                 torch.device("cpu"), progress=False)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- running an adapter the way the runner does ---------------------------------------------
class HookError(Exception):
    """A hook raised; ``line`` names the hook, the error and where in the user's code."""

    def __init__(self, hook: str, exc: BaseException, source_file: str | None) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        mine = [f for f in frames if f.filename == source_file] or frames[-1:]
        where = f" at {mine[-1].filename}:{mine[-1].lineno}" if mine else ""
        error = " ".join(f"{type(exc).__name__}: {exc}".split())
        self.exc = exc
        self.line = f"{hook}() raised {error}{where}"
        super().__init__(self.line)


@dataclass
class Cell:
    """One target as the runner would run it: the adapter, its model, its predictions."""

    adapter: Adapter
    model: nn.Module
    logits: torch.Tensor
    attached_state: dict[str, torch.Tensor]
    non_finite: list[str] = field(default_factory=list)


class _Harness:
    """Runs cells like the runner. ``fresh_class()`` gives a class with no history (for a file
    adapter: its file executed again), so a difference between a fresh run and a run after
    another target is state leaking between cells, not chance."""

    def __init__(self, cls: type[Adapter], fresh_class: Callable[[], type[Adapter]],
                 build: Callable[[type[Adapter]], Adapter], source_file: str | None,
                 seed: int, guard: _Guard) -> None:
        self.cls, self.fresh_class, self.build = cls, fresh_class, build
        self.source_file, self.seed, self.guard = source_file, seed, guard
        self.suite = CheckSuite()
        self.state: dict[str, torch.Tensor] | None = None

    def call(self, hook: str, fn: Callable[..., Any], *args: Any) -> Any:
        with self.guard.watching(hook):
            try:
                return fn(*args)
            except Exception as exc:
                raise HookError(hook, exc, self.source_file) from exc

    def source_state(self, adapter: Adapter) -> dict[str, torch.Tensor]:
        if self.state is None:
            if adapter.changes_training:
                try:
                    self.state = _train(self.suite, adapter, self.seed)
                except Exception as exc:
                    raise HookError("training (prepare/extra_loss)", exc, self.source_file) from exc
            else:
                self.state = _plain_source_state(self.seed)
        return self.state

    def stream(self, domain: str) -> TargetStream:
        return TargetStream(self.suite.load(domain, "test").images, self.suite.eval_batch_size)

    def cell(self, domain: str, cls: type[Adapter]) -> Cell:
        """What Runner._evaluate does for one cell: new adapter, fresh model, same seed."""
        adapter = self.call("__init__", self.build, cls)
        state = self.source_state(adapter)
        seed_everything(self.seed)
        model = self.call("prepare", adapter.prepare, self.suite.build_model())
        try:
            model.load_state_dict(state)
        except Exception as exc:
            error = exc if adapter.changes_training else RuntimeError(
                "the trained source model does not fit the model prepare() returned; a "
                "prepare() that changes the model needs `changes_training = True`")
            raise HookError("loading the source model after prepare", error, None) from exc
        self.call("attach", adapter.attach, model)
        attached = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return self.adapt_and_predict(adapter, model, domain, attached)

    def adapt_and_predict(self, adapter: Adapter, model: nn.Module, domain: str,
                          attached: dict[str, torch.Tensor]) -> Cell:
        stream = self.stream(domain)
        self.call("adapt", adapter.adapt, stream)
        outputs = []
        for x in stream:
            logits = self.call("predict", adapter.predict, x)
            expected = (len(x), self.suite.num_classes)
            if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
                raise HookError("predict", ValueError(
                    f"returned {shape} for a batch of {len(x)}; return logits of shape "
                    f"{expected} (batch, classes)"), None)
            outputs.append(logits.detach().float().cpu())
        cell = Cell(adapter, model, torch.cat(outputs), attached)
        cell.non_finite = non_finite_tensors(model)
        if not torch.isfinite(cell.logits).all():
            cell.non_finite.insert(0, "predictions")
        return cell


def non_finite_tensors(model: nn.Module) -> list[str]:
    return [name for name, t in [*model.named_parameters(), *model.named_buffers()]
            if t.is_floating_point() and not torch.isfinite(t).all()]


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    both_nan = a.isnan() & b.isnan()
    diff = (a - b).abs().masked_fill(both_nan, 0)
    return float(diff.nan_to_num(nan=float("inf")).max())


def accuracy(logits: torch.Tensor, domain: str) -> float:
    return float((logits.argmax(1) == _check_data(domain, "test").labels).float().mean())


# ---- the report ------------------------------------------------------------------------------
@dataclass
class CheckReport:
    subject: str
    lines: list[tuple[bool, str]] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.lines) and all(ok for ok, _ in self.lines)

    def ok(self, text: str) -> None:
        self.lines.append((True, text))

    def fail(self, text: str) -> None:
        self.lines.append((False, text))


def check_adapter(reference: str, seed: int = 0,
                  echo: Callable[[str], None] | None = None) -> CheckReport:
    """Check the adapter named by ``reference`` (``path.py:Class(k=v)`` or a registered name).

    Loading errors (missing file, import error, no such class) raise
    :class:`~benchmark.plugins.AdapterLoadError`; everything else is a line of the report.
    """
    echo = echo or (lambda _text: None)
    cls, overrides, source_file, name, origin = _resolve(reference)
    report = CheckReport(f"{cls.__name__} ({origin}), name {name!r}")
    echo(f"checking {report.subject} on the tiny check suite")

    problems = protocol_problems(cls)
    if not problems and not any(getattr(cls, h) is not getattr(Adapter, h)
                                for h in BEHAVIOUR_HOOKS):
        problems.append(_no_hook_message(cls))
    for problem in problems:
        report.fail(f"protocol: {problem}")
    if problems:
        return report
    overridden = [h for h in HOOKS if getattr(cls, h) is not getattr(Adapter, h)]
    report.ok(f"protocol: subclasses Adapter; overrides {', '.join(overridden)}; "
              "signatures match")
    if not ("classification" in cls.tasks and cls.requires <= CheckSuite.provides):
        report.fail(f"runs: the check suite is classification and provides "
                    f"{sorted(CheckSuite.provides)}; {cls.__name__} declares tasks "
                    f"{sorted(cls.tasks)} and requires {sorted(cls.requires)}")
        return report

    def build(adapter_cls: type[Adapter]) -> Adapter:
        adapter = adapter_cls(**overrides)
        if not isinstance(getattr(adapter, "hparams", None), dict):
            raise TypeError("the instance has no hparams: call super().__init__(**hparams)")
        adapter_cls.name = name  # as the registry would
        return adapter

    def fresh_class() -> type[Adapter]:
        if source_file is None or not is_file_reference(reference):
            return cls  # a registered class cannot be re-imported; best effort
        return fresh_copy_of_file_class(Path(source_file), cls.__name__)

    guard = _Guard()
    CheckSuite.guard = guard
    threads = torch.get_num_threads()
    # The check's model is tiny: one thread is fastest, and several threads on a busy
    # machine are ten times slower (measured: 4.6 s vs 42 s to train on 2 loaded cores).
    torch.set_num_threads(1)
    try:
        harness = _Harness(cls, fresh_class, build, source_file, seed, guard)
        _run_checks(harness, report, reference)
    finally:
        CheckSuite.guard = None
        torch.set_num_threads(threads)
    return report


def _resolve(reference: str) -> tuple[type, dict[str, Any], str | None, str, str]:
    """(class, hyper-parameters, its source file, adapter name, origin) for a reference."""
    if is_file_reference(reference):
        match = _FILE_SPEC.match(reference)
        file_reference, inner = match.groups() if match else (reference, None)
        cls, path, _ = load_file_class(file_reference)
        overrides = dict(AdapterSpec.parse(f"x({inner})").overrides) if inner else {}
        name = file_adapter_name(cls)
        return cls, overrides, str(path), name, str(path)
    spec = AdapterSpec.parse(reference)
    cls = ADAPTERS.get(spec.name)
    try:
        source_file = inspect.getsourcefile(cls)
    except TypeError:
        source_file = None
    return cls, dict(spec.overrides), source_file, spec.name, adapter_origin(cls)


def _no_hook_message(cls: type) -> str:
    own = [n for n, v in vars(cls).items() if callable(v) and not n.startswith("_")]
    hints = []
    for method in own:
        close = difflib.get_close_matches(method, HOOKS, n=1, cutoff=0.6)
        if close:
            hints.append(f"{method} -> {close[0]}?")
    hint = f" (misspelt? {', '.join(hints)})" if hints else ""
    return (f"{cls.__name__} implements none of the hooks {', '.join(BEHAVIOUR_HOOKS)}, so it "
            f"would score exactly like `source`; implement at least one{hint}")


def _run_checks(harness: _Harness, report: CheckReport, reference: str) -> None:
    non_finite: dict[str, list[str]] = {}
    try:
        start = time.perf_counter()
        harness.source_state(harness.call("__init__", harness.build, harness.cls))
        training = time.perf_counter() - start
        start = time.perf_counter()
        b_first = harness.cell(TARGET_B, harness.fresh_class())
        non_finite[f"{TARGET_B}"] = b_first.non_finite
        b_again = harness.cell(TARGET_B, harness.fresh_class())
        a_cell = harness.cell(TARGET_A, harness.cls)
        non_finite[TARGET_A] = a_cell.non_finite
        b_after_a = harness.cell(TARGET_B, harness.cls)
        # reset(): the cell that adapted to A returns to its attached state, then does B.
        harness.call("reset", a_cell.adapter.reset)
        changed = [k for k, v in a_cell.model.state_dict().items()
                   if not _same_tensor(v, a_cell.attached_state[k])]
        seed_everything(harness.seed)
        b_after_reset = harness.adapt_and_predict(a_cell.adapter, a_cell.model, TARGET_B,
                                                  a_cell.attached_state)
    except HookError as exc:
        _report_labels(harness.guard, report)
        if not (isinstance(exc.exc, LabelAccessError) and harness.guard.violations):
            report.fail(f"runs: {exc.line}; fix that so a run completes")
        return
    elapsed = time.perf_counter() - start
    report.ok(f"runs: attach, adapt, predict on 2 targets x {CheckSuite.n_test} images, "
              f"batch {CheckSuite.eval_batch_size}")

    drift = max_difference(b_first.logits, b_again.logits)
    deterministic = drift <= TOLERANCE
    if deterministic:
        report.ok(f"deterministic: the same cell twice gives the same predictions (seed "
                  f"{harness.seed})")
    else:
        report.fail(f"deterministic: the same cell run twice gives different predictions (max "
                    f"|logit difference| {drift:.3g}); draw randomness from torch (the runner "
                    "seeds it per cell) and keep no state outside the adapter instance")

    episodic = deterministic
    if deterministic:
        drift = max_difference(b_first.logits, b_after_a.logits)
        episodic = drift <= TOLERANCE
        if episodic:
            report.ok(f"episodic: {TARGET_B} gives the same predictions fresh and after "
                      f"{TARGET_A} ran")
        else:
            report.fail(f"episodic: predictions on {TARGET_B} change after {TARGET_A} ran (max "
                        f"|logit difference| {drift:.3g}); keep per-target state on the instance"
                        ", not in class attributes, globals or the tensors given to you")

    if changed:
        report.fail(f"reset: after reset() {len(changed)} model tensor(s) differ from the state "
                    f"right after attach (first: {changed[0]}); restore them in reset(), e.g. "
                    "call super().reset()")
    elif episodic:  # otherwise a difference after reset could be that leak, not reset
        drift = max_difference(b_first.logits, b_after_reset.logits)
        if drift <= TOLERANCE:
            report.ok("reset: reset() restores the attached model state and a reset adapter "
                      "predicts like a fresh one")
        else:
            report.fail(f"reset: after reset() predictions on {TARGET_B} differ from a fresh "
                        f"adapter's (max |logit difference| {drift:.3g}); reset() must also clear"
                        " the adapter's own state (optimizer, running estimates), e.g. by "
                        "re-creating it in setup()")
    else:
        report.ok("reset: reset() restores the attached model state")

    if not _report_labels(harness.guard, report):
        report.ok("labels: never read target labels or suite data outside the stream")

    bad = [(domain, names) for domain, names in non_finite.items() if names]
    bad += [("after reset", b_after_reset.non_finite)] if b_after_reset.non_finite else []
    if bad:
        domain, names = bad[0]
        report.fail(f"finite: NaN/inf in {names[0]}" + (f" and {len(names) - 1} more tensor(s)"
                    if len(names) > 1 else "") + f" after adapting to {domain}; guard "
                    "divisions and logs with an eps, lower the step size")
    else:
        report.ok("finite: no NaN/inf in predictions, parameters or buffers")

    if report.passed:
        source = _source_accuracies(harness)
        report.summary.append(
            "tiny-suite accuracy (a smoke test, not a benchmark number): " + ", ".join(
                f"{d} {100 * accuracy(c.logits, d):.1f}% (source model {100 * source[d]:.1f}%)"
                for d, c in ((TARGET_A, a_cell), (TARGET_B, b_first))))
        report.summary.append(f"time: {elapsed:.1f} s for 5 target cells, after {training:.1f} s"
                              " to train the tiny source model")
        report.summary.append("score it on a real suite (and compare with the leaderboard):")
        report.summary.append(f"  python run.py run --suite digits --adapters "
                              f"source,{_quote(reference)} --seeds 3")


def _report_labels(guard: _Guard, report: CheckReport) -> bool:
    for violation in guard.violations:
        report.fail(f"labels: {violation}; an adapter may use only the images its "
                    "TargetStream yields -- remove that access")
    return bool(guard.violations)


def _source_accuracies(harness: _Harness) -> dict[str, float]:
    model = harness.suite.build_model()
    model.load_state_dict(_plain_source_state(harness.seed))
    model.eval()
    with torch.no_grad():
        return {d: accuracy(torch.cat([model(x) for x in harness.stream(d)]), d)
                for d in CheckSuite.targets}


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():  # NaN where the attached state had NaN counts as restored
        return bool(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))
    return bool(torch.equal(a, b))


def _quote(reference: str) -> str:
    return f"'{reference}'" if any(c in reference for c in " ()") else reference


def format_report(report: CheckReport, elapsed: float) -> str:
    lines = [f"  {'ok  ' if ok else 'FAIL'}  {text}" for ok, text in report.lines]
    if report.passed:
        lines.append(f"passed in {elapsed:.1f} s.")
        lines += report.summary
    else:
        failures = sum(not ok for ok, _ in report.lines)
        lines.append(f"{failures} problem(s) found in {elapsed:.1f} s; fix the FAIL lines above "
                     "and run the check again.")
    return "\n".join(lines)

