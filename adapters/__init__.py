"""Built-in adapters, one method per file. Importing this package registers them all."""

from adapters import adabn, ptbn, source, tent  # noqa: F401
