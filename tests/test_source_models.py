"""Published source models by name (--source-model), read offline from each library's cache.

The weights files are small random models written in the exact place and format each library
caches its downloads: torch hub's ``checkpoints/`` folder for torchvision, the Hugging Face
hub cache (refs + snapshots) for timm.
"""

from __future__ import annotations

import os

import pytest
import torch

from benchmark.engine.runner import RunConfig, Runner
from benchmark.errors import ShiftbenchError
from benchmark.specs import AdapterSpec
from suites.digits import Digits

TV_NAME = "mobilenet_v3_small.IMAGENET1K_V1"


def calibrated(model: torch.nn.Module, images: int = 256) -> torch.nn.Module:
    """A random model whose BN statistics come from the digits: in eval mode its outputs
    then differ from image to image (with init statistics they are constant up to float
    noise, and argmax ties would decide the scores)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(Digits().load("digits", "train").images[:images])
        # only the digits' classes can win, so scores are not all zero: a wrong model or
        # a wrong standardization would show as another accuracy
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        head.bias[10:] = -1e4
    return model.eval()


def torchvision_cache(tmp_path, monkeypatch, seed: int = 0) -> tuple[torch.nn.Module, str]:
    """A random MobileNetV3-small written where torch hub caches torchvision's weights."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.get_model_weights("mobilenet_v3_small")["IMAGENET1K_V1"]
    torch.manual_seed(seed)
    model = calibrated(torchvision.models.mobilenet_v3_small())
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / os.path.basename(weights.url)
    torch.save(model.state_dict(), path)
    return model, str(path)


def config(tmp_path, source_model: str, adapters=("source", "ptbn")) -> RunConfig:
    return RunConfig(suite="tiny-digits-1000", adapters=[AdapterSpec(a) for a in adapters],
                     seeds=[0], targets=["digits-m"], results=tmp_path / "R",
                     leaderboards=tmp_path / "L", progress=False, source_model=source_model)


def standardized_accuracy(model: torch.nn.Module, mean, std, domain: str) -> float:
    data = Digits().load(domain, "test")
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = torch.cat([model((data.images[i:i + 128] - mean) / std)
                            for i in range(0, len(data), 128)])
    return 100.0 * (logits.argmax(1) == data.labels).float().mean().item()


def test_torchvision_weights_from_torch_hubs_cache_score_and_key_cells(tmp_path, monkeypatch):
    import torchvision

    model, path = torchvision_cache(tmp_path, monkeypatch)
    summary = Runner(config(tmp_path, f"torchvision:{TV_NAME}")).run()
    assert (summary.done, summary.failed) == (4, 0), summary.failures
    board = summary.board.set_index("adapter")
    weights = torchvision.models.get_model_weights("mobilenet_v3_small")["IMAGENET1K_V1"]
    transforms = weights.transforms()
    # the source row is the cached model itself, standardized with the weights' mean/std
    expected = standardized_accuracy(model, transforms.mean, transforms.std, "digits-m")
    assert expected > 5 and board.loc["source", "digits-m"] == pytest.approx(expected, abs=0.01)
    cells = (tmp_path / "L" / "tiny-digits-1000-cells.csv").read_text()
    from benchmark.store import file_sha256

    assert file_sha256(path) in cells  # the weights' digest is in every cell's provenance
    # other weights under the same name: new cells, not the old ones reused
    torchvision_cache(tmp_path, monkeypatch, seed=1)
    again = Runner(config(tmp_path, f"torchvision:{TV_NAME}")).run()
    assert (again.done, again.skipped) == (4, 0)


def test_missing_weights_say_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(ShiftbenchError) as err:
        Runner(config(tmp_path, f"torchvision:{TV_NAME}"))
    text = str(err.value)
    assert "download.pytorch.org" in text and str(tmp_path / "empty" / "hub" / "checkpoints") \
        in text
    assert not (tmp_path / "R").exists() or not list((tmp_path / "R").rglob("*.json"))
    for bad in ("resnet50", "keras:resnet50", "torchvision:resnet50.NO_SUCH_WEIGHTS"):
        with pytest.raises(ShiftbenchError, match="source-model|no weights"):
            Runner(config(tmp_path, bad))


def test_class_count_and_training_time_adapters_are_refused(tmp_path, monkeypatch):
    torchvision_cache(tmp_path, monkeypatch)
    wrong = config(tmp_path, f"torchvision:{TV_NAME}")
    wrong.suite = "tiny-digits"  # 10 classes, the model predicts 1000
    with pytest.raises(ShiftbenchError, match="1000 classes"):
        Runner(wrong)
    with pytest.raises(ShiftbenchError, match="changes training.*--source-model"):
        Runner(config(tmp_path, f"torchvision:{TV_NAME}", adapters=("dsbn",)))


def test_timm_weights_from_the_hugging_face_cache(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    import huggingface_hub.constants
    from safetensors.torch import save_file

    name = "test_resnet.r160_in1k"
    cache = tmp_path / "hf"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    torch.manual_seed(0)
    model = calibrated(timm.create_model(name, pretrained=False))
    repo = cache / "models--timm--test_resnet.r160_in1k"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    save_file(model.state_dict(), repo / "snapshots" / revision / "model.safetensors")
    summary = Runner(config(tmp_path, f"timm:{name}")).run()
    assert (summary.done, summary.failed) == (4, 0), summary.failures
    cfg = model.pretrained_cfg
    expected = standardized_accuracy(model, cfg["mean"], cfg["std"], "digits-m")
    board = summary.board.set_index("adapter")
    assert expected > 5 and board.loc["source", "digits-m"] == pytest.approx(expected, abs=0.01)
    with pytest.raises(ShiftbenchError, match="huggingface-cli download timm/test_vit"):
        Runner(config(tmp_path, "timm:test_vit.r160_in1k"))


def test_cli_missing_cache_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    from benchmark.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    code = main(["run", "--suite", "tiny-digits-1000", "--adapters", "source", "--seeds", "1",
                 "--source-model", f"torchvision:{TV_NAME}", "--results", str(tmp_path / "R"),
                 "--leaderboards", str(tmp_path / "L"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "download" in err, err


def test_robustbench_standard_from_its_model_folder_layout(tmp_path, monkeypatch):
    """RobustBench's layout <dir>/cifar10/corruptions/Standard.pt, its checkpoint form (a
    dict holding "state_dict" with DataParallel's "module." prefix), its WRN-28-10."""
    from benchmark.layers.models import wrn28_10

    monkeypatch.setenv("ROBUSTBENCH_MODELS", str(tmp_path / "models"))
    with pytest.raises(ShiftbenchError, match="load_model.*Standard"):
        Runner(config(tmp_path, "robustbench:Standard", adapters=("source",)))
    torch.manual_seed(0)
    model = calibrated(wrn28_10(10), images=32)
    folder = tmp_path / "models" / "cifar10" / "corruptions"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               folder / "Standard.pt")
    run = config(tmp_path, "robustbench:Standard", adapters=("source",))
    run.suite = "tiny-digits-64"  # 10 classes, 64 images per split: WRN-28-10 on a CPU
    summary = Runner(run).run()
    assert (summary.done, summary.failed) == (2, 0), summary.failures
    data = Digits().load("digits-m", "test")
    with torch.no_grad():
        logits = model(data.images[:64])
    expected = 100.0 * (logits.argmax(1) == data.labels[:64]).float().mean().item()
    assert summary.board.set_index("adapter").loc["source", "digits-m"] == pytest.approx(
        expected, abs=0.01)


@pytest.mark.parametrize("name", ["Hendrycks2020AugMix_ResNeXt", "Hendrycks2020AugMix_WRN"])
def test_robustbench_augmix_models_are_built_here_and_standardized_as_robustbench_does(
        tmp_path, monkeypatch, name):
    """The AugMix corruption models (ResNeXt-29 4x32d, WRN-40-2) without the robustbench
    package: RobustBench's module names, its checkpoint form without the "mu"/"sigma"
    buffers, and its input standardization with mean = std = 0.5 around the network."""
    from benchmark.layers.models import CifarResNeXt, WideResNet

    monkeypatch.setenv("ROBUSTBENCH_MODELS", str(tmp_path / "models"))
    torch.manual_seed(0)
    net = (CifarResNeXt(10, depth=29, groups=4, path_width=32) if "ResNeXt" in name
           else WideResNet(10, depth=40, widen_factor=2))
    net = calibrated(net, images=64)
    folder = tmp_path / "models" / "cifar10" / "corruptions"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
               folder / f"{name}.pt")
    run = config(tmp_path, f"robustbench:{name}", adapters=("source",))
    run.suite = "tiny-digits-64"
    summary = Runner(run).run()
    assert (summary.done, summary.failed) == (2, 0), summary.failures
    data = Digits().load("digits-m", "test")
    with torch.no_grad():
        logits = net((data.images[:64] - 0.5) / 0.5)
    expected = 100.0 * (logits.argmax(1) == data.labels[:64]).float().mean().item()
    assert summary.board.set_index("adapter").loc["source", "digits-m"] == pytest.approx(
        expected, abs=0.01)
    with torch.no_grad():  # the standardization matters: unstandardized input scores other
        raw = 100.0 * (net(data.images[:64]).argmax(1) == data.labels[:64]).float().mean()
    assert raw.item() != pytest.approx(expected, abs=0.01)
