"""Embedded digits-c suite: the scikit-learn digits under the 15 CIFAR-10-C corruptions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from benchmark.memory import release_free_memory
from benchmark.registry import SUITES
from benchmark.store import atomic_write_bytes, atomic_write_text, stable_hash
from benchmark.suite import DomainData, Split
from suites._cache import cache_dir, engine_identity
from suites.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from suites.digits import Digits, digit_splits


def corruption_domain(name: str, severity: int) -> str:
    return f"{name}-{severity}"


def corruption_seed(name: str, severity: int, split: Split) -> int:
    """Fixed per (corruption, severity, split), independent of the run seed: the data never
    changes between runs, and every domain draws its own noise."""
    return 50_000 + 100 * CORRUPTIONS.index(name) + 10 * severity + (split == "train")


@SUITES.register("digits-c")
class DigitsC(Digits):
    """Embedded: sklearn handwritten digits (clean) -> the same digits under the 15 CIFAR-10-C
    corruptions x 5 severities (75 targets, e.g. ``gaussian_noise-5``).

    The source domain, splits, recipe and source model are those of the ``digits`` suite, so
    ``source`` rows of both suites are comparable. Each target is the 599-image test split
    (and, as unlabeled adaptation data, the 1,198-image train split) corrupted by
    ``suites.corruptions.corrupt`` with the CIFAR-10-C (32x32) parameters and a fixed seed
    per corruption, severity and split. Frost uses procedural textures, or the release's
    photos when ``imagecorruptions`` is installed (a different data fingerprint; see
    ``suites.corruptions.weather.frost_images``). Test splits are generated on first use
    and kept in memory as 8-bit images (the engine's output is on the 1/255 grid; 140 MB for
    all 75); train splits, needed only by domain-adaptation adapters and the data
    fingerprint, are regenerated on request (same seed, same images) to keep memory low.

    Disk cache: the first start generates and hashes every split (about 50 s) and saves the
    75 test sets (8-bit, 138 MB) and the fingerprint in ``$SHIFTBENCH_CACHE/digits-c/`` (default
    ``~/.cache/shiftbench/digits-c/``), under a key hashing the corruption engine's source,
    this file, the torch and numpy versions and the clean digits; later starts read them
    (a few seconds). Any change of those gives a new key, hence a fresh cache. Deleting the
    folder is always safe.
    """

    targets = tuple(corruption_domain(c, s) for c in CORRUPTIONS for s in SEVERITIES)
    _domains = {corruption_domain(c, s): (c, s) for c in CORRUPTIONS for s in SEVERITIES}

    def __init__(self, root=None, download: bool = False) -> None:
        super().__init__(root, download)
        self._test_u8: dict[str, torch.Tensor] = {}
        self._cache_key: str | None = None

    def load(self, domain: str, split: Split) -> DomainData:
        if domain not in self._domains:
            return super().load(domain, split)  # the clean source; checks the name and split
        if split not in ("train", "test"):
            raise KeyError(f"unknown split {split!r}; use 'train' or 'test'")
        name, severity = self._domains[domain]
        images, labels = digit_splits(self.size, self.split_seed)[split]
        if split == "train":
            return DomainData(self._generate(images, name, severity, split), labels)
        if domain not in self._test_u8:
            cached = self._cached_test_set(domain)
            if cached is None:
                corrupted = self._generate(images, name, severity, split)
                cached = torch.round(corrupted * 255).to(torch.uint8)
            self._test_u8[domain] = cached
        return DomainData(self._test_u8[domain].float() / 255, labels)

    def target_factors(self) -> dict[str, dict[str, Any]]:
        return {d: {"corruption": c, "severity": s} for d, (c, s) in self._domains.items()}

    # ---- disk cache ---------------------------------------------------------------------
    def _cache_paths(self) -> tuple[Path, Path]:
        if self._cache_key is None:
            clean = digit_splits(self.size, self.split_seed)
            digest = hashlib.sha256()
            for split in ("train", "test"):
                digest.update(DomainData(*clean[split]).digest().encode())
            self._cache_key = stable_hash({
                "suite": self.name, "targets": list(self.targets), "engine": engine_identity(),
                "clean": digest.hexdigest(),
                "suite_code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
            })[:32]
        folder = cache_dir() / "digits-c"
        return folder / f"{self._cache_key}.safetensors", folder / f"{self._cache_key}.json"

    def _cached_test_set(self, domain: str) -> torch.Tensor | None:
        tensors, _ = self._cache_paths()
        if not tensors.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(tensors), framework="pt") as f:
                return f.get_tensor(domain) if domain in f.keys() else None
        except Exception:  # an unreadable cache file is regenerated, never trusted
            return None

    def fingerprint(self) -> str:
        """As ``Suite.fingerprint`` (every split of every domain), computed once per cache key
        and kept on disk with the test sets; see the class docstring."""
        if self._fingerprint is None:
            tensors, meta = self._cache_paths()
            try:
                self._fingerprint = json.loads(meta.read_text())["fingerprint"]
            except (OSError, ValueError, KeyError):
                fingerprint = super().fingerprint()  # loads (generates) every split
                release_free_memory()  # generation's temporaries: 2.6 GB resident -> 1 GB
                from safetensors.torch import save

                try:  # tensors first: a fingerprint file implies its test sets are there
                    test_sets = {d: t.contiguous() for d, t in self._test_u8.items()}
                    atomic_write_bytes(tensors, save(test_sets))
                    atomic_write_text(meta, json.dumps({"fingerprint": fingerprint}))
                except OSError:
                    pass  # an unwritable cache costs the next start time, nothing else
                self._fingerprint = fingerprint
        return self._fingerprint

    @staticmethod
    def _generate(images: torch.Tensor, name: str, severity: int, split: Split) -> torch.Tensor:
        return corrupt(images, name, severity, corruption_seed(name, severity, split))
