"""Built-in suites. Importing this package registers every suite module in it."""

from suites import (
    cifar_c,  # noqa: F401
    digits,  # noqa: F401
    digits_adv,  # noqa: F401
    digits_c,  # noqa: F401
    digits_cams,  # noqa: F401
    digits_drift,  # noqa: F401
    digits_mm,  # noqa: F401
    digits_sv,  # noqa: F401
    gta5_cityscapes,  # noqa: F401
    imagenet_c,  # noqa: F401
    mnist_svhn,  # noqa: F401
    mnist_usps,  # noqa: F401
    scenes,  # noqa: F401
)
