"""Built-in suites. Importing this package registers every suite module in it."""

from suites import digits  # noqa: F401
