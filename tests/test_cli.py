"""Command-line behaviour, and the foundation issue's acceptance on the real digits suite."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmark.cli import build_parser, main


def test_list_shows_suites_and_adapters_with_descriptions(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ["digits", "source", "adabn", "ptbn", "tent"]:
        assert f"  {name} " in out
    assert "AdaBN" in out and "Tent" in out


@pytest.mark.parametrize("command", [[], ["run"], ["list"], ["check"], ["compare"], ["plot"],
                                     ["report"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_bad_seeds_are_rejected_with_a_message(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--seeds", "two"])
    assert "--seeds takes a count" in capsys.readouterr().err


@pytest.mark.slow
def test_digits_acceptance_adabn_beats_source_and_tent_keeps_up(tmp_path):
    """On digits-m (3 seeds) AdaBN beats source by >= 3 points and Tent is not
    below AdaBN by more than 2; source accuracy on digits-m is far below source accuracy."""
    code = main(["run", "--suite", "digits", "--adapters", "source,adabn,ptbn,tent",
                 "--seeds", "3", "--results", str(tmp_path / "R"),
                 "--leaderboards", str(tmp_path / "L"), "--quiet"])
    assert code == 0
    board = pd.read_csv(tmp_path / "L" / "digits.csv").set_index("adapter")
    assert set(board.index) == {"source", "adabn", "ptbn", "tent"}
    assert (board.seeds == 3).all()
    source, adabn, tent = (board.loc[a, "digits-m"] for a in ("source", "adabn", "tent"))
    assert adabn >= source + 3
    assert tent >= adabn - 2
    assert board.loc["source", "src:digits"] - source > 30
    page = (tmp_path / "L" / "digits.html").read_bytes()  # the run's browsable report
    assert len(page) < 2 << 20 and b"<table class=\"board\"" in page
