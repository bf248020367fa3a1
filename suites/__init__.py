"""Built-in suites. Importing this package registers every suite module in it."""

from suites import (
    digits,  # noqa: F401
    digits_c,  # noqa: F401
    gta5_cityscapes,  # noqa: F401
    scenes,  # noqa: F401
)
