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
from benchmark.suite import DomainData

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "bn_ema.py"

HEADER = """
import gc
import inspect
import random

import torch

from benchmark.adapter import Adapter
from benchmark.suite import DomainData
"""

BROKEN = {
    # reads the labels of whatever DomainData it finds in memory, hiding the error it gets
    "reads labels": ("""
        class PeeksAtLabels(Adapter):
            def adapt(self, stream):
                for obj in gc.get_objects():
                    if type(obj) is DomainData:
                        try:
                            self.labels = obj.labels
                        except Exception:
                            pass
        """, "labels: adapt() read target labels (DomainData.labels)"),
    # walks up the call stack to the suite and loads the target split itself
    "loads suite data": ("""
        class LoadsTheSuite(Adapter):
            def adapt(self, stream):
                for frame in inspect.stack():
                    suite = frame.frame.f_locals.get("self")
                    if hasattr(suite, "suite"):
                        self.data = suite.suite.load("digits-m", "test")
        """, "labels: adapt() loaded suite data ('digits-m', 'test')"),
    "not deterministic": ("""
        class Noisy(Adapter):
            def predict(self, x):
                return super().predict(x) + random.random()
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
        """, "protocol: Misspelt implements none of the hooks prepare, extra_loss, setup, "
             "adapt, predict, so it would score exactly like `source`; implement at least one "
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
        """, "runs: predict() raised ValueError: returned (320,) for a batch of 32"),
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
    assert "labels" not in vars(DomainData)  # the label guard is removed again


@pytest.mark.parametrize("case", list(BROKEN))
def test_check_fails_a_broken_adapter_with_the_line_that_says_what_to_fix(case, tmp_path):
    body, expected, *detail = BROKEN[case]
    report = check_adapter(adapter_file(tmp_path, body))
    failures = [text for ok, text in report.lines if not ok]
    assert not report.passed
    assert len(failures) == 1, failures  # one problem, one line -- not a cascade
    assert failures[0].startswith(expected), failures[0]
    assert all(part in failures[0] for part in detail), failures[0]
    assert "labels" not in vars(DomainData)


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
