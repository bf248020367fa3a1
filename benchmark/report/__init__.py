"""Reports: pure functions of the stored cells (leaderboards, markdown, plots, compare).
They read cells and cell CSVs; they never run the engine."""
