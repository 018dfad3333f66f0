"""The backbone registry: every entry keeps the contract the trainable relies on."""

import json

import pytest
import torch

from trainables import build_model, freeze, head, normalization, set_train_mode, stages
from trainables.models._backbones import BACKBONES, N_STAGES, backbone, names
from trainables.models._models import HEAD, N_PARTS, POOL, STEM, run_parts

SIZE = 64


@pytest.mark.parametrize("name", names())
def test_every_backbone_is_a_stem_and_four_stages_of_stride_4_to_32(name):
    torch.manual_seed(0)
    net = build_model(name, num_classes=3, pretrained=False, image_size=SIZE).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        out = run_parts(net, name, x, STEM, STEM + 1)
        for stage in range(1, N_STAGES + 1):
            out = run_parts(net, name, out, stage, stage + 1)
            assert out.shape[-1] == SIZE // 2 ** (stage + 1), (name, stage, out.shape)
        pooled = run_parts(net, name, out, POOL, POOL + 1)
        assert pooled.dim() == 2
        logits = run_parts(net, name, pooled, HEAD, N_PARTS)
        # Part by part equals the whole network.
        assert torch.allclose(logits, net(x), atol=1e-5)
    assert logits.shape == (2, 3) and head(net, name).out_features == 3


@pytest.mark.parametrize("name", names())
def test_every_backbone_freezes_all_but_its_head_at_full_depth(name):
    net = build_model(name, num_classes=3, pretrained=False, image_size=SIZE)
    frozen = freeze(net, name, N_STAGES)
    assert len(stages(net, name)) == N_STAGES + 1
    frozen_params = {id(p) for m in frozen for p in m.parameters()}
    head_params = {id(p) for p in head(net, name).parameters()}
    # Every parameter is frozen or belongs to the head part (the head layer and
    # whatever the family runs between pooling and it).
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert head_params <= trainable
    assert trainable.isdisjoint(frozen_params)
    assert frozen_params | trainable == {id(p) for p in net.parameters()}
    set_train_mode(net, frozen)
    assert all(not m.training for m in frozen)


@pytest.mark.parametrize("name", names())
def test_every_backbone_names_normalisation_weights_and_precision(name):
    entry = backbone(name)
    mean, std = normalization(name)
    assert len(mean) == len(std) == 3 and all(s > 0 for s in std)
    assert entry.input_size >= 32
    assert entry.weights.file().name  # a file name, whether or not it is on this machine
    assert isinstance(entry.cpu_bf16, bool)


def test_an_unknown_backbone_names_the_choices():
    with pytest.raises(KeyError, match="resnet18"):
        backbone("vgg11")
    from trainables import ConfigError, TrialConfig

    with pytest.raises(ConfigError, match="efficientnet_lite0"):
        TrialConfig.from_dict({"model": "vgg11"})
    assert set(names()) == set(BACKBONES)


@pytest.mark.slow
def test_mobilenet_v3_large_runs_a_real_search_export_and_predict(small_flowers, tmp_path):
    """The family added through the registry alone: its built-in space runs a real search
    on random ImageNet-shaped weights saved where torch hub looks, and its rank 1 exports
    (ONNX checked with onnxruntime) and predicts from the export folder."""
    import os
    import subprocess

    from conftest import cli_search, run_cli

    hub = tmp_path / "torch"
    env = {**os.environ, "TORCH_HOME": str(hub)}
    path = subprocess.run(
        ["python", "-c", "import trainables; print(trainables.pretrained_weights_file("
         "'mobilenet_v3_large'))"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert path.startswith(str(hub)) and path.endswith(".pth")
    os.makedirs(os.path.dirname(path))
    torch.manual_seed(0)
    random_init = build_model("mobilenet_v3_large", 1000, pretrained=False)
    torch.save(random_init.state_dict(), path)

    storage = tmp_path / "results"
    found = cli_search(
        "mobilenet", small_flowers, storage, "mnv3", "--num-samples", "1", "--max-epochs", "1",
        env={"TORCH_HOME": str(hub)},
    )  # fmt: skip
    assert found.returncode == 0, found.stdout + found.stderr
    assert "mobilenet_v3_large" in found.stdout
    out = tmp_path / "export"
    code, said, err = run_cli("export", "mnv3", "--storage", str(storage), "--output", str(out))
    assert code == 0, said + err
    assert {"model.pt", "model.onnx", "config.json"} <= {p.name for p in out.iterdir()}
    photo = next(p for p in sorted(small_flowers.rglob("*.jpg")))
    code, predicted, err = run_cli("predict", str(out), str(photo), "--json", "--top", "5")
    assert code == 0, predicted + err
    (result,) = json.loads(predicted)["results"]
    probabilities = [p["probability"] for p in result["predictions"]]
    assert len(probabilities) == 5 and abs(sum(probabilities) - 1) < 1e-3


def test_the_registry_s_activation_and_gpu_figures_are_each_network_s_own():
    """activations_per_byte is what the network's largest stage output holds per uint8
    byte of its input (the disk reserve for frozen activations rests on it); gpu_share is
    a whole number of trials to a GPU."""
    side = 128
    for name, entry in BACKBONES.items():
        net = build_model(name, 5, pretrained=False, image_size=side).eval()
        x, most = torch.zeros(1, 3, side, side), 0.0
        with torch.no_grad():
            for part in range(5):  # the stem, then stages 1-4: what a frozen prefix caches
                x = entry.family.run_part(net, part, x)
                if part:
                    most = max(most, x.numel() / (3 * side * side))
        assert entry.activations_per_byte == pytest.approx(most), name
        assert (1 / entry.gpu_share).is_integer(), name
