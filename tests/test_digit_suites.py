"""Real digit suites (MNIST, SVHN, USPS) on tiny fixtures in the released file formats, on
the real MNIST files when present, and the embedded digits-sv suite."""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from benchmark.cli import main
from benchmark.engine.runner import RunConfig, Runner
from benchmark.errors import DatasetNotFoundError
from benchmark.layers.digit_nets import WeightNormLinear
from benchmark.layers.models import create_model
from benchmark.registry import SUITES
from benchmark.specs import AdapterSpec
from benchmark.suite import Recipe
from benchmark.training import _scheduler
from suites._digit_files import MNIST, CorruptFileError, read_bytes
from suites.digits import Digits
from suites.digits_sv import DigitsSV, font_paths, render_house_numbers
from suites.mnist_svhn import MnistSvhn
from suites.mnist_usps import MnistUsps, MnistUspsH5

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
N_MNIST = {"train": 30, "test": 20}
N_SVHN = {"train": 14, "test": 11}
N_USPS = {"train": 12, "test": 7}


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    """Checksum stamps and the Hugging Face hub cache live in the test's folder."""
    monkeypatch.setenv("SHIFTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(MnistSvhn, "hub_cache", tmp_path / "hub")
    monkeypatch.setattr(MnistUsps, "hub_cache", tmp_path / "hub")


# ---- fixtures in the released formats ---------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def mnist_arrays(split):
    n = N_MNIST[split]
    offset = 0 if split == "train" else 100
    images = np.empty((n, 28, 28), np.uint8)
    for i in range(n):  # image i is flat at value offset + i: its value survives resizing
        images[i] = offset + i
    return images, (np.arange(n) % 10).astype(np.uint8)


def write_mnist(root: Path, gz: bool = True) -> Path:
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = mnist_arrays(split)
        for name, array in ((f"{prefix}-images-idx3-ubyte", images),
                            (f"{prefix}-labels-idx1-ubyte", labels)):
            data = idx_bytes(array)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


def svhn_arrays(split):
    n = N_SVHN[split]
    h, w, c, k = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), np.arange(n),
                             indexing="ij")
    x = ((7 * h + 3 * w + 50 * c + k) % 256).astype(np.uint8)  # (32, 32, 3, N) as released
    digits = np.arange(n) % 10
    y = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]  # (N, 1), 10 = zero
    return x, y, digits


def write_svhn(root: Path) -> Path:
    folder = root / "SVHN"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        x, y, _ = svhn_arrays(split)
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
    return folder


def usps_values(split):
    n = N_USPS[split]
    levels = np.linspace(-1, 1, n)  # image i is flat at levels[i] in the LIBSVM range
    return levels, np.arange(n) % 10


def write_usps(root: Path) -> Path:
    folder = root / "USPS"
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "usps.bz2"), ("test", "usps.t.bz2")):
        levels, digits = usps_values(split)
        lines = [f"{d + 1} " + " ".join(f"{k}:{v:.6f}" for k in range(1, 257))
                 for v, d in zip(levels, digits, strict=True)]
        (folder / name).write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
    return folder


def content_md5s(folder: Path) -> dict[str, str]:
    """md5 of every fixture file's content, keyed as a release names it (without .gz)."""
    return {p.name.removesuffix(".gz"): hashlib.md5(read_bytes(p)).hexdigest()
            for p in folder.iterdir() if p.is_file()}


def with_fixture_checksums(cls, md5: dict[str, str], mirrors: dict[str, tuple] | None = None):
    """The suite with its releases' md5 sums (and mirrors) replaced by the fixtures'."""
    specs = {}
    for domain, spec in cls.domain_specs.items():
        release = spec.release
        changes = {"md5": {n: md5[n] for n in release.md5 if n in md5}}
        if mirrors and release.name in mirrors:
            changes["mirrors"] = mirrors[release.name]
        specs[domain] = dataclasses.replace(spec, release=dataclasses.replace(release, **changes))
    return type(f"Fixture{cls.__name__}", (cls,), {"domain_specs": specs})


def fixture_suite(cls, root: Path, **kwargs):
    md5 = {}
    for folder in (root / "MNIST" / "raw", root / "SVHN", root / "USPS"):
        if folder.is_dir():
            md5.update(content_md5s(folder))
    return with_fixture_checksums(cls, md5)(root=root, **kwargs)


# ---- readers ------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files_gz_or_extracted_read_resized_to_32_rgb(tmp_path, gz):
    write_mnist(tmp_path, gz=gz)
    write_svhn(tmp_path)
    suite = fixture_suite(MnistSvhn, tmp_path)
    for split in ("train", "test"):
        data = suite.load("mnist", split)
        images, labels = mnist_arrays(split)
        assert len(data) == N_MNIST[split]
        batch = data.images[torch.arange(len(data))]
        assert batch.shape == (len(data), 3, 32, 32) and batch.dtype == torch.float32
        assert 0 <= batch.min() and batch.max() <= 1
        # Flat images stay flat through the bilinear resize; grey is replicated to 3 channels.
        expected = torch.from_numpy(images[:, 0, 0].astype(np.float32) / 255)
        assert torch.allclose(batch, expected[:, None, None, None].expand_as(batch), atol=1e-6)
        assert torch.equal(data.labels, torch.from_numpy(labels.astype(np.int64)))


def test_svhn_mat_layout_transposed_and_label_10_is_zero(tmp_path):
    write_mnist(tmp_path)
    write_svhn(tmp_path)
    suite = fixture_suite(MnistSvhn, tmp_path)
    data = suite.load("svhn", "test")
    x, y, digits = svhn_arrays("test")
    assert len(data) == N_SVHN["test"]
    assert (y == 10).any() and data.labels.tolist() == digits.tolist()
    batch = data.images[torch.arange(len(data))]
    expected = torch.from_numpy(x.transpose(3, 2, 0, 1).astype(np.float32) / 255)
    assert batch.shape == (N_SVHN["test"], 3, 32, 32) and torch.equal(batch, expected)
    assert len(suite.load("svhn", "train")) == N_SVHN["train"]


def test_usps_libsvm_labels_minus_one_and_values_mapped_to_unit_range(tmp_path):
    write_mnist(tmp_path)
    write_usps(tmp_path)
    suite = fixture_suite(MnistUsps, tmp_path)
    for split in ("train", "test"):
        data = suite.load("usps", split)
        levels, digits = usps_values(split)
        assert len(data) == N_USPS[split]
        assert data.labels.tolist() == digits.tolist()  # file labels were digit + 1
        batch = data.images[torch.arange(len(data))]
        assert batch.shape == (N_USPS[split], 3, 28, 28)
        assert batch.min() == 0 and batch.max() == 1  # -1 -> 0, 1 -> 1
        expected = torch.from_numpy(((levels + 1) / 2).astype(np.float32))
        assert torch.allclose(batch.mean((1, 2, 3)), expected, atol=0.5 / 255 + 1e-6)


def test_usps_h5_release_is_its_own_suite(tmp_path):
    h5py = pytest.importorskip("h5py")
    write_mnist(tmp_path)
    (tmp_path / "USPS").mkdir()
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "USPS" / "usps.h5", "w") as f:
        for split, n in N_USPS.items():
            group = f.create_group(split)
            group.create_dataset("data", data=rng.uniform(0, 1, (n, 256)))
            group.create_dataset("target", data=np.arange(n)[::-1] % 10)
    suite = fixture_suite(MnistUspsH5, tmp_path)
    data = suite.load("usps", "test")
    assert len(data) == N_USPS["test"]
    assert data.labels.tolist() == (np.arange(N_USPS["test"])[::-1] % 10).tolist()
    batch = data.images[torch.arange(len(data))]
    assert batch.shape == (N_USPS["test"], 3, 28, 28) and 0 <= batch.min() and batch.max() <= 1
    assert suite.fingerprint().startswith("mnist=files;usps=files;sha256=")
    assert suite.fingerprint() != fixture_suite(MnistUsps, write_usps(tmp_path).parent
                                                ).fingerprint()
    # the release's md5 is checked like every other file's: a truncated copy is named
    checked = with_fixture_checksums(MnistUspsH5, content_md5s(tmp_path / "USPS"))
    h5_file = tmp_path / "USPS" / "usps.h5"
    h5_file.write_bytes(h5_file.read_bytes()[:-100])
    with pytest.raises(DatasetNotFoundError, match=f"checksum mismatch for {h5_file}"):
        checked(root=tmp_path).load("usps", "test")


# ---- checksums ----------------------------------------------------------------------------
def test_official_checksums_reject_fixture_files_naming_the_file(tmp_path):
    write_mnist(tmp_path)
    write_svhn(tmp_path)
    with pytest.raises(CorruptFileError, match=r"train-images-idx3-ubyte\.gz.*expected "
                                               + MNIST.md5["train-images-idx3-ubyte"]):
        MnistSvhn(root=tmp_path).load("mnist", "test")


def test_a_changed_file_fails_its_checksum_even_after_a_verified_run(tmp_path):
    folder = write_mnist(tmp_path)
    write_svhn(tmp_path)
    suite_cls = type(fixture_suite(MnistSvhn, tmp_path))
    assert len(suite_cls(root=tmp_path).load("mnist", "test")) == N_MNIST["test"]
    assert list((tmp_path / "cache").rglob("*.json"))  # verification stamps were written
    images, labels = mnist_arrays("test")
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels[::-1])))
    with pytest.raises(CorruptFileError, match=r"t10k-labels-idx1-ubyte\.gz"):
        suite_cls(root=tmp_path).load("mnist", "test")


def test_missing_and_incomplete_data_name_paths_and_fixes(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        MnistSvhn(root=tmp_path).load("mnist", "train")
    text = str(err.value)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in text
    assert "--download" in text and "mnist-hf" in text and "ylecun/mnist" in text
    assert "ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz" in text
    with pytest.raises(DatasetNotFoundError, match="--data-root"):
        MnistSvhn(root=None).load("mnist", "train")
    with pytest.raises(DatasetNotFoundError, match="--download needs --data-root"):
        MnistSvhn(root=None, download=True).load("mnist", "train")
    folder = write_mnist(tmp_path)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"incomplete.*missing t10k-labels-idx1-ubyte"):
        fixture_suite(MnistSvhn, tmp_path).load("mnist", "train")


def test_cli_without_data_exits_nonzero_with_one_message(tmp_path, capsys):
    code = main(["run", "--suite", "mnist-svhn", "--adapters", "source", "--seeds", "1",
                 "--data-root", str(tmp_path / "data"), "--results", str(tmp_path / "R"),
                 "--leaderboards", str(tmp_path / "L"), "--quiet"])
    err = capsys.readouterr().err
    assert code != 0
    assert "MNIST not found" in err and "--download" in err
    assert "Traceback" not in err
    assert not (tmp_path / "data").exists() and not list((tmp_path / "R").rglob("*.json"))


# ---- downloads ----------------------------------------------------------------------------
def test_download_tries_mirrors_in_turn_and_verifies(tmp_path):
    good = write_mnist(tmp_path / "mirror-good")
    bad = tmp_path / "mirror-bad"
    bad.mkdir()
    for i, f in enumerate(sorted(good.iterdir())):  # other bytes under the same names
        bad_bytes = b"<html>moved</html>" if i % 2 else gzip.compress(idx_bytes(np.zeros(3)))
        (bad / f.name).write_bytes(bad_bytes)
    write_svhn(tmp_path / "data")
    md5 = {**content_md5s(good), **content_md5s(tmp_path / "data" / "SVHN")}
    mirrors = (f"file://{tmp_path}/nowhere/", bad.as_uri() + "/", good.as_uri() + "/")
    cls = with_fixture_checksums(MnistSvhn, md5, {"MNIST": mirrors})
    suite = cls(root=tmp_path / "data", download=True)
    assert len(suite.load("mnist", "train")) == N_MNIST["train"]
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(p.name for p in good.iterdir())
    assert suite.fingerprint().startswith("mnist=files;svhn=files;")


def test_download_failure_lists_manual_steps_and_writes_nothing(tmp_path):
    mirrors = (f"file://{tmp_path}/nowhere/", f"file://{tmp_path}/also-nowhere/")
    cls = with_fixture_checksums(MnistSvhn, {}, {"MNIST": mirrors})
    with pytest.raises(DatasetNotFoundError) as err:
        cls(root=tmp_path / "data", download=True).load("mnist", "test")
    text = str(err.value)
    target = tmp_path / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    assert str(target) in text and f"{tmp_path}/also-nowhere/t10k-images-idx3-ubyte.gz" in text
    assert "by hand" in text
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]


# ---- Hugging Face copies ------------------------------------------------------------------
def hf_dataset_dict(make_image):
    datasets = pytest.importorskip("datasets")
    parts = {}
    for split in N_MNIST:
        images, labels = mnist_arrays(split)
        parts[split] = datasets.Dataset.from_dict(
            {"image": [make_image(img) for img in images], "label": labels.tolist()},
            features=datasets.Features({"image": datasets.Image(),
                                        "label": datasets.ClassLabel(num_classes=10)}))
    return datasets.DatasetDict(parts)


def test_hugging_face_copies_in_order_and_recorded_in_the_fingerprint(tmp_path):
    from PIL import Image

    dd = hf_dataset_dict(lambda a: Image.fromarray(a, mode="L"))
    write_svhn(tmp_path)
    svhn_md5 = content_md5s(tmp_path / "SVHN")

    def check(kind):
        suite = with_fixture_checksums(MnistSvhn, svhn_md5)(root=tmp_path)
        data = suite.load("mnist", "test")
        images, labels = mnist_arrays("test")
        assert data.labels.tolist() == labels.tolist()
        batch = data.images[torch.arange(len(data))]
        assert torch.allclose(batch[:, 1, 5, 5], torch.from_numpy(images[:, 0, 0] / 255).float())
        assert suite.fingerprint().startswith(f"mnist={kind};svhn=files;sha256=")
        return suite.fingerprint()

    # 3rd in order: the hub cache (parquet files of a cached snapshot).
    snapshot = tmp_path / "hub" / "datasets--ylecun--mnist" / "snapshots" / ("a" * 40)
    for split in ("train", "test"):
        dd[split].to_parquet(str(snapshot / "mnist" / f"{split}-00000-of-00001.parquet"))
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("a" * 40)
    from_hub = check("hf-hub")
    # 2nd: parquet files under <root>/mnist-hf.
    for split in ("train", "test"):
        dd[split].to_parquet(str(tmp_path / "mnist-hf" / f"{split}.parquet"))
    assert check("hf-parquet") == from_hub.replace("hf-hub", "hf-parquet")
    # 1st: a save_to_disk directory there.
    for f in (tmp_path / "mnist-hf").iterdir():
        f.unlink()
    dd.save_to_disk(str(tmp_path / "mnist-hf"))
    check("hf-disk")
    # The released files win over every copy.
    write_mnist(tmp_path)
    assert fixture_suite(MnistSvhn, tmp_path).fingerprint().startswith("mnist=files;")


# ---- the real MNIST files -----------------------------------------------------------------
@pytest.mark.skipif(not (REAL_DATA / "MNIST" / "raw").is_dir(), reason="no real MNIST here")
def test_real_mnist_files_pass_checksums_and_read_whole():
    suite = MnistSvhn(root=REAL_DATA)
    found = suite.resolve("mnist")
    assert found.kind == "files" and found.md5 == MNIST.md5
    test = suite.load("mnist", "test")
    assert len(test) == 10_000
    assert torch.bincount(test.labels, minlength=10).tolist() == MNIST_TEST_COUNTS
    batch = test.images[torch.arange(0, 10_000, 100)]
    assert batch.shape == (100, 3, 32, 32) and batch.min() == 0 and batch.max() == 1
    assert torch.equal(batch[:, 0], batch[:, 2])  # grey, replicated
    train = suite.load("mnist", "train")
    assert len(train) == 60_000 and train.labels.min() == 0 and train.labels.max() == 9
    # Source checkpoints are shared by the two USPS releases: same MNIST files, same
    # preprocessing (28x28); mnist-svhn resizes MNIST to 32x32, so not with it.
    usps = MnistUsps(root=REAL_DATA).source_fingerprint()
    assert MnistUspsH5(root=REAL_DATA).source_fingerprint() == usps != suite.source_fingerprint()


# ---- end to end on fixtures ----
def source_and_adabn(tmp_path: Path, suite: str) -> RunConfig:
    """A one-seed run of source and AdaBN on a fixture suite with data under tmp/data."""
    return RunConfig(suite=suite, adapters=[AdapterSpec("source"), AdapterSpec("adabn")],
                     seeds=[0], results=tmp_path / "R", leaderboards=tmp_path / "L",
                     data_root=tmp_path / "data", progress=False)

@pytest.mark.slow
def test_runner_trains_and_scores_fixture_mnist_svhn(tmp_path):
    write_mnist(tmp_path / "data")
    write_svhn(tmp_path / "data")
    md5 = {**content_md5s(tmp_path / "data" / "MNIST" / "raw"),
           **content_md5s(tmp_path / "data" / "SVHN")}
    cls = with_fixture_checksums(MnistSvhn, md5)
    cls.recipe = Recipe(arch="small_resnet", epochs=1, batch_size=8, lr=0.01)
    if "tiny-mnist-svhn" not in SUITES:
        SUITES.register("tiny-mnist-svhn")(cls)
    config = source_and_adabn(tmp_path, "tiny-mnist-svhn")
    summary = Runner(config).run()
    assert (summary.done, summary.failed) == (4, 0), summary.failures
    cells = (tmp_path / "L" / "tiny-mnist-svhn-cells.csv").read_text()
    assert "mnist=files;svhn=files;sha256=" in cells


@pytest.mark.slow
def test_test_time_run_needs_only_the_targets_test_files(tmp_path):
    write_mnist(tmp_path / "data")
    folder = write_usps(tmp_path / "data")
    md5 = {**content_md5s(tmp_path / "data" / "MNIST" / "raw"), **content_md5s(folder)}
    train_file = (folder / "usps.bz2").read_bytes()
    (folder / "usps.bz2").unlink()
    cls = with_fixture_checksums(MnistUsps, md5)
    cls.recipe = dataclasses.replace(MnistUsps.recipe, epochs=1, batch_size=8)  # LeNet, SHOT's
    if "tiny-mnist-usps" not in SUITES:
        SUITES.register("tiny-mnist-usps")(cls)
    suite = cls(root=tmp_path / "data")
    assert len(suite.load("usps", "test")) == N_USPS["test"]
    with pytest.raises(DatasetNotFoundError, match=r"usps train split.*usps\.bz2"):
        suite.load("usps", "train")
    before = suite.fingerprint()
    config = source_and_adabn(tmp_path, "tiny-mnist-usps")
    summary = Runner(config).run()
    assert (summary.done, summary.failed) == (4, 0), summary.failures
    # a domain-adaptation adapter needs the target's train split: a failed cell naming it
    config.adapters = [AdapterSpec("dsbn")]
    summary = Runner(config).run()
    assert summary.done == 0 and summary.failed > 0
    assert all("usps.bz2" in f for f in summary.failures), summary.failures
    # adding the train file later leaves the test-time cells valid: nothing re-runs
    (folder / "usps.bz2").write_bytes(train_file)
    assert cls(root=tmp_path / "data").fingerprint() == before
    config.adapters = [AdapterSpec("source"), AdapterSpec("adabn")]
    summary = Runner(config).run()
    assert (summary.done, summary.skipped) == (0, 4)


# ---- the literature's source models ------------------------------------------------------
def test_digit_networks_have_shots_layouts():
    # parameter counts of SHOT's LeNet and DTN with its 256-d head, counted by hand:
    # convs (weights + biases), BN (gamma, beta), bottleneck, weight-normed classifier (v, g, b)
    head = (256 * 2) + (256 * 10 + 10 + 10)
    lenet = (1 * 20 * 25 + 20) + (20 * 50 * 25 + 50) + (800 * 256 + 256) + head
    dtn = ((3 * 64 * 25 + 64) + 128 + (64 * 128 * 25 + 128) + 256 + (128 * 256 * 25 + 256)
           + 512 + (4096 * 256 + 256) + head)
    for arch, size, expected in (("lenet", 28, lenet), ("dtn", 32, dtn)):
        model = create_model(arch, 10)
        assert sum(p.numel() for p in model.parameters()) == expected, arch
        x = torch.rand(4, 3, size, size)
        assert model(x).shape == (4, 10)
        # inputs arrive in [0, 1]; the network standardizes them itself
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        seen: list[torch.Tensor] = []
        first.register_forward_pre_hook(lambda _m, inputs, seen=seen: seen.append(inputs[0]))
        model(torch.ones(2, 3, size, size))
        assert torch.equal(seen[0], torch.ones_like(seen[0]))  # (1 - 0.5) / 0.5
    assert MnistUsps.recipe.arch == "lenet" and MnistUsps.size == 28
    assert MnistSvhn.recipe.arch == "dtn" and MnistSvhn.size == 32


def test_weight_norm_classifier_computes_g_v_over_norm_and_pickles():
    import pickle

    layer = WeightNormLinear(6, 3)
    with torch.no_grad():
        layer.weight_g.mul_(torch.tensor([[2.0], [0.5], [1.0]]))
    v, g = layer.weight_v.detach(), layer.weight_g.detach()
    expected = g * v / torch.sqrt((v ** 2).sum(1, keepdim=True))
    x = torch.randn(5, 6)
    assert torch.allclose(layer(x), x @ expected.T + layer.bias, atol=1e-6)
    layer(x).sum().backward()
    assert layer.weight_v.grad is not None and layer.weight_g.grad is not None
    copy = pickle.loads(pickle.dumps(layer))
    assert torch.equal(copy(x), layer(x))


def test_shot_recipe_schedule_and_smoothing():
    recipe = MnistUsps.recipe
    assert (recipe.lr, recipe.batch_size, recipe.epochs, recipe.schedule,
            recipe.label_smoothing, recipe.weight_decay) == (0.01, 64, 30, "inv", 0.1, 1e-3)
    # recipes without the later field keep the identity they had (checkpoints stay valid)
    assert "label_smoothing" not in Recipe(arch="small_resnet", epochs=1, batch_size=8,
                                           lr=0.1).as_dict()
    assert recipe.as_dict()["label_smoothing"] == 0.1
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = _scheduler(optimizer, "inv", total=100)
    seen = []
    for _ in range(100):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.01 * (1 + 10 * s / 100) ** -0.75 for s in range(1, 101)]
    assert seen == pytest.approx(expected, rel=1e-12)


# ---- digits-sv ----------------------------------------------------------------------------
def test_digits_sv_renders_deterministic_house_numbers_over_the_digits_source():
    assert all(p.is_file() for p in font_paths())
    suite = DigitsSV()
    assert suite.source == Digits.source and suite.recipe == Digits.recipe
    assert torch.equal(suite.load("digits", "test").images, Digits().load("digits", "test").images)
    test, train = suite.load("digits-sv", "test"), suite.load("digits-sv", "train")
    assert (len(train), len(test)) == (1200, 1800)
    assert test.images.shape == (1800, 3, 32, 32)
    assert 0 <= test.images.min() and test.images.max() <= 1
    assert torch.bincount(test.labels, minlength=10).tolist() == [180] * 10
    labels = test.labels[:40].numpy()  # rendering is a pure function of labels and seed
    assert torch.equal(render_house_numbers(labels, 5), render_house_numbers(labels, 5))
    assert not torch.equal(render_house_numbers(labels, 5), render_house_numbers(labels, 6))
    assert not torch.equal(train.images[:10], test.images[:10])
    # Colour: the channels differ (unlike the grey source), and images are not all alike.
    assert (test.images[:, 0] - test.images[:, 2]).abs().mean() > 0.02
    assert test.images.std(0).mean() > 0.1
