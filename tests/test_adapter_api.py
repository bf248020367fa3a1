"""What the adapter API tells a method (class count, task, training steps), the source-image
hook and its setting, and a method's code identity beyond its own file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import pytest
from cells_fixture import cell_row, frame

from benchmark.check import CheckSuite, check_adapter
from benchmark.plugins import load_file_adapter, protocol_problems
from benchmark.registry import ADAPTERS
from benchmark.report.leaderboard import board_frame
from benchmark.training import training_steps

HEADER = """
import torch
from benchmark.adapter import Adapter
"""


@pytest.fixture(autouse=True)
def clean_registry():
    names = set(ADAPTERS)
    yield
    for name in set(ADAPTERS) - names:
        ADAPTERS.unregister(name)


def write(path: Path, body: str) -> Path:
    path.write_text(HEADER + textwrap.dedent(body))
    return path


def test_code_identity_covers_the_modules_an_adapter_imports_from_its_folder(tmp_path):
    write(tmp_path / "helper.py", "SCALE = 1.0\n")
    write(tmp_path / "unrelated.py", "X = 1\n")
    write(tmp_path / "scaled.py", """
        from helper import SCALE

        class Scaled(Adapter):
            def predict(self, x):
                with torch.no_grad():
                    return self.model(x) * SCALE
        """)
    first = load_file_adapter(f"{tmp_path / 'scaled.py'}:Scaled")().code_hash()
    (tmp_path / "unrelated.py").write_text("X = 2\n")
    assert load_file_adapter(f"{tmp_path / 'scaled.py'}:Scaled")().code_hash() == first
    (tmp_path / "helper.py").write_text("SCALE = 2.0\n")
    assert load_file_adapter(f"{tmp_path / 'scaled.py'}:Scaled")().code_hash() != first


def test_declared_code_files_are_part_of_the_identity(tmp_path):
    (tmp_path / "table.json").write_text("[1, 2]")
    write(tmp_path / "declared.py", """
        class Declared(Adapter):
            code_files = ("table.json",)
            def predict(self, x):
                with torch.no_grad():
                    return self.model(x)
        """)
    first = load_file_adapter(f"{tmp_path / 'declared.py'}:Declared")().code_hash()
    (tmp_path / "table.json").write_text("[1, 3]")
    assert load_file_adapter(f"{tmp_path / 'declared.py'}:Declared")().code_hash() != first


def test_an_adapter_without_local_imports_keeps_its_files_own_hash():
    import hashlib
    import inspect

    source = ADAPTERS.get("source")
    expected = hashlib.sha256(Path(inspect.getsourcefile(source)).read_bytes()).hexdigest()
    assert source().code_hash() == expected  # stored results stay valid


def test_the_shared_method_layers_an_adapter_uses_are_part_of_its_identity(tmp_path):
    from benchmark.provenance import helper_files

    path = write(tmp_path / "uses_layers.py", """
        from benchmark.layers.tta import make_optimizer

        class UsesLayers(Adapter):
            def predict(self, x):
                return self.model(x)
        """)
    names = {p.name for p in helper_files(path)}
    # tta.py directly; norm.py and surgery.py through tta.py; nothing outside the layers
    assert {"tta.py", "norm.py", "surgery.py"} <= names
    assert all(p.parent.name == "layers" for p in helper_files(path))


def test_the_runner_tells_every_hook_the_class_count_task_and_training_steps(tmp_path):
    steps = training_steps(CheckSuite().load(CheckSuite.source, "train"), CheckSuite.recipe,
                           None, 0)
    assert steps > 0
    for expected, passes in ((steps, True), (steps + 1, False)):
        path = write(tmp_path / f"told{passes}.py", f"""
            class Told(Adapter):
                changes_training = True
                def prepare(self, model):
                    # training: the step count; describing: None (no training)
                    if self.total_steps not in (None, {expected}):
                        raise ValueError(f"total_steps {{self.total_steps}}")
                    return model
                def predict(self, x):
                    if (self.num_classes, self.task, self.total_steps) != \\
                            (10, "classification", None):
                        raise ValueError("not told")
                    with torch.no_grad():
                        return self.model(x)
            """)
        report = check_adapter(f"{path}:Told")
        assert report.passed == passes, report.lines


def test_a_source_using_adapter_gets_images_through_its_hook_and_is_checked(tmp_path):
    path = write(tmp_path / "src.py", """
        class UsesSource(Adapter):
            defaults = {"source_images": 50}
            setting = "tta+src"
            def use_source(self, stream):
                self.mean = sum(x.sum() for x in stream) / stream.num_examples
            def predict(self, x):
                with torch.no_grad():
                    return self.model(x - 0 * self.mean)
        """)
    report = check_adapter(f"{path}:UsesSource")
    assert report.passed, report.lines
    assert any(ok and text.startswith("source: use_source() read 50 unlabeled source images")
               for ok, text in report.lines)

    lazy = write(tmp_path / "lazy.py", """
        class Lazy(Adapter):
            defaults = {"source_images": 50}
            setting = "tta+src"
            def predict(self, x):
                with torch.no_grad():
                    return self.model(x)
        """)
    report = check_adapter(f"{lazy}:Lazy")
    assert any(not ok and text.startswith("source: setting 'tta+src' promises source images")
               for ok, text in report.lines), report.lines


def test_a_source_setting_needs_a_source_images_hyperparameter(tmp_path):
    path = write(tmp_path / "nocount.py", """
        class NoCount(Adapter):
            setting = "tta+src"
            def predict(self, x):
                return self.model(x)
        """)
    from benchmark.plugins import load_file_class

    cls, _, _ = load_file_class(f"{path}:NoCount")
    assert any("source_images" in p for p in protocol_problems(cls))


def test_rows_that_used_source_images_are_ranked_apart():
    suite = CheckSuite()
    rows = []
    for adapter, setting, score in (("eata", "tta+src", 90.0), ("tent", "tta", 80.0),
                                    ("ptbn", "tta", 70.0)):
        for domain in (suite.source, *suite.targets):
            row = cell_row(adapter, domain, 0, score,
                           role="source" if domain == suite.source else "target")
            row["setting"] = setting
            row["isolation"] = "isolated"
            rows.append(row)
    board = board_frame(suite, frame(rows))
    ranks = dict(zip(board.adapter, board["rank"], strict=True))
    assert ranks == {"tent": 1, "ptbn": 2, "eata": 1}
    assert list(board.adapter) == ["tent", "ptbn", "eata"]  # after the source-free ranking


def test_board_shows_the_worst_seed_and_seeds_that_collapsed():
    suite = CheckSuite()
    rows = []
    for seed, score in ((0, 90.0), (1, 20.0), (2, 88.0)):  # seed 1: one class everywhere
        for domain in (suite.source, *suite.targets):
            row = cell_row("source", domain, seed, score,
                           role="source" if domain == suite.source else "target")
            row["collapsed"] = float(seed == 1 and domain != suite.source)
            rows.append(row)
    board = board_frame(suite, pd.DataFrame(rows)).set_index("adapter")
    assert board.loc["source", "worst_seed"] == 20.0
    assert board.loc["source", "collapsed"] == 1
    assert board.loc["source", "score"] == pytest.approx(66.0)


def test_every_built_in_adapter_has_a_code_identity():
    import re

    for name, cls in ADAPTERS.items():
        if cls.__module__.startswith("adapters."):
            assert re.fullmatch(r"[0-9a-f]{64}", cls().code_hash()), name
