"""`run.py check`: passes a good adapter, and fails each kind of broken one with the line that
says what to fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from benchmark.check import check_adapter
from benchmark.cli import main
from benchmark.registry import ADAPTERS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "bn_ema.py"

HEADER = """
import gc
import os

import torch

from benchmark.adapter import Adapter
from benchmark.suite import DomainData
"""

BROKEN = {
    # builds the suite itself and loads the target split
    "loads suite data": ("""
        class LoadsTheSuite(Adapter):
            def adapt(self, stream):
                from benchmark.registry import SUITES

                self.data = SUITES.get("digits")().load("digits-m", "test")
        """, "labels: adapt() loaded suite data (Digits, 'digits-m', 'test')"),
    "not deterministic": ("""
        class Noisy(Adapter):
            def predict(self, x):
                return super().predict(x) + os.urandom(1)[0]
        """, "deterministic: the same cell run twice gives different predictions"),
    "reset does not reset": ("""
        class NoReset(Adapter):
            def adapt(self, stream):
                for m in self.model.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.running_mean += 0.1

            def reset(self):
                pass
        """, "reset: after reset() ",
        "model tensor(s) differ from the state right after attach (first: stem.1.running_mean)"),
    "reset keeps own state": ("""
        class KeepsCounter(Adapter):
            def setup(self, model):
                model.eval()
                if not hasattr(self, "seen"):
                    self.seen = 0

            def predict(self, x):
                self.seen += 1
                return super().predict(x) * self.seen
        """, "reset: after reset() predictions on digits-noisy differ from a fresh adapter's"),
    "state leaks between cells": ("""
        FIRST = []

        class RemembersFirstTarget(Adapter):
            def adapt(self, stream):
                if not FIRST:
                    FIRST.append(next(iter(stream)).mean())

            def predict(self, x):
                return super().predict(x) * FIRST[0]
        """, "episodic: predictions on digits-noisy change after digits-m ran"),
    "produces NaN": ("""
        class MakesNaN(Adapter):
            def adapt(self, stream):
                for m in self.model.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.running_var.zero_().div_(0.0)
        """, "finite: NaN/inf in predictions"),
    "missing a required method": ("""
        class Misspelt(Adapter):
            def predicts(self, x):
                return x
        """, "protocol: Misspelt implements none of the hooks prepare, extra_loss, set_context, "
             "target_loss, finish_training, setup, use_source, adapt, predict, infer, so it "
             "would score exactly like `source`; implement at least one "
             "(misspelt? predicts -> predict?)"),
    "not an adapter": ("""
        class Plain:
            def predict(self, x):
                return x
        """, "protocol: Plain does not subclass benchmark.adapter.Adapter"),
    "wrong signature": ("""
        class WrongPredict(Adapter):
            def predict(self):
                return None
        """, "protocol: WrongPredict.predict(self) does not match the protocol"),
    "raises": ("""
        class Raises(Adapter):
            def adapt(self, stream):
                raise ValueError("boom")
        """, "runs: adapt() raised ValueError: boom at "),
    "wrong output shape": ("""
        class Flat(Adapter):
            def predict(self, x):
                return super().predict(x).flatten()
        """, "runs: predict() returned (320,) for a batch of 32"),
    # set_context is part of the lifecycle at test time too
    "breaks in set_context": ("""
        class NeedsOneCamera(Adapter):
            def set_context(self, model, context):
                if context["role"] == "source":
                    raise RuntimeError("no camera branch for the source split")
        """, "runs: set_context() raised RuntimeError: no camera branch for the source split"),
    "named like a built-in": ("""
        class Tent(Adapter):
            def adapt(self, stream):
                pass
        """, "protocol: its name 'tent' is taken by built-in"),
}


@pytest.fixture(autouse=True)
def clean_registry():
    names, threads = set(ADAPTERS), torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    for name in set(ADAPTERS) - names:
        ADAPTERS.unregister(name)


def adapter_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "adapter.py"
    path.write_text(HEADER + textwrap.dedent(body))
    class_name = body.split("class ")[1].split("(")[0].split(":")[0]
    return f"{path}:{class_name}"


def test_check_passes_on_the_example_and_prints_how_to_score_it(tmp_path, capsys):
    reference = f"{EXAMPLE}:BNStatsEMA"
    assert main(["check", reference]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "passed in" in out
    for what in ("protocol", "runs", "deterministic", "episodic", "reset", "labels", "finite"):
        assert f"  ok    {what}:" in out
    assert f"python run.py run --suite digits --adapters source,{reference} --seeds 3" in out


@pytest.mark.parametrize("case", list(BROKEN))
def test_check_fails_a_broken_adapter_with_the_line_that_says_what_to_fix(case, tmp_path):
    body, expected, *detail = BROKEN[case]
    report = check_adapter(adapter_file(tmp_path, body))
    failures = [text for ok, text in report.lines if not ok]
    assert not report.passed
    assert len(failures) == 1, failures  # one problem, one line -- not a cascade
    assert failures[0].startswith(expected), failures[0]
    assert all(part in failures[0] for part in detail), failures[0]


def test_a_label_hunter_finds_nothing_in_its_process(tmp_path):
    """The adapter process holds no labelled data: a gc walk finds nothing, so it passes
    and predicts like the source model (its own accuracy, not 100%)."""
    body = """
        class HuntsLabels(Adapter):
            def adapt(self, stream):
                self.found = [o for o in gc.get_objects() if type(o) is DomainData]
                if self.found:
                    raise RuntimeError(f"found {len(self.found)} labelled splits")
        """
    report = check_adapter(adapter_file(tmp_path, body))
    assert report.passed, report.lines
    assert "100.0%" not in report.summary[0]


def test_camera_batches_and_da_training_run_as_in_a_run(tmp_path):
    """An adapter that trains on single-camera batches gets one source stream per camera
    (its set_context sees the camera), and a da-only adapter trains on target images."""
    body = """
        class PerCamera(Adapter):
            batch_key = "camera"

            def set_context(self, model, context):
                if context["role"] == "source" and not isinstance(context.get("camera"), int):
                    raise RuntimeError(f"not grouped by camera: {sorted(context)}")
        """
    assert check_adapter(adapter_file(tmp_path, body)).passed
    da_only = """
        class TargetEntropy(Adapter):
            setting = "da"
            changes_training = True

            def target_loss(self, model, x):
                p = model(x).softmax(1)
                return -(p * p.clamp_min(1e-8).log()).sum(1).mean() * 0.1
        """
    report = check_adapter(adapter_file(tmp_path, da_only))
    assert report.passed, report.lines
    assert "episodic, noniid" in report.lines[1][1]


def test_check_exit_codes_and_a_load_error_is_one_line(tmp_path, capsys):
    body, _ = BROKEN["produces NaN"]
    assert main(["check", adapter_file(tmp_path, body)]) == 1
    out = capsys.readouterr().out
    assert sum(line.startswith("  FAIL") for line in out.splitlines()) == 1

    assert main(["check", f"{tmp_path / 'adapter.py'}:NoSuchClass"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no class 'NoSuchClass'" in err


def test_check_accepts_registered_names_and_hyperparameters():
    assert check_adapter("adabn").passed
    report = check_adapter("tent(lr=1e-10)")
    assert report.passed
