"""Hostile adapters for the isolation tests, loaded as file adapters (``path.py:Class``).

Each tries one way to obtain target labels or to change scores. When an attack finds the
labels of its stream it predicts them (a perfect score, so the test sees it); otherwise it
predicts like the source model, so its row must equal ``source``'s.
"""

from __future__ import annotations

import gc
import inspect
import json
import os
import sys
from pathlib import Path

import torch

from benchmark.adapter import Adapter, TargetStream


def _one_hot(labels: torch.Tensor, classes: int = 10) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels.long().reshape(-1), classes).float() * 10


class _Cheater(Adapter):
    """Predicts stolen labels for the stream, if it found any, else the model's logits."""

    def setup(self, model: torch.nn.Module) -> None:
        model.eval()
        self.stolen: torch.Tensor | None = None
        self.seen = 0

    def adapt(self, stream: TargetStream) -> None:
        self.seen = 0
        found = self.steal(stream.num_examples)
        self.stolen = found if found is not None and len(found) == stream.num_examples \
            else None

    def steal(self, n: int) -> torch.Tensor | None:
        return None

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.stolen is not None:
            out = _one_hot(self.stolen[self.seen:self.seen + len(x)])
            self.seen += len(x)
            return out
        return super().predict(x)


def _labels_of(obj: object, n: int) -> torch.Tensor | None:
    labels = getattr(obj, "labels", None) if not isinstance(obj, type) else None
    if isinstance(labels, torch.Tensor) and labels.ndim == 1 and len(labels) == n:
        return labels
    return None


class GcWalker(_Cheater):
    """Walks every object the garbage collector tracks, looking for labelled data."""

    name = "hostile-gc"

    def steal(self, n: int) -> torch.Tensor | None:
        for obj in gc.get_objects():
            try:
                found = _labels_of(obj, n)
            except Exception:
                continue
            if found is not None:
                return found
        return None


class FrameWalker(_Cheater):
    """Walks up the call stack (and every thread's stack) through the callers' locals."""

    name = "hostile-frames"

    def steal(self, n: int) -> torch.Tensor | None:
        frames = [f.frame for f in inspect.stack()] + list(sys._current_frames().values())
        for frame in frames:
            while frame is not None:
                for value in list(frame.f_locals.values()):
                    for candidate in (value, *getattr(value, "cells", [])):
                        found = _labels_of(getattr(candidate, "data", candidate), n)
                        if found is not None:
                            return found
                frame = frame.f_back
        return None


class FileReader(_Cheater):
    """Reads the data files: a label file under the data root, and the embedded suite's
    own source files (scikit-learn's digits) rebuilt by calling the suite's internals."""

    name = "hostile-files"

    def steal(self, n: int) -> torch.Tensor | None:
        root = os.environ.get("SHIFTBENCH_TEST_DATA_ROOT")
        if root:
            try:
                labels = json.loads((Path(root) / "labels.json").read_text())
                if len(labels) == n:
                    return torch.tensor(labels)
            except OSError:
                pass
        try:
            from suites.digits import Digits, digit_splits

            _, labels = digit_splits(Digits.size, 0)["test"]
            return labels if len(labels) == n else None
        except Exception:
            return None


class ResultsWriter(_Cheater):
    """Overwrites every stored cell it can find with a perfect score (and a valid digest)."""

    name = "hostile-writer"

    def steal(self, n: int) -> torch.Tensor | None:
        from benchmark.store import cell_digest

        results = os.environ.get("SHIFTBENCH_TEST_RESULTS")
        for path in Path(results or "/nonexistent").glob("cells/*/*.json"):
            try:
                cell = json.loads(path.read_text())
                cell["score"] = 100.0
                cell["digest"] = cell_digest(cell)
                path.write_text(json.dumps(cell))
            except OSError:
                return None
        return None


class Patcher(_Cheater):
    """Monkey-patches the metric and the runner from inside a hook, so that every score
    computed afterwards, its own and other adapters', would be 100."""

    name = "hostile-patcher"

    def steal(self, n: int) -> torch.Tensor | None:
        import benchmark.metrics as metrics
        from benchmark.engine import evaluate

        def perfect(self: object) -> dict:
            return {"score": 100.0}

        for cls in vars(metrics).values():
            if isinstance(cls, type) and hasattr(cls, "result"):
                cls.result = perfect
        evaluate._result = lambda metric, n, elapsed, peak: {  # type: ignore[assignment]
            "score": 100.0, "metrics": {}, "n_examples": n, "adapt_s": elapsed,
            "img_per_s": 1.0, "peak_mb": peak}
        return None
