"""`run.py plot`: valid PNG files, and figures whose lines are the data they claim to show."""

from __future__ import annotations

import numpy as np
import pytest
from cells_fixture import cell_row, frame

from benchmark.cli import main
from benchmark.report import plots
from benchmark.report.signed_csv import to_signed_csv

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ADAPTERS = {"source": 0.0, "adabn": 12.0, "tent": 15.0}
CORRUPTIONS = ("gaussian_noise", "fog", "contrast")


def corruption_cells(batch_sizes=(128,), curves=False):
    """digits-c style: targets <corruption>-<severity>; accuracy falls with severity."""
    rng = np.random.default_rng(0)
    rows = []
    for adapter, gain in ADAPTERS.items():
        for bs in batch_sizes:
            for seed in range(2):
                for c in CORRUPTIONS:
                    for s in range(1, 6):
                        score = round(90 - 9 * s + gain * s / 5 + rng.normal(0, 1), 2)
                        curve = list(np.linspace(score - 5, score, 4)) if curves else None
                        rows.append(cell_row(adapter, f"{c}-{s}", seed, score, batch_size=bs,
                                             curve=curve))
                rows.append(cell_row(adapter, "clean", seed, 95.0, role="source",
                                     batch_size=bs))
    rows.append(cell_row("tent", "fog-3", 2, 0.0, status="failed"))
    return frame(rows)


@pytest.fixture
def digits_c(tmp_path):
    cells = corruption_cells()
    (tmp_path / "digits-c-cells.csv").write_text(to_signed_csv(cells))
    return tmp_path, cells


def test_plot_command_writes_valid_pngs(digits_c, capsys):
    folder, _ = digits_c
    assert main(["plot", "--suite", "digits-c", "--leaderboards", str(folder)]) == 0
    for kind in ("heatmap", "severity"):
        path = folder / "plots" / f"digits-c-{kind}.png"
        assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC
    assert not (folder / "plots" / "digits-c-batch-size.png").exists()
    printed = capsys.readouterr().out
    assert "skipped batch-size" in printed and "skipped online" in printed


def test_severity_figure_has_one_line_per_adapter_with_the_right_values(digits_c):
    _, cells = digits_c
    fig = plots.severity_curves(cells, "digits-c")
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert sorted(line.get_label() for line in lines) == sorted(ADAPTERS)
    done = cells[(cells.role == "target") & (cells.status == "done")].copy()
    done["severity"] = done.domain.str.rsplit("-", n=1).str[1].astype(int)
    for line in lines:
        mine = done[done.adapter == line.get_label()]
        want = (100 - mine.groupby("severity").score.mean()).to_numpy()
        assert np.allclose(line.get_ydata(), want)
        assert list(line.get_xdata()) == [1, 2, 3, 4, 5]
    assert "error" in ax.get_ylabel() and "severity" in ax.get_xlabel()
    assert "3 corruptions" in ax.get_title() and ax.get_legend() is not None


def test_heatmap_is_adapters_by_targets(digits_c):
    _, cells = digits_c
    fig = plots.heatmap(cells, "digits-c")
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (len(ADAPTERS), len(CORRUPTIONS) * 5)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0] == "tent" and labels[-1] == "source"  # best mean first


def test_batch_size_sweep_and_online_curves(tmp_path):
    cells = corruption_cells(batch_sizes=(16, 64), curves=True)
    (tmp_path / "sweep-cells.csv").write_text(to_signed_csv(cells))
    assert main(["plot", "--suite", "sweep", "--leaderboards", str(tmp_path),
                 "--out", str(tmp_path / "figs")]) == 0
    for kind in ("heatmap", "severity", "batch-size", "online"):
        assert (tmp_path / "figs" / f"sweep-{kind}.png").read_bytes()[:8] == PNG_MAGIC
    sweep = plots.batch_size_curves(cells, "sweep")
    assert sorted(line.get_label() for line in sweep.axes[0].get_lines()) == sorted(ADAPTERS)
    assert list(sweep.axes[0].get_lines()[0].get_xdata()) == [16, 64]
    online = plots.online_curves(cells, "sweep")
    # one line per adapter row (adapter x batch size), 15 targets x 4 steps each
    assert len(online.axes[0].get_lines()) == 2 * len(ADAPTERS)
    assert len(online.axes[0].get_lines()[0].get_xdata()) == 15 * 4


def test_plot_without_cells_file_is_a_clear_error(tmp_path, capsys):
    assert main(["plot", "--suite", "absent", "--leaderboards", str(tmp_path)]) == 2
    assert "absent-cells.csv" in capsys.readouterr().err
