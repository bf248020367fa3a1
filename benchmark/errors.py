"""Errors the command line reports as one clear message (no traceback)."""


class ShiftbenchError(Exception):
    """A problem with the user's input or environment, stated with how to fix it."""


class DatasetNotFoundError(ShiftbenchError, FileNotFoundError):
    """A real dataset is missing: the message names the expected path and how to get it."""
