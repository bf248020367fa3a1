"""Process memory housekeeping shared by the runner and by suites that generate data."""

from __future__ import annotations

import ctypes


def release_free_memory() -> None:
    """glibc: give freed heap memory back to the system (malloc_trim). With blocks up to
    32 MB served from the heap (``tune_allocator``), generating a suite's data left a
    process at 2.6 GB resident where 1.0 GB was in use; a long run's worker grew until the
    kernel killed it. Called after generating data and after every job. Off glibc: nothing."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
