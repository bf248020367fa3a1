"""``run.py check``: is an adapter class ready to be scored? A conformance kit, CPU, seconds.

It loads the class (a file ``path.py:Class``, optionally with ``(k=v)`` hyper-parameters, or
a registered name) and runs it through the runner itself -- :class:`~benchmark.engine.
runner.Runner` and the one evaluation function, in an isolated adapter process, with
``set_context``, ``batch_key`` grouping and every protocol that applies -- on a tiny
version of the ``digits`` suite (:class:`CheckSuite`), then checks:

1. protocol: subclasses :class:`benchmark.adapter.Adapter`, hook signatures match, it
   implements at least one behaviour hook (:data:`benchmark.adapter.BEHAVIOUR_HOOKS`), it
   can be built from its ``defaults``, and its name is not another adapter's;
2. it runs: training (for training-time methods, with the target's unlabeled images for
   ``da``), every protocol, and the source domain's test split, whose images come from
   two cameras (an adapter with ``batch_key = "camera"`` gets one stream per camera, as in
   a run); ``predict`` gives (batch, classes) finite logits;
3. deterministic: the same cell twice, each in a new adapter process, gives the same
   predictions;
4. episodic: a target gives the same predictions in a new process and after another target
   ran in the same process (state kept in class attributes or module globals leaks);
5. reset: ``reset()`` returns every model tensor to its state right after ``attach``, and
   the stream replayed after a reset is predicted as by a fresh adapter;
6. labels: the adapter process holds no labels, and loading suite data from a hook raises
   there -- the check reports the hook that tried;
7. finite: no NaN/inf in the predictions, or in parameters and buffers after adapting.
"""

from __future__ import annotations

import atexit
import difflib
import functools
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmark.adapter import BEHAVIOUR_HOOKS, HOOKS, Adapter
from benchmark.engine.isolation import AdapterProcessError
from benchmark.engine.runner import Job, RunConfig, Runner, applicable
from benchmark.errors import ShiftbenchError
from benchmark.plugins import (
    adapter_origin,
    file_adapter_name,
    is_file_reference,
    load_file_class,
    protocol_problems,
)
from benchmark.registry import ADAPTERS, SUITES
from benchmark.specs import _FILE_SPEC, AdapterSpec
from benchmark.suite import DomainData, Recipe, Split, Suite

TARGET_A, TARGET_B = "digits-m", "digits-noisy"
TOLERANCE = 1e-5  # max |difference| of logits that still counts as "the same prediction"
CAMERAS = {"digits": (0, 1), TARGET_A: (2,), TARGET_B: (3,)}  # side information per domain


# ---- the tiny suite ------------------------------------------------------------------------
class CheckSuite(Suite):
    """Check-only, not registered: a tiny digits suite built in memory in about a second.

    Source: 600 scikit-learn digits at 16x16, half from camera 0 and half from camera 1
    (``extra["camera"]``, alternating). Targets (128 test digits each, one camera each):
    ``digits-m``, blended with photo crops as in the ``digits`` suite, and ``digits-noisy``,
    low contrast with Gaussian noise. The source model is a narrow SmallResNet trained for 5
    epochs.
    """

    name = "check-digits"
    source = "digits"
    targets = (TARGET_A, TARGET_B)
    num_classes = 10
    recipe = Recipe(arch="small_resnet", epochs=5, batch_size=32, lr=0.05, augment="shift",
                    arch_kwargs=(("widths", (8, 16, 32)),))
    eval_batch_size = 32
    provides = frozenset({"domain_ids", "camera_ids"})
    size, n_train, n_test = 16, 600, 128

    def load(self, domain: str, split: Split) -> DomainData:
        return _check_data(domain, split)

    def data_paths(self) -> list[Path]:
        from suites._photos import package_data_paths

        return package_data_paths()


@functools.cache
def _check_data(domain: str, split: Split) -> DomainData:
    from suites.digits import blend_with_photos, digit_splits

    images, labels = digit_splits(CheckSuite.size, 0)[split]
    n = CheckSuite.n_train if split == "train" else CheckSuite.n_test
    images, labels = images[:n], labels[:n]
    if domain == TARGET_A:
        images = blend_with_photos(images, seed=3001 if split == "test" else 3002)
    elif domain == TARGET_B:
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(3003))
        images = (0.25 + 0.4 * images + 0.15 * noise).clamp(0, 1)
    elif domain != CheckSuite.source:
        raise KeyError(domain)
    cameras = torch.tensor(CAMERAS[domain])
    camera = cameras[torch.arange(n) % len(cameras)]
    return DomainData(images.contiguous(), labels, {"camera": camera})


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


class _Stop(Exception):
    """A failure that makes the remaining checks meaningless (already reported)."""


def check_adapter(reference: str, seed: int = 0,
                  echo: Callable[[str], None] | None = None) -> CheckReport:
    """Check the adapter named by ``reference`` (``path.py:Class(k=v)`` or a registered name).

    Loading errors (missing file, import error, no such class) raise
    :class:`~benchmark.plugins.AdapterLoadError`; everything else is a line of the report.
    """
    echo = echo or (lambda _text: None)
    cls, name, origin = _resolve(reference)
    report = CheckReport(f"{cls.__name__} ({origin}), name {name!r}")
    echo(f"checking {report.subject} on the tiny check suite")

    problems = protocol_problems(cls)
    if not problems and not any(getattr(cls, h) is not getattr(Adapter, h)
                                for h in BEHAVIOUR_HOOKS):
        problems.append(_no_hook_message(cls))
    if name in ADAPTERS and is_file_reference(reference) \
            and adapter_origin(ADAPTERS.get(name)) != origin:
        problems.append(f"its name {name!r} is taken by {adapter_origin(ADAPTERS.get(name))}, "
                        "so a run would refuse it; give your class another `name = \"...\"`")
    for problem in problems:
        report.fail(f"protocol: {problem}")
    if problems:
        return report
    overridden = [h for h in HOOKS if getattr(cls, h) is not getattr(Adapter, h)]
    report.ok(f"protocol: subclasses Adapter; overrides {', '.join(overridden)}; "
              "signatures match")
    if not applicable(cls, CheckSuite):
        report.fail(f"runs: the check suite is classification and provides "
                    f"{sorted(CheckSuite.provides)}; {cls.__name__} declares tasks "
                    f"{sorted(cls.tasks)} and requires {sorted(cls.requires)}")
        return report
    # a da adapter has one model per target: not the protocols that stream across targets
    protocols = ["episodic", "noniid"] if cls.setting.startswith("da") \
        else ["episodic", "continual", "mixed", "noniid"]
    try:
        _run_checks(AdapterSpec.parse(reference), seed, _store(), protocols, report)
        if report.passed:
            report.summary.append("score it on a real suite (and compare with the leaderboard):")
            report.summary.append(f"  python run.py run --suite {_real_suite(cls)} --adapters "
                                  f"source,{_quote(AdapterSpec.parse(reference).text)} --seeds 3")
    except _Stop:
        pass
    return report


@functools.cache
def _store() -> Path:
    """Where check keeps its tiny source models: one temporary folder per process, so that
    several checks in one process train the plain model once (checkpoints are keyed by what
    trained them, including a training-time adapter's code, and verified before use)."""
    folder = Path(tempfile.mkdtemp(prefix="shiftbench-check-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _resolve(reference: str) -> tuple[type, str, str]:
    """(class, adapter name, origin) for a reference; the class is only inspected here, it
    runs in adapter processes."""
    if is_file_reference(reference):
        match = _FILE_SPEC.match(reference)
        file_reference = match.group(1) if match else reference
        cls, path, _ = load_file_class(file_reference)
        return cls, file_adapter_name(cls), str(path)
    spec = AdapterSpec.parse(reference)
    cls = ADAPTERS.get(spec.name)
    return cls, spec.name, adapter_origin(cls)


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


class _Cells:
    """The runner on the check suite, and a way to evaluate one job of it."""

    def __init__(self, spec: AdapterSpec, seed: int, results: Path, protocols: list[str],
                 report: CheckReport):
        self.spec, self.seed, self.report, self.protocols = spec, seed, report, protocols
        self.runner = self._runner(results)
        self.info = self.runner.infos[spec]
        self.jobs = self.runner.plan_jobs()

    def _runner(self, results: Path) -> Runner:
        config = RunConfig(suite=CheckSuite.name, adapters=[self.spec, AdapterSpec("source")],
                           seeds=[self.seed], protocols=self.protocols, results=results,
                           leaderboards=results / "boards", progress=False)
        try:
            return Runner(config, suite=CheckSuite())
        except ShiftbenchError as exc:  # describing it failed: __init__ or prepare raised
            self.report.fail(f"runs: {str(exc).split(': ', 1)[-1]}; fix that so a run "
                             "completes")
            raise _Stop from None

    def job(self, domain: str, protocol: str = "episodic", spec: AdapterSpec | None = None
            ) -> Job:
        spec = spec or self.spec
        return next(j for j in self.jobs if j.spec == spec and j.protocol == protocol
                    and domain in [c.domain for c in j.cells])

    def run(self, job: Job, **options: Any) -> tuple[list[dict[str, Any]], dict[str, Any],
                                                     list[torch.Tensor]]:
        """(cell results, the adapter side's report, each cell's logits in dataset order)"""
        """Evaluate a job as the runner does; any failure becomes the report's line."""
        runner, info = self.runner, self.runner.infos[job.spec]
        try:
            target = runner.training_target(info, job.cells[0].domain)
            state, _ = runner.provisioner.state(
                job.spec, info.changes_training,
                runner.checkpoint_identity(info, self.seed, target), self.seed, target)
            results, side = runner.evaluate(info, state, job, keep_logits=True, **options)
            logits = [r.pop("logits") for r in results]
        except AdapterProcessError as exc:
            self.report.fail(_adapter_failure(exc))
            raise _Stop from None
        except FloatingPointError as exc:
            self.report.fail(f"finite: NaN/inf in predictions ({exc}); guard divisions and "
                             "logs with an eps, lower the step size")
            raise _Stop from None
        except Exception as exc:  # the scoring side refused what the adapter returned
            self.report.fail(f"runs: {' '.join(str(exc).split())}")
            raise _Stop from None
        return results, side, logits


def _adapter_failure(exc: AdapterProcessError) -> str:
    if exc.kind == "LabelAccessError":
        what = exc.message.split(";")[0].removeprefix("the adapter ")
        return (f"labels: {exc.hook or 'a hook'}() {what}; an adapter may use only the images "
                "its TargetStream yields -- remove that access")
    return f"runs: {exc}; fix that so a run completes"


def _run_checks(spec: AdapterSpec, seed: int, results: Path, protocols: list[str],
                report: CheckReport) -> None:
    start = time.perf_counter()
    cells = _Cells(spec, seed, results, protocols, report)
    # every protocol, and the source split with its two cameras (batch_key grouping)
    for protocol in cells.protocols:
        for job in (j for j in cells.jobs if j.spec == spec and j.protocol == protocol):
            cells.run(job)
    report.ok(f"runs: {', '.join(cells.protocols)} on 2 targets x {CheckSuite.n_test} images "
              f"and the source split (2 cameras), batch {CheckSuite.eval_batch_size}")

    b_first, side_b, logits_b = cells.run(cells.job(TARGET_B), fresh=True)
    _, _, logits_b_again = cells.run(cells.job(TARGET_B), fresh=True)
    a, side_a, _ = cells.run(cells.job(TARGET_A), fresh=True)
    _, _, logits_b_after_a = cells.run(cells.job(TARGET_B))  # same process as A
    _, side_reset, _ = cells.run(cells.job(TARGET_B), fresh=True, probe_reset=True)
    logits_replayed = side_reset["replay_logits"]

    drift = max_difference(logits_b[0], logits_b_again[0])
    deterministic = drift <= TOLERANCE
    if deterministic:
        report.ok(f"deterministic: the same cell twice gives the same predictions (seed {seed})")
    else:
        report.fail(f"deterministic: the same cell run twice gives different predictions (max "
                    f"|logit difference| {drift:.3g}); draw randomness from torch (the runner "
                    "seeds it per cell) and keep no state outside the adapter instance")

    episodic = deterministic
    if deterministic:
        drift = max_difference(logits_b[0], logits_b_after_a[0])
        episodic = drift <= TOLERANCE
        if episodic:
            report.ok(f"episodic: {TARGET_B} gives the same predictions fresh and after "
                      f"{TARGET_A} ran")
        else:
            report.fail(f"episodic: predictions on {TARGET_B} change after {TARGET_A} ran (max "
                        f"|logit difference| {drift:.3g}); keep per-target state on the instance"
                        ", not in class attributes, globals or the tensors given to you")

    changed = side_reset.get("reset_changed", [])
    if changed:
        report.fail(f"reset: after reset() {len(changed)} model tensor(s) differ from the state "
                    f"right after attach (first: {changed[0]}); restore them in reset(), e.g. "
                    "call super().reset()")
    elif episodic:  # otherwise a difference after reset could be that leak, not reset
        drift = max_difference(logits_b[0], logits_replayed)
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

    report.ok("labels: ran in an adapter process that holds no labels, and never tried to "
              "load suite data")
    if cells.info.source_images:
        served = side_b.get("source_images_served", 0)
        expected = min(cells.info.source_images, CheckSuite.n_train)
        if served >= expected:
            report.ok(f"source: use_source() read {expected} unlabeled source images (images "
                      f"only); its rows carry setting {cells.info.setting!r}, ranked apart from "
                      "source-free methods")
        else:
            report.fail(f"source: setting {cells.info.setting!r} promises source images, but "
                        f"use_source() read {served} of the {expected} offered; read the stream "
                        "or declare setting 'tta'")

    bad = [(d, s.get(key, [])) for d, s in ((TARGET_B, side_b), (TARGET_A, side_a),
                                            ("after reset", side_reset))
           for key in ("non_finite", "non_finite_after_reset") if s.get(key)]
    if bad:
        domain, names = bad[0]
        report.fail(f"finite: NaN/inf in {names[0]}" + (f" and {len(names) - 1} more tensor(s)"
                    if len(names) > 1 else "") + f" after adapting to {domain}; guard "
                    "divisions and logs with an eps, lower the step size")
    else:
        report.ok("finite: no NaN/inf in predictions, parameters or buffers")

    if report.passed:
        source = {d: cells.run(cells.job(d, spec=AdapterSpec("source")))[0][0]["score"]
                  for d in CheckSuite.targets}
        mine = {TARGET_A: a[0]["score"], TARGET_B: b_first[0]["score"]}
        report.summary.append(
            "tiny-suite accuracy (a smoke test, not a benchmark number): " + ", ".join(
                f"{d} {mine[d]:.1f}% (source model {source[d]:.1f}%)" for d in CheckSuite.targets))
        report.summary.append(f"time: {time.perf_counter() - start:.1f} s, source models "
                              "trained included")


def _real_suite(cls: type[Adapter]) -> str:
    """The default suite, or the first built-in one that provides what the adapter needs
    (camera ids: digits-cams)."""
    names = ["digits", *(n for n, c in SUITES.items() if c.__module__.startswith("suites."))]
    return next((n for n in names if applicable(cls, SUITES.get(n))), "digits")


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    both_nan = a.isnan() & b.isnan()
    diff = (a - b).abs().masked_fill(both_nan, 0)
    return float(diff.nan_to_num(nan=float("inf")).max())


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


