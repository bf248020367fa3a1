"""Throughput of shiftbench's corruption engine vs the ``imagecorruptions`` package.

Both corrupt the same 32x32 RGB images (random crops of the photos bundled with
scikit-learn and scikit-image), corruption by corruption, all 5 severities, in one run, and
the table gives milliseconds per image (summed over the 5 severities) for each and their
ratio. The total ratio is over the corruptions both packages run. Before timing a
corruption, both packages run it once at every severity (lazy imports, and the engine's
per-severity cached tables), so the table is steady-state throughput, which is what
generating a data set sees.

    python benchmarks/corruptions.py               # 200 images, about 20 s
    python benchmarks/corruptions.py --threads 2   # torch may use both cores
    python benchmarks/corruptions.py --images 1000
    python benchmarks/corruptions.py --threads 2 --busy 1  # the other core kept busy
    python benchmarks/corruptions.py --imagenet --images 20  # 224x224, ImageNet-C constants

With ``--imagenet`` both packages corrupt 224x224 crops with the ImageNet-C constants (the
engine's ``constants="imagenet"``; imagecorruptions' own), i.e. the same corruptions: the
like-for-like comparison, and the cost of generating ImageNet-C targets.

The engine itself always computes with one CPU thread (``suites.corruptions.corrupt``
restores the caller's setting afterwards); ``--threads`` sets torch's count around it.

``imagecorruptions`` is installed by the ``bench`` extra (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from suites._photos import random_crops
from suites.corruptions import ALL_CORRUPTIONS, SEVERITIES, corrupt

NOTE = """\
Note: imagecorruptions (Michaelis et al. 2019) applies the ImageNet-C constants (made for
224x224 images) to whatever it gets, so on 32x32 images its corruptions are stronger than
CIFAR-10-C's and its per-image work differs; shiftbench applies the CIFAR-10-C (32x32)
constants. The comparison is of throughput, not of outputs. Corruptions that
imagecorruptions cannot run with the installed numpy / scikit-image are reported as
failed and left out of the total."""


NOTE_IMAGENET = """\
Note: both packages applied the ImageNet-C constants to 224x224 images: the same
corruptions (the deterministic ones give equal outputs; see the ImageNet-C suite's notes).
imagecorruptions' frost rescales its photos by 1.1 (the script does not)."""


def load_reference():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from imagecorruptions import corrupt as reference_corrupt
    except ImportError as exc:
        raise SystemExit(
            f"cannot import imagecorruptions ({exc}); install the benchmark extra: "
            "pip install -e '.[bench]' (it also pins setuptools<81, whose pkg_resources "
            "imagecorruptions imports)"
        ) from exc
    return reference_corrupt


def time_reference(reference_corrupt, images_u8: np.ndarray, name: str
                   ) -> tuple[float | None, str]:
    """Seconds for all images x severities, or None and the error it raised."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for severity in SEVERITIES:  # warm-up, as for the engine
                reference_corrupt(images_u8[0], corruption_name=name, severity=severity)
            start = time.perf_counter()
            for severity in SEVERITIES:
                for image in images_u8:
                    reference_corrupt(image, corruption_name=name, severity=severity)
    except Exception as exc:  # the package is broken on today's stack for some corruptions
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return None, message[:70]
    return time.perf_counter() - start, ""


def time_engine(images: torch.Tensor, name: str, constants: str) -> float:
    start = time.perf_counter()
    for severity in SEVERITIES:
        corrupt(images, name, severity, seed=severity, constants=constants)
    return time.perf_counter() - start


def _spin(stop) -> None:
    """Keeps one core busy until ``stop`` is set (another job on a shared machine)."""
    x = np.random.default_rng(0).random(4096)
    while not stop.is_set():
        x = np.sqrt(x * x + 1.0) - 1.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="images (default 200)")
    parser.add_argument("--imagenet", action="store_true",
                        help="224x224 images and the ImageNet-C constants for both packages")
    parser.add_argument("--device", default="cpu", help="device for shiftbench's engine")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1, like imagecorruptions' numpy; "
                             "on a busy machine more threads mostly add contention)")
    parser.add_argument("--busy", type=int, default=0,
                        help="processes that keep cores busy during the measurement")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import multiprocessing

    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
                for _ in range(args.busy)]
    for spinner in spinners:
        spinner.start()
    try:
        measure(args)
    finally:
        stop.set()
        for spinner in spinners:
            spinner.join()


def measure(args: argparse.Namespace) -> None:

    reference_corrupt = load_reference()
    size, constants = (224, "imagenet") if args.imagenet else (32, "cifar")
    crops = random_crops(args.images, size, np.random.default_rng(0),
                         downscale=1 if args.imagenet else 4)
    images_u8 = np.round(crops * 255).astype(np.uint8)
    images = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float().div(255).to(args.device)

    per_image = 1000 / args.images
    print(f"{args.images} images of {size}x{size}, {constants} constants, 5 severities each, "
          "torch threads: "
          f"{torch.get_num_threads()} (the engine uses 1 on CPU), busy processes: "
          f"{args.busy}, device: {args.device}")
    print(f"{'corruption':18s} {'shiftbench':>11s} {'imagecorr.':>11s} {'ratio':>8s}   "
          "(ms per image, summed over severities)")
    ours_total = reference_total = 0.0
    failures = []
    for name in ALL_CORRUPTIONS:
        for severity in SEVERITIES:  # warm-up: lazy imports and per-severity cached tables
            corrupt(images[:2], name, severity, seed=0, constants=constants)
        ours = time_engine(images, name, constants)
        reference, error = time_reference(reference_corrupt, images_u8, name)
        if reference is None:
            failures.append(name)
            print(f"{name:18s} {ours * per_image:11.3f} {'FAILED':>11s} {'-':>8s}   {error}")
            continue
        ours_total += ours
        reference_total += reference
        print(f"{name:18s} {ours * per_image:11.3f} {reference * per_image:11.3f} "
              f"{reference / ours:7.1f}x")
    print(f"{'total (both run)':18s} {ours_total * per_image:11.3f} "
          f"{reference_total * per_image:11.3f} {reference_total / ours_total:7.1f}x")
    if failures:
        print(f"imagecorruptions failed on: {', '.join(failures)}")
    print(NOTE_IMAGENET if args.imagenet else NOTE)


if __name__ == "__main__":
    main()
