"""`run.py report`: the HTML page holds every board row and cell, escapes what it shows, is
rebuilt byte for byte, and works in a real browser (headless Chromium)."""

from __future__ import annotations

import csv
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from cells_fixture import cell_row, frame

from benchmark.cli import main
from benchmark.errors import ShiftbenchError
from benchmark.registry import SUITES
from benchmark.report import html, leaderboard
from benchmark.report.signed_csv import to_signed_csv


class Page(HTMLParser):
    """The page's tables (by class) as rows of cell text, its elements' attributes, and the
    text of its script elements."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[list[str]], list[str]]] = []  # class, rows, row classes
        self.attrs: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._cell: list[str] | None = None
        self._in_script = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.attrs.append((tag, attributes))
        if tag == "table":
            self.tables.append((attributes.get("class") or "", [], []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
            self.tables[-1][2].append(attributes.get("class") or "")
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_script:
            self.scripts[-1] += data

    def table(self, kind: str) -> list[tuple[list[str], list[list[str]], list[str]]]:
        """Every table of this class: (header, body rows, body row classes)."""
        return [(rows[0], rows[1:], classes[1:]) for cls, rows, classes in self.tables
                if cls == kind]


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A real run of the tiny suite: two batch sizes, a failing adapter, two seeds."""
    tmp = tmp_path_factory.mktemp("report")
    code = main(["run", "--suite", "tiny-digits", "--adapters", "source,ptbn,test-nan",
                 "--batch-size", "64,200", "--seeds", "2", "--results", str(tmp / "R"),
                 "--leaderboards", str(tmp / "L"), "--quiet"])
    assert code > 0  # test-nan's cells fail; the others finish
    return tmp / "L"


def test_a_run_writes_its_suites_page_and_report_covers_the_folder(results, capsys):
    assert (results / "tiny-digits.html").is_file()  # written by `run` itself
    assert main(["report", "--leaderboards", str(results)]) == 0
    assert str(results / "report.html") in capsys.readouterr().out
    page = Page((results / "report.html").read_text())
    index = [a["href"] for tag, a in page.attrs
             if tag == "a" and (a.get("href") or "").startswith("#s-")]
    sections = {a["id"] for tag, a in page.attrs if tag == "section"}
    assert index and set(index) == {"#" + s for s in sections}


def test_the_page_holds_every_board_row_and_every_cell_with_its_provenance(results):
    page = Page(html.render(results, ["tiny-digits"]))
    header, rows = read_csv(results / "tiny-digits.csv")
    [(shown_header, shown, classes)] = page.table("board")
    assert shown_header[:-1] == header and shown_header[-1] == "cells"
    measured = [(r[:-1], c) for r, c in zip(shown, classes, strict=True) if c != "reported"]
    assert [r for r, _ in measured] == rows  # every row, every column, the CSV's own text
    status = header.index("status")
    kinds = {tuple(r[:3]): c for r, c in measured}
    failed = [r for r in rows if r[status] != "ok"]
    assert failed and all(kinds[tuple(r[:3])] == "unranked" for r in failed)
    assert all(r[header.index("rank")] == "" for r in failed)  # visible, never ranked

    cell_header, cells = read_csv(results / "tiny-digits-cells.csv")
    tables = page.table("cells")
    shown_cells = [dict(zip(h, r, strict=True)) for h, body, _ in tables for r in body]
    assert len(shown_cells) == len(cells) == 3 * 2 * 2 * 2  # adapters, sizes, seeds, domains
    expected = [{c: row[cell_header.index(c)] for c in html.PROVENANCE} for row in cells]
    assert sorted(tuple(c.values()) for c in shown_cells) == \
        sorted(tuple(c.values()) for c in expected)
    for fields in ("data_fingerprint", "adapter_code", "checkpoint_sha256", "torch"):
        assert all(c[fields] for c in shown_cells if c["status"] == "done")
    assert any(c["error"] for c in shown_cells if c["status"] == "failed")


def test_the_page_is_self_contained_and_rebuilt_byte_for_byte(results, tmp_path):
    first = html.render(results)
    copy = tmp_path / "copy"
    shutil.copytree(results, copy)  # other paths, other mtimes: the same page
    assert html.render(copy) == first
    page = Page(first)
    links = [a.get(k) for _, a in page.attrs for k in ("src", "href") if a.get(k)]
    assert links and all(link.startswith(("data:", "#")) for link in links)
    images = [a["src"] for tag, a in page.attrs if tag == "img"]
    assert images and all(i.startswith("data:image/svg+xml;base64,") for i in images)
    assert len(first.encode()) < 2 << 20


def test_labels_and_hyperparameters_are_shown_as_text_never_as_markup(tmp_path):
    label = 'evil<script>alert("x")</script>(note=<b>)'
    rows = []
    for adapter in ("source", label):
        for seed in (0, 1):
            rows.append(cell_row(adapter, "digits-m", seed, 50.0 + seed))
            rows.append(cell_row(adapter, "digits", seed, 95.0, role="source"))
    for row in rows:
        row["hparams"] = "[('note', '<img src=x onerror=alert(1)>')]"
    cells = frame(rows)
    suite = SUITES.get("tiny-digits")()
    (tmp_path / "tiny-digits-cells.csv").write_text(to_signed_csv(cells))
    board = leaderboard.board_frame(suite, cells)
    (tmp_path / "tiny-digits.csv").write_text(board.to_csv(index=False))
    text = html.render(tmp_path)
    page = Page(text)
    assert len(page.scripts) == 1 and "alert" not in page.scripts[0]
    assert not [a for tag, a in page.attrs if tag == "img" and "onerror" in a]
    [(header, body, _)] = page.table("board")
    assert label in [r[header.index("adapter")] for r in body]  # shown, as text
    assert "&lt;script&gt;" in text


def test_a_damaged_cells_file_or_a_missing_suite_is_a_clear_error(results, tmp_path):
    shutil.copytree(results, tmp_path / "L")
    with pytest.raises(ShiftbenchError, match="no results for digits-c"):
        html.render(tmp_path / "L", ["digits-c"])
    cells = tmp_path / "L" / "tiny-digits-cells.csv"
    cells.write_text(cells.read_text().replace(",done,", ",done,9", 1))
    with pytest.raises(ShiftbenchError, match="does not match"):
        html.render(tmp_path / "L")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_page_sorts_and_filters_in_headless_chromium_without_console_errors(results,
                                                                                 tmp_path):
    browser_path = _chromium()
    if browser_path is None:
        message = ("Debian's chromium is not installed (apt-get install chromium); "
                   ".ci/run installs it")
        if os.environ.get("CI"):
            pytest.fail(message + ", and CI must run this test")
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    out = html.write(results, tmp_path / "page.html")
    header, rows = read_csv(results / "tiny-digits.csv")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, headless=True,
                                    args=["--no-sandbox"])
        try:
            view = browser.new_page()
            view.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            view.on("pageerror", lambda e: errors.append(str(e)))
            view.goto(out.as_uri())
            shot = view.screenshot(full_page=True)
            assert shot.startswith(b"\x89PNG") and len(shot) > 10_000
            board = view.locator("table.board").first

            def column(name: str) -> list[str]:
                return board.locator("tbody tr:not([hidden]):not(.reported) "
                                     f"td:nth-child({header.index(name) + 1})").all_inner_texts()

            before = column("score")  # the CSV's order: best first, failed rows last
            board.locator("thead th", has_text="score").first.click()
            after = column("score")
            assert after != before
            numbers = [float(v) for v in after if v]
            assert numbers == sorted(numbers) and after[len(numbers):] == [""] * (
                len(after) - len(numbers))  # ascending, empty scores last
            board.locator("thead th", has_text="score").first.click()
            numbers = [float(v) for v in column("score") if v]
            assert numbers == sorted(numbers, reverse=True)
            board.locator("thead th", has_text="adapter").first.click()
            assert column("adapter") == sorted(r[header.index("adapter")] for r in rows)

            view.select_option("form.filters select[name=batch_size]", "64")
            sizes = board.locator("tbody tr:not([hidden]):not(.reported) "
                                  f"td:nth-child({header.index('batch_size') + 1})")
            assert set(sizes.all_inner_texts()) == {"64"}

            link = board.locator("tbody tr:not([hidden]):not(.reported) a").first
            link.click()
            target = link.get_attribute("href")[1:]
            assert view.locator(f"details[id='{target}']").get_attribute("open") is not None
        finally:
            browser.close()
    assert errors == []
