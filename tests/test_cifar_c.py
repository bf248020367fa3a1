"""CIFAR-10-C / CIFAR-100-C loaders on tiny fixtures in the real file formats, the generated
fallback, file checks, user weights, WRN-28-10 and the corruption leaderboard columns."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
from cells_fixture import cell_row, frame

from benchmark.engine.runner import RunConfig, Runner
from benchmark.errors import DatasetNotFoundError, ShiftbenchError
from benchmark.layers.models import create_model
from benchmark.registry import SUITES
from benchmark.report import leaderboard
from benchmark.specs import AdapterSpec
from benchmark.suite import Recipe, Suite
from benchmark.weights import check_compatible, load_state_dict_file
from suites.cifar_c import Cifar100C, CifarC, GeneratedDataWarning
from suites.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from suites.digits_c import DigitsC

N_TRAIN_PER_BATCH, N_TEST = 4, 6


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTBENCH_CACHE", str(tmp_path / "cache"))


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def random_images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def write_batch(path, images, labels, label_key=b"labels"):
    """A CIFAR python-version batch: data rows are R (1024), G (1024), B (1024) values."""
    entry = {b"batch_label": b"fixture", label_key: [int(x) for x in labels],
             b"data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072),
             b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def write_cifar10(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(1, 6):
        write_batch(folder / f"data_batch_{b}", random_images(N_TRAIN_PER_BATCH, b),
                    np.arange(N_TRAIN_PER_BATCH) + b)
    images, labels = random_images(N_TEST, 99), np.array([3, 1, 4, 1, 5, 9])
    write_batch(folder / "test_batch", images, labels)
    return images, labels


def severity_block(images, corruption, severity):
    """Fixture content of one severity: recognisable per corruption and severity."""
    shift = 7 * CORRUPTIONS.index(corruption) + 40 * severity
    return ((images.astype(np.int64) + shift) % 256).astype(np.uint8)


def write_cifar10_c(root, images, labels, folder="CIFAR-10-C"):
    out = root / folder
    out.mkdir(parents=True)
    for c in CORRUPTIONS:
        np.save(out / f"{c}.npy", np.concatenate([severity_block(images, c, s)
                                                  for s in SEVERITIES]))
    np.save(out / "labels.npy", np.tile(labels, 5).astype(np.uint8))  # uint8, as released
    return out


def fixture_suite(root, cls=CifarC, **attrs):
    """The real suite class with the fixture's md5s pinned in place of torchvision's."""
    folder = root / cls.clean_folder
    pinned = {
        "clean_train_md5": {n: md5(folder / n) for n in cls.clean_train_md5},
        "clean_test_md5": {n: md5(folder / n) for n in cls.clean_test_md5},
        **attrs,
    }
    return type(f"Fixture{cls.__name__}", (cls,), pinned)(root=root)


@pytest.fixture
def official(tmp_path):
    root = tmp_path / "data"
    images, labels = write_cifar10(root)
    write_cifar10_c(root, images, labels)
    return root, images, labels


def test_registered_suites_recipes_and_targets():
    for name, arch, classes in (("cifar10-c", "small_resnet", 10),
                                ("cifar10-c-wrn", "wrn28_10", 10),
                                ("cifar100-c", "small_resnet", 100),
                                ("cifar100-c-wrn", "wrn28_10", 100)):
        cls = SUITES.get(name)
        assert cls.recipe.arch == arch and cls.num_classes == classes
        assert len(cls.targets) == 75 and "jpeg_compression-5" in cls.targets
        factors = cls().target_factors()
        assert factors["gaussian_noise-3"] == {"corruption": "gaussian_noise", "severity": 3}
    assert SUITES.get("cifar10-c").source == "cifar10"
    assert SUITES.get("cifar100-c").source == "cifar100"
    digits_c = SUITES.get("digits-c")()
    assert digits_c.target_factors()["fog-2"] == {"corruption": "fog", "severity": 2}


def test_clean_md5s_are_torchvisions():
    from torchvision.datasets import CIFAR10, CIFAR100

    for ours, theirs in ((CifarC, CIFAR10), (Cifar100C, CIFAR100)):
        assert ours.clean_train_md5 == dict(theirs.train_list)
        assert ours.clean_test_md5 == dict(theirs.test_list)
        assert ours.clean_release.md5 == theirs.tgz_md5
        assert ours.clean_release.url == theirs.url and ours.clean_folder == theirs.base_folder


def test_source_domain_reads_the_pickled_batches(official):
    root, test_images, test_labels = official
    suite = fixture_suite(root)
    train, test = suite.load("cifar10", "train"), suite.load("cifar10", "test")
    assert train.images.shape == (5 * N_TRAIN_PER_BATCH, 3, 32, 32)
    assert train.images.dtype == torch.float32
    assert train.labels.tolist() == [i + b for b in range(1, 6) for i in range(4)]
    assert torch.equal(test.labels, torch.from_numpy(test_labels))
    # Channel-major rows: pixel (0, 1) of channel G of image 2 is data[2][1024 + 1].
    assert test.images[2, 1, 0, 1].item() == pytest.approx(test_images[2, 0, 1, 1] / 255)
    assert torch.equal(test.images, torch.from_numpy(test_images).permute(0, 3, 1, 2) / 255)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_severity_selects_its_block_of_rows(official, severity):
    root, images, labels = official
    suite = fixture_suite(root)
    assert suite.rows_per_severity() == N_TEST
    data = suite.load(f"fog-{severity}", "test")
    expected = torch.from_numpy(severity_block(images, "fog", severity)).permute(0, 3, 1, 2)
    assert torch.equal(data.images, expected / 255)
    assert data.images.min() >= 0 and data.images.max() <= 1
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == labels.tolist()
    train = suite.load(f"fog-{severity}", "train")  # transductive: the test images
    assert torch.equal(train.images, data.images)


def test_missing_data_names_paths_and_where_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="--data-root"):
        CifarC(root=None).load("cifar10", "test")
    with pytest.raises(DatasetNotFoundError,
                       match=r"cifar-10-batches-py: data_batch_1.*cs\.toronto\.edu.*--download"):
        CifarC(root=tmp_path).load("cifar10", "train")
    images, labels = write_cifar10(tmp_path)
    (write_cifar10_c(tmp_path, images, labels) / "snow.npy").unlink()
    suite = fixture_suite(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"CIFAR-10-C/snow\.npy.*zenodo\.org"):
        suite.load("snow-1", "test")
    (tmp_path / "CIFAR-10-C" / "labels.npy").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"labels\.npy"):
        fixture_suite(tmp_path).load("fog-1", "test")


def test_clean_checksum_failure_names_the_file(official):
    root, _, _ = official
    suite = fixture_suite(root)
    with open(root / "cifar-10-batches-py" / "data_batch_3", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ShiftbenchError, match=r"checksum mismatch for \S*data_batch_3"):
        suite.load("cifar10", "train")
    # The real class expects torchvision's md5s: the fixture files fail it by name.
    with pytest.raises(ShiftbenchError, match=r"data_batch_1: md5 \w+, expected c99cafc1"):
        CifarC(root=root).load("cifar10", "test")


def test_corrupted_file_checks(official):
    root, images, _ = official
    folder = root / "CIFAR-10-C"
    fog_md5 = md5(folder / "fog.npy")
    fixture_suite(root, npy_md5={"fog": fog_md5}).load("fog-1", "test")  # pinned and equal
    with pytest.raises(ShiftbenchError, match=r"checksum mismatch for \S*fog\.npy"):
        fixture_suite(root, npy_md5={"fog": "0" * 32}).load("fog-1", "test")
    # A wrong shape (e.g. a file from another release) is named with the expected one.
    np.save(folder / "frost.npy", np.zeros((5 * N_TEST, 32, 32), np.uint8))
    with pytest.raises(ShiftbenchError,
                       match=r"frost\.npy holds \(30, 32, 32\).*\(30, 32, 32, 3\)"):
        fixture_suite(root).load("frost-2", "test")
    # Labels that do not repeat the clean test labels: CIFAR-10 and -100 mixed up.
    np.save(folder / "labels.npy", np.zeros(5 * N_TEST, np.uint8))
    with pytest.raises(ShiftbenchError, match="does not repeat the clean test labels"):
        fixture_suite(root).load("fog-1", "test")


def test_release_tar_is_checked_when_present(official):
    root, _, _ = official
    tar_path = root / "CIFAR-10-C.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(root / "CIFAR-10-C" / "labels.npy", arcname="CIFAR-10-C/labels.npy")
    with pytest.raises(ShiftbenchError, match=r"CIFAR-10-C\.tar: md5 \w+, expected 56bf5dce"):
        fixture_suite(root).load("fog-1", "test")
    release = CifarC.corrupted_release
    pinned = type(release)(release.url, release.filename, md5(tar_path), release.size)
    assert len(fixture_suite(root, corrupted_release=pinned).load("fog-1", "test")) == N_TEST


def test_fingerprint_names_the_data_kind_and_follows_the_files(official):
    root, _, _ = official
    first = fixture_suite(root).fingerprint()
    assert first.startswith("official:") and fixture_suite(root).fingerprint() == first
    np.save(root / "CIFAR-10-C" / "zoom_blur.npy", np.zeros((5 * N_TEST, 32, 32, 3), np.uint8))
    assert fixture_suite(root).fingerprint() != first


def test_generated_fallback_writes_the_release_layout_once(tmp_path):
    images, labels = write_cifar10(tmp_path)
    suite = fixture_suite(tmp_path)
    with pytest.warns(GeneratedDataWarning, match="not the official release"):
        data = suite.load("gaussian_noise-5", "test")
    path = tmp_path / "CIFAR-10-C-generated" / "gaussian_noise.npy"
    array = np.load(path)
    assert array.shape == (5 * N_TEST, 32, 32, 3) and array.dtype == np.uint8
    clean = torch.from_numpy(images).permute(0, 3, 1, 2) / 255
    seed = (50_000 + 100 * CORRUPTIONS.index("gaussian_noise") + 10 * 5) * 1000
    assert torch.equal(data.images, corrupt(clean, "gaussian_noise", 5, seed))
    assert data.labels.tolist() == labels.tolist()
    assert np.array_equal(np.load(tmp_path / "CIFAR-10-C-generated" / "labels.npy"),
                          np.tile(labels, 5))
    assert not (tmp_path / "CIFAR-10-C").exists()
    stamp = path.stat().st_mtime_ns
    with pytest.warns(GeneratedDataWarning):
        again = fixture_suite(tmp_path).load("gaussian_noise-5", "test")
    assert torch.equal(again.images, data.images) and path.stat().st_mtime_ns == stamp
    # Another generator key (here: chunking) regenerates instead of reusing stale files.
    with pytest.warns(GeneratedDataWarning):
        fixture_suite(tmp_path, generation_chunk=4).load("gaussian_noise-1", "test")
    assert path.stat().st_mtime_ns != stamp


def test_generated_and_official_fingerprints_differ(tmp_path):
    images, labels = write_cifar10(tmp_path)
    with pytest.warns(GeneratedDataWarning):
        generated = fixture_suite(tmp_path).fingerprint()
    assert generated.startswith("generated:")
    assert len(list((tmp_path / "CIFAR-10-C-generated").glob("*.npy"))) == 16
    write_cifar10_c(tmp_path, images, labels)
    official = fixture_suite(tmp_path).fingerprint()
    assert official.startswith("official:") and official[9:] != generated[10:]


def test_cifar100_reads_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_batch(folder / "train", random_images(5, 1), [99, 0, 57, 3, 12], b"fine_labels")
    images, labels = random_images(N_TEST, 2), np.array([90, 2, 44, 7, 7, 1])
    write_batch(folder / "test", images, labels, b"fine_labels")
    write_cifar10_c(tmp_path, images, labels, folder="CIFAR-100-C")
    suite = fixture_suite(tmp_path, Cifar100C)
    assert suite.load("cifar100", "train").labels.tolist() == [99, 0, 57, 3, 12]
    assert suite.load("contrast-2", "test").labels.tolist() == labels.tolist()


# ---- weights ---------------------------------------------------------------------------
def test_weights_round_trip_safetensors_and_nested_torch_save(tmp_path):
    from safetensors.torch import save_file

    model = create_model("small_resnet", 10)
    state = model.state_dict()
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}},
               tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        loaded = load_state_dict_file(tmp_path / name)
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)
        check_compatible(model, loaded)
        create_model("small_resnet", 10).load_state_dict(loaded)
    # Pre-0.4.1 checkpoints have no BN batch counters; they load all the same.
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    check_compatible(model, old)
    create_model("small_resnet", 10).load_state_dict(old)


def test_weights_errors_name_the_file_and_the_keys(tmp_path):
    model = create_model("small_resnet", 10)
    other = create_model("small_resnet", 100).state_dict()
    del other["stem.0.weight"]
    other["extra.weight"] = torch.zeros(1)
    with pytest.raises(ShiftbenchError, match=r"missing 1: stem\.0\.weight; unexpected 1: "
                                              r"extra\.weight; shape mismatch 2: fc\.weight"):
        check_compatible(model, other)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ShiftbenchError, match=r"cannot read weights file \S*junk\.pt"):
        load_state_dict_file(tmp_path / "junk.pt")
    torch.save(model, tmp_path / "whole_model.pt")  # a pickled module, refused unread
    with pytest.raises(ShiftbenchError, match="whole_model.pt"):
        load_state_dict_file(tmp_path / "whole_model.pt")
    with pytest.raises(ShiftbenchError, match="not found"):
        load_state_dict_file(tmp_path / "absent.safetensors")


def test_wrn28_10_size_and_robustbench_names():
    model = create_model("wrn28_10", 10)
    assert sum(p.numel() for p in model.parameters()) == 36_479_194
    keys = set(model.state_dict())
    for key in ("conv1.weight", "block1.layer.0.convShortcut.weight", "block1.layer.3.bn2.bias",
                "block2.layer.0.conv1.weight", "block3.layer.3.conv2.weight",
                "block3.layer.2.bn1.running_var", "bn1.weight", "fc.weight", "fc.bias"):
        assert key in keys
    assert "block1.layer.1.convShortcut.weight" not in keys  # identity blocks have none
    # 12 blocks x (2 BN x 5 entries + 2 convs) + 3 shortcuts + stem + final BN (5) + fc (2)
    assert len(keys) == 155
    small = create_model("wide_resnet", 10, depth=16, widen_factor=1).eval()
    assert small(torch.rand(2, 3, 32, 32)).shape == (2, 10)


# ---- leaderboard ----------------------------------------------------------------------
def corruption_cells(error_of, adapters=("source", "tent"), seeds=(0, 1), skip=()):
    rows = []
    for adapter in adapters:
        for seed in seeds:
            for target in CifarC.targets:
                if (adapter, target) in skip:
                    continue
                c, s = target.rsplit("-", 1)
                rows.append(cell_row(adapter, target, seed, 100 - error_of(adapter, c, int(s))))
            rows.append(cell_row(adapter, "cifar10", seed, 94.0, role="source"))
    return frame(rows)


def test_mce_and_corruption_columns():
    def error(adapter, corruption, severity):
        if adapter == "source":
            return 50.0
        return 25.0 if corruption != "fog" else 10.0 * severity  # fog: 10, 20, ..., 50

    board = leaderboard.board_frame(CifarC(), corruption_cells(error)).set_index("adapter")
    assert not set(CifarC.targets) & set(board.columns)  # per-target columns moved out
    assert {"mean_error", "mCE(vs source)", "c:fog", "s:5", "src:cifar10"} <= set(board.columns)
    tent, source = board.loc["tent"], board.loc["source"]
    assert source["mCE(vs source)"] == pytest.approx(100)
    # 14 corruptions at 25/50, fog at (10+...+50)/(5*50) = 0.6: (14 * 0.5 + 0.6) / 15.
    assert tent["mCE(vs source)"] == pytest.approx(100 * (14 * 0.5 + 0.6) / 15)
    assert tent["c:fog"] == pytest.approx(30) and tent["c:snow"] == pytest.approx(25)
    assert tent["s:1"] == pytest.approx((14 * 25 + 10) / 15)
    assert tent["s:5"] == pytest.approx((14 * 25 + 50) / 15)
    assert tent["mean_error"] == pytest.approx((14 * 25 + 30) / 15)
    assert tent["mean_error"] == pytest.approx(100 - tent["score"])
    assert tent["mCE_baseline"] == "source (2 seeds)"


def test_mce_of_half_the_source_error_is_50_and_nan_without_source():
    flat = corruption_cells(lambda adapter, c, s: 50.0 if adapter == "source" else 25.0)
    board = leaderboard.board_frame(CifarC(), flat).set_index("adapter")
    assert board.loc["tent", "mCE(vs source)"] == pytest.approx(50)
    partial = corruption_cells(lambda adapter, c, s: 25.0, skip={("source", "fog-3")})
    board = leaderboard.board_frame(CifarC(), partial).set_index("adapter")
    assert math.isnan(board.loc["tent", "mCE(vs source)"])
    assert "missing: no finished 'source' cells for fog-3" in board.loc["tent", "mCE_baseline"]
    assert board.loc["tent", "c:fog"] == pytest.approx(25)  # own errors still reported


def test_ordinary_suites_keep_per_target_columns():
    digits = SUITES.get("digits")()
    rows = [cell_row("source", "digits-m", 0, 60.0),
            cell_row("source", "digits", 0, 98.0, role="source")]
    board = leaderboard.board_frame(digits, pd.DataFrame(frame(rows)))
    assert "digits-m" in board.columns and "mCE(vs source)" not in board.columns


class RunnableFixtureCifarC(CifarC):
    """The real loaders and leaderboard path with a seconds-long recipe for 6-image fixtures;
    md5s are pinned per test (see ``fixture_suite``)."""

    recipe = Recipe(arch="small_resnet", epochs=1, batch_size=10, lr=0.05)


def test_runner_scores_corruption_targets_and_writes_corruption_columns(official, tmp_path):
    root, _, _ = official
    folder = root / "cifar-10-batches-py"
    RunnableFixtureCifarC.clean_train_md5 = {n: md5(folder / n) for n in CifarC.clean_train_md5}
    RunnableFixtureCifarC.clean_test_md5 = {"test_batch": md5(folder / "test_batch")}
    SUITES.register("fixture-cifar10-c")(RunnableFixtureCifarC)
    try:
        config = RunConfig(suite="fixture-cifar10-c", seeds=[0],
                           adapters=[AdapterSpec("source"), AdapterSpec("adabn")],
                           targets=["fog-*"], results=tmp_path / "R",
                           leaderboards=tmp_path / "L",
                           data_root=root, progress=False)
        summary = Runner(config).run()
    finally:
        SUITES.unregister("fixture-cifar10-c")
    assert (summary.done, summary.failed) == (2 * 6, 0), summary.failures
    board = pd.read_csv(tmp_path / "L" / "fixture-cifar10-c.csv").set_index("adapter")
    cells = pd.read_csv(tmp_path / "L" / "fixture-cifar10-c-cells.csv")
    assert "fog-3" not in board.columns
    assert set(cells.domain) == {"cifar10"} | {f"fog-{s}" for s in SEVERITIES}
    # a run restricted with --targets ranks on its own targets: mCE over fog alone
    target_cells = cells[cells.role == "target"].set_index(["adapter", "domain"]).score
    fog = [f"fog-{s}" for s in SEVERITIES]
    expected = (100 - target_cells["adabn"][fog]).sum() / (100 - target_cells["source"][fog]).sum()
    assert board.loc["adabn", "mCE(vs source)"] == pytest.approx(100 * expected, abs=0.02)
    assert board.loc["source", "mCE(vs source)"] == pytest.approx(100)
    assert cells.data_fingerprint.str.startswith("official:").all()
    errors = 100 - cells[(cells.adapter == "adabn") & (cells.role == "target")].set_index(
        "domain").score
    assert board.loc["adabn", "c:fog"] == pytest.approx(
        errors[[f"fog-{s}" for s in SEVERITIES]].mean(), abs=0.01)


# ---- digits-c disk cache -----------------------------------------------------------------
class TwoTargetDigitsC(DigitsC):
    """digits-c's code paths on two targets, so a cold start takes a second, not a minute."""

    targets = ("fog-1", "gaussian_noise-4")


def test_digits_c_cold_start_caches_test_sets_and_fingerprint(tmp_path):
    cold = TwoTargetDigitsC()
    fingerprint = cold.fingerprint()
    assert fingerprint == Suite.fingerprint(TwoTargetDigitsC())  # the uncached definition
    [meta] = (tmp_path / "cache" / "digits-c").glob("*.json")
    assert json.loads(meta.read_text()) == {"fingerprint": fingerprint}
    warm = TwoTargetDigitsC()
    assert warm.fingerprint() == fingerprint
    assert torch.equal(warm.load("fog-1", "test").images, cold.load("fog-1", "test").images)
    # A warm start takes the stored fingerprint as it is, without regenerating the data.
    meta.write_text(json.dumps({"fingerprint": "stored"}))
    assert TwoTargetDigitsC().fingerprint() == "stored"


@pytest.fixture
def local_http(tmp_path):
    """A loopback HTTP server over tmp_path/www, standing in for the download mirror."""
    import functools
    import http.server
    import threading

    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_uses_the_archive_and_says_how_when_it_fails(tmp_path, local_http):
    """--download through torchvision's downloader (download, md5 check, extraction) from a
    loopback server; a missing archive ends in the manual steps."""
    www, base_url = local_http
    staging = tmp_path / "staging"
    write_cifar10(staging)
    archive = www / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    release = CifarC.clean_release
    good = type(release)(f"{base_url}/{archive.name}", release.filename, md5(archive),
                         release.size)
    pins = {"clean_train_md5": {n: md5(staging / "cifar-10-batches-py" / n)
                                for n in CifarC.clean_train_md5},
            "clean_test_md5": {"test_batch": md5(staging / "cifar-10-batches-py" / "test_batch")}}
    root = tmp_path / "data"
    suite = type("Offline", (CifarC,), {**pins, "clean_release": good})(root=root, download=True)
    assert len(suite.load("cifar10", "test")) == N_TEST
    assert (root / "cifar-10-batches-py" / "data_batch_5").is_file()
    bad = type(release)(f"{base_url}/absent.tar.gz", release.filename, release.md5, release.size)
    suite = type("Unreachable", (CifarC,), {"clean_release": bad})(root=tmp_path / "empty",
                                                                    download=True)
    with pytest.raises(DatasetNotFoundError, match=r"downloading .*absent\.tar\.gz failed.*"
                                                   r"tar -xzf cifar-10-python\.tar\.gz"):
        suite.load("cifar10", "train")


def test_labels_must_cover_the_test_set_once_per_severity(official):
    root, _, labels = official
    np.save(root / "CIFAR-10-C" / "labels.npy", np.tile(labels[:-1], 5))
    with pytest.raises(ShiftbenchError, match=r"labels\.npy holds \(25,\).*expected \(30,\)"):
        fixture_suite(root).load("fog-1", "test")


def test_split_fingerprint_follows_files_and_rows(official):
    root, _, _ = official
    suite = fixture_suite(root)
    fog2 = suite.split_fingerprint("fog-2", "test")
    assert suite.split_fingerprint("fog-2", "train") == fog2  # the same images
    assert len({fog2, suite.split_fingerprint("fog-3", "test"),
                suite.split_fingerprint("snow-2", "test"),
                suite.split_fingerprint("cifar10", "test"),
                suite.split_fingerprint("cifar10", "train")}) == 5
    np.save(root / "CIFAR-10-C" / "fog.npy", np.zeros((5 * N_TEST, 32, 32, 3), np.uint8))
    assert fixture_suite(root).split_fingerprint("fog-2", "test") != fog2
