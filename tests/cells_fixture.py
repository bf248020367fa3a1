"""Long-form cell CSVs in the format benchmark.report.leaderboard writes (compare/plot tests)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from benchmark.report.leaderboard import CELL_COLUMNS


def cell_row(adapter: str, domain: str, seed: int, score: float, *, role: str = "target",
             status: str = "done", protocol: str = "episodic", batch_size: int = 128,
             metric: str = "accuracy", curve: list[float] | None = None) -> dict:
    row = {c: "" for c in CELL_COLUMNS}
    row.update(
        adapter=adapter, protocol=protocol, batch_size=batch_size, setting="tta", seed=seed,
        domain=domain, role=role, status=status, metric=metric,
        score=score if status == "done" else np.nan, ece=1.0, entropy=0.5, n_examples=100,
        adapt_s=0.1, img_per_s=1000.0, peak_mb=500.0, name=adapter.split("(")[0],
        hparams="[]", data_fingerprint="f" * 64, shiftbench="0.1.0", code_revision="abc",
        torch="2.x", device="cpu", finished_at="2025-01-01T00:00:00+00:00",
        key=f"{adapter}-{protocol}-{batch_size}-{seed}-{domain}",
    )
    if curve is not None:
        row["curve"] = json.dumps(curve)
    return row


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(CELL_COLUMNS))
