"""MNIST -> USPS on the real datasets, in its two releases (two suites, so every leaderboard
names the release it used).

The LIBSVM files torchvision downloads (``usps.bz2``, ``usps.t.bz2``) hold a *blurred*
version of the USPS digits compared with the HDF5 release (``usps.h5``) most domain
adaptation code reads; source-only accuracy differs by several points between the two.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.registry import SUITES
from benchmark.suite import Split
from suites._digit_files import USPS, USPS_H5, read_usps_h5, read_usps_libsvm
from suites.mnist_svhn import MNIST_DOMAIN, SHOT_RECIPE, DigitDomain, RealDigits


def read_usps(paths: dict[str, Path], split: Split) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_usps_libsvm(paths["usps.bz2" if split == "train" else "usps.t.bz2"])
    return images[:, None], labels


def read_usps_hdf5(paths: dict[str, Path], split: Split) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_usps_h5(paths["usps.h5"], split)
    return images[:, None], labels


USPS_DOMAIN = DigitDomain(USPS, read_usps)
USPS_H5_DOMAIN = DigitDomain(USPS_H5, read_usps_hdf5)


@SUITES.register("mnist-usps")
class MnistUsps(RealDigits):
    """Real: MNIST -> USPS test (2,007), the blurred LIBSVM release (needs --data-root).

    The files torchvision downloads (see mnist-usps-h5 for the HDF5 release); --download works.

    Layout under ``--data-root`` (torchvision's: ``MNIST(root)``, ``USPS(root + "/USPS")``)::

        MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
        USPS/usps.bz2  USPS/usps.t.bz2     LIBSVM text: "label i:v ...", 7,291 / 2,007 digits

    USPS: labels 1-10 are digit + 1; 16x16 values in [-1, 1] are mapped to [0, 1], resized
    16 -> 28 (bilinear), replicated to 3 channels, kept as 8-bit. Both files are md5-checked
    against torchvision's sums. USPS train (7,291) is the unlabeled target data of DA
    methods; USPS test is scored. MNIST at its own 28x28 (no resize), grey in 3 channels.

    Source model: LeNet-5 with SHOT's head, inputs standardized with mean and std 0.5
    (benchmark.layers.digit_nets), trained with SHOT's recipe for MNIST -> USPS
    (``SHOT_RECIPE``; Liang et al., ICML 2020, arXiv:2002.08546). About 4 minutes on 2 CPU
    cores.
    """

    source = "mnist"
    targets = ("usps",)
    domain_specs = {"mnist": MNIST_DOMAIN, "usps": USPS_DOMAIN}
    size = 28
    recipe = SHOT_RECIPE


@SUITES.register("mnist-usps-h5")
class MnistUspsH5(MnistUsps):
    """Real: MNIST -> USPS test (2,007), the HDF5 release usps.h5 (needs --data-root, h5py).

    The digits of this release are not blurred (mnist-usps reads the blurred LIBSVM files).

    Layout under ``--data-root``: MNIST as in mnist-usps, and ``USPS/usps.h5`` with groups
    ``train``/``test``, each holding ``data`` (N, 256) in [0, 1] and ``target`` (digits 0-9),
    7,291 / 2,007 digits. Its distributors publish no checksum; the file is checked against
    the md5 we recorded for the release (suites/_digit_files.py), so a truncated copy is
    named and refused. There is no ``--download`` (the file comes from Kaggle, which needs
    an account). Values resized 16 -> 28 (bilinear), 3 channels, 8-bit.
    """

    targets = ("usps",)
    domain_specs = {"mnist": MNIST_DOMAIN, "usps": USPS_H5_DOMAIN}


__all__ = ["MnistUsps", "MnistUspsH5", "RealDigits"]
