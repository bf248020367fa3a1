"""Adapters from outside the project: a file (path.py:Class) or an installed package's entry
point. Loading, errors, cell keys after an edit, failing cells, `run.py list` and a run."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmark.cli import main
from benchmark.engine.runner import RunConfig, Runner
from benchmark.errors import ShiftbenchError
from benchmark.plugins import (
    PluginWarning,
    adapter_origin,
    load_entry_point_adapters,
    load_file_adapter,
)
from benchmark.provenance import helper_files
from benchmark.registry import ADAPTERS, load_builtins
from benchmark.specs import AdapterSpec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "bn_ema.py"

ADAPTER_FILE = '''
from benchmark.adapter import Adapter
from benchmark.layers.norm import normalize_with_batch_statistics


class MyAdapter(Adapter):
    """Test adapter: batch statistics at test time."""

    defaults = {"scale": 1.0}

    def setup(self, model):
        normalize_with_batch_statistics(model)

    def predict(self, x):
        return super().predict(x) * self.hparams["scale"]


class Named(MyAdapter):
    name = "my-named"
'''


@pytest.fixture(autouse=True)
def clean_registry():
    """Names and modules a test adds are removed after it, so other tests see the built-ins."""
    names, modules = set(ADAPTERS), set(sys.modules)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is much faster on a busy machine
    yield
    torch.set_num_threads(threads)
    for name in set(ADAPTERS) - names:
        ADAPTERS.unregister(name)
    for module in set(sys.modules) - modules:
        if module.startswith(("shiftbench_file_", "shiftbench_demo_plugin")):
            del sys.modules[module]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One result store for the module, so the tiny-digits source model is trained once."""
    return tmp_path_factory.mktemp("results")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_a_file_adapter_is_registered_under_its_name_with_its_path(tmp_path):
    path = write(tmp_path / "somewhere" / "my_adapter.py", ADAPTER_FILE)
    cls = load_file_adapter(f"{path}:MyAdapter")
    assert cls.name == "myadapter" and ADAPTERS.get("myadapter") is cls
    assert adapter_origin(cls) == str(path)
    assert load_file_adapter(f"{path}:Named").name == "my-named"  # its own `name` wins
    assert load_file_adapter(f"{path}:MyAdapter") is cls  # unchanged file: same class

    spec = AdapterSpec.parse(f"{path}:MyAdapter(scale=2.5)")
    # parsing does not import the file (its code runs only in adapter processes)
    assert spec == AdapterSpec("myadapter", (("scale", 2.5),), file=f"{path}:MyAdapter")
    assert spec.build().label() == "myadapter(scale=2.5)"

    # two files with the same name in different folders do not collide
    other = write(tmp_path / "elsewhere" / "my_adapter.py",
                  ADAPTER_FILE.replace("MyAdapter", "OtherAdapter"))
    assert load_file_adapter(f"{other}:OtherAdapter").__module__ != cls.__module__


BROKEN = {
    "missing file": ("", "nowhere.py:X", "does not exist"),
    "import error": ("import torch\nvalue = undefined_name + 1\n", "f.py:X",
                     "line 2 (`value = undefined_name + 1`) raised NameError"),
    "syntax error": ("def f(:\n    pass\n", "f.py:X", "line 1: SyntaxError"),
    "missing package": ("import not_a_real_package_xyz\n", "f.py:X",
                        "install 'not_a_real_package_xyz'"),
    "class not found": (ADAPTER_FILE, "f.py:MyAdaptr",
                        "has no class 'MyAdaptr'; did you mean MyAdapter?"),
    "not an adapter": ("class Plain:\n    def predict(self, x):\n        return x\n",
                       "f.py:Plain", "does not subclass benchmark.adapter.Adapter"),
    "wrong signature": ("from benchmark.adapter import Adapter\n"
                        "class Bad(Adapter):\n    def adapt(self):\n        pass\n",
                        "f.py:Bad", "Bad.adapt(self) does not match the protocol"),
    "name taken": ("from benchmark.adapter import Adapter\n"
                   "class Tent(Adapter):\n    def adapt(self, stream):\n        pass\n",
                   "f.py:Tent", "adapter name 'tent' of"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_file_adapter_is_one_clear_line_and_exit_code_2(case, tmp_path, capsys):
    source, reference, expected = BROKEN[case]
    if source:
        write(tmp_path / "f.py", source)
    code = main(["run", "--suite", "digits", "--adapters", f"source,{tmp_path / reference}",
                 "--results", str(tmp_path / "R"), "--leaderboards", str(tmp_path / "L"),
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert expected in err
    with pytest.raises(ShiftbenchError):  # the same error, as an exception, for library users
        Runner(RunConfig(suite="digits", adapters=[AdapterSpec.parse(str(tmp_path / reference))],
                         seeds=[0], results=tmp_path / "R", progress=False))


def test_editing_the_file_changes_every_cell_key(tmp_path):
    path = write(tmp_path / "my_adapter.py", ADAPTER_FILE)

    def keys():
        spec = AdapterSpec.parse(f"{path}:MyAdapter")
        runner = Runner(RunConfig(suite="tiny-digits", adapters=[spec], seeds=[0],
                                  results=tmp_path / "R", progress=False))
        cells = runner.plan()
        codes = {c.identity["adapter_code"] for c in cells}
        # the file's own hash, combined with the benchmark.layers modules it imports
        assert len(codes) == 1
        if not helper_files(path):
            assert codes == {hashlib.sha256(path.read_bytes()).hexdigest()}
        return {c.key for c in cells}

    before = keys()
    assert keys() == before  # unchanged file, same keys
    path.write_text(path.read_text() + "# an edit that changes nothing but the file\n")
    after = keys()
    assert len(after) == len(before) == 2 and not before & after


def test_a_file_adapter_that_raises_on_one_domain_is_one_failed_cell(tmp_path, results):
    path = write(tmp_path / "flaky.py", '''
        from benchmark.adapter import Adapter

        class Flaky(Adapter):
            """Raises on the photo-blended domain (few exact-zero pixels)."""

            def adapt(self, stream):
                if (next(iter(stream)) == 0).float().mean() < 0.1:
                    raise RuntimeError("deliberate failure on the photo domain")
        ''')
    code = main(["run", "--suite", "tiny-digits", "--adapters", f"source,{path}:Flaky",
                 "--seeds", "1", "--results", str(results), "--leaderboards",
                 str(tmp_path / "L"), "--quiet"])
    assert code == 1  # one failed cell
    cells = pd.read_csv(tmp_path / "L" / "tiny-digits-cells.csv")
    flaky = cells[cells.adapter == "flaky"].set_index("domain")
    assert flaky.loc["digits-m", "status"] == "failed"
    assert "RuntimeError: deliberate failure" in flaky.loc["digits-m", "error"]
    assert flaky.loc["digits", "status"] == "done"  # the run went on
    assert (cells[cells.adapter == "source"].status == "done").all()


def make_plugin(site: Path, module_body: str | None = None) -> None:
    """An installed distribution as importlib.metadata sees it: a package and a dist-info
    folder with an entry_points.txt, on a path that will be on sys.path."""
    package = site / "shiftbench_demo_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(module_body or "")
    shutil.copy(EXAMPLE, package / "bn_ema.py")
    info = site / "shiftbench_demo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shiftbench-demo-plugin\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[shiftbench.adapters]\ndemo-bn-ema = shiftbench_demo_plugin.bn_ema:BNStatsEMA\n")


def test_an_installed_plugin_is_listed_and_runs(tmp_path, results, monkeypatch, capsys):
    site = tmp_path / "site"
    make_plugin(site)

    # a fresh interpreter discovers it from PYTHONPATH alone
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    listing = subprocess.run([sys.executable, str(ROOT / "run.py"), "list"], env=env,
                             cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    line = next(x for x in listing.splitlines() if "demo-bn-ema" in x)
    assert "BN-statistics EMA" in line and "[package shiftbench-demo-plugin 0.1]" in line

    monkeypatch.syspath_prepend(str(site))
    load_builtins()
    assert ADAPTERS.get("demo-bn-ema").__name__ == "BNStatsEMA"
    code = main(["run", "--suite", "tiny-digits", "--adapters", "source,demo-bn-ema(momentum=0.2)",
                 "--seeds", "1", "--results", str(results), "--leaderboards",
                 str(tmp_path / "L"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    board = pd.read_csv(tmp_path / "L" / "tiny-digits.csv").set_index("adapter")
    assert board.loc["demo-bn-ema(momentum=0.2)", "status"] == "ok"
    assert board.loc["demo-bn-ema(momentum=0.2)", "rank"] >= 1


def test_a_broken_plugin_is_a_warning_and_the_rest_still_loads(tmp_path, monkeypatch):
    site = tmp_path / "site"
    make_plugin(site, module_body="raise ImportError('plugin is broken')\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.warns(PluginWarning, match="demo-bn-ema.*failed to import.*plugin is broken"):
        loaded = load_entry_point_adapters()
    assert "demo-bn-ema" not in loaded and "demo-bn-ema" not in ADAPTERS
    assert "tent" in ADAPTERS


def test_list_shows_file_adapters_with_their_path(tmp_path, capsys):
    path = write(tmp_path / "my_adapter.py", ADAPTER_FILE)
    assert main(["list", "--adapters", f"{path}:MyAdapter"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("myadapter"))
    assert f"[{path}]" in line and "batch statistics" in line
    assert "[built-in]" in next(x for x in out.splitlines() if x.strip().startswith("tent"))
