import pytest
import torch
from torch import nn

from trainables import (
    WeightsUnavailableError,
    build_model,
    ensure_pretrained_weights,
    freeze,
    pretrained_weights_file,
    set_train_mode,
)

RESNET_STAGES = ["layer1", "layer2", "layer3", "layer4"]
LITE_STAGE_BLOCKS = [range(0, 3), range(3, 5), range(5, 11), range(11, 16)]


def resnet_expected_frozen(name: str, depth: int) -> bool:
    if depth == 0:
        return False
    top = name.split(".")[0]
    return top in ("conv1", "bn1") or top in RESNET_STAGES[:depth]


def lite_expected_frozen(name: str, depth: int) -> bool:
    if depth == 0:
        return False
    top = name.split(".")[0]
    if top in ("_conv_stem", "_bn0"):
        return True
    if top == "_blocks":
        block = int(name.split(".")[1])
        return any(block in r for r in LITE_STAGE_BLOCKS[:depth])
    return top in ("_conv_head", "_bn1") and depth == 4


@pytest.mark.parametrize("depth", range(5))
@pytest.mark.parametrize(
    ("model", "expected"),
    [("resnet18", resnet_expected_frozen), ("efficientnet_lite0", lite_expected_frozen)],
)
def test_freeze_depth_freezes_exactly_the_intended_parameters(model, expected, depth):
    net = build_model(model, num_classes=5, pretrained=False, image_size=64)
    frozen = freeze(net, model, depth)
    for name, param in net.named_parameters():
        assert param.requires_grad != expected(name, depth), name
    # The head always trains.
    assert any(
        p.requires_grad for n, p in net.named_parameters() if n.split(".")[0] in ("fc", "_fc")
    )
    # Frozen BatchNorm layers stay in eval mode; the others train.
    set_train_mode(net, frozen)
    frozen_ids = {id(m) for f in frozen for m in f.modules()}
    for name, module in net.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.training == (id(module) not in frozen_ids), name


@pytest.mark.parametrize("model", ["resnet18", "efficientnet_lite0"])
def test_frozen_stages_keep_bn_statistics_and_build_no_graph(model):
    net = build_model(model, num_classes=3, pretrained=False, image_size=64)
    frozen = freeze(net, model, 2)
    set_train_mode(net, frozen)
    last_frozen = frozen[-1]
    outputs = []
    last_frozen.register_forward_hook(lambda m, i, o: outputs.append(o))
    bn = next(m for f in frozen for m in f.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    net(torch.randn(4, 3, 64, 64)).sum().backward()
    assert torch.equal(bn.running_mean, before)
    assert outputs and outputs[0].grad_fn is None and not outputs[0].requires_grad


@pytest.mark.parametrize(
    ("model", "blocks", "file"),
    [
        ("efficientnet_lite0", 16, "efficientnet-lite0"),
        ("efficientnet_lite1", 21, "efficientnet-lite1-77cc7160.pth"),
        ("efficientnet_lite2", 21, "efficientnet-lite2-9656183e.pth"),
    ],
)
def test_lite_pretrained_weights_load_strictly_from_their_packages(model, blocks, file):
    path = pretrained_weights_file(model)
    assert path.is_file() and path.name.startswith(file)
    state = torch.load(path, weights_only=True)
    net = build_model(model, num_classes=5, pretrained=True, image_size=96)
    assert len(net._blocks) == blocks
    # Every tensor of the architecture came from the file (strict load), the head is new.
    mine = net.state_dict()
    assert set(mine) == set(state)
    for key, value in state.items():
        if not key.startswith("_fc."):
            assert torch.equal(mine[key], value), key
    assert net._fc.out_features == 5
    # Four stride stages, each opened by a stride-2 block (after the first's stride-1 block).
    from trainables.models._backbones import lite_stages

    stages = lite_stages(net)
    assert len(stages) == 4 and stages[0].start == 0 and stages[-1].stop == blocks


@pytest.mark.parametrize("model", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_and_lite2_split_at_a_frozen_depth_like_the_whole_network(model):
    from trainables.models._models import STEM, frozen_output_part, run_parts

    net = build_model(model, num_classes=3, pretrained=True, image_size=64)
    frozen = freeze(net, model, 3)
    set_train_mode(net, frozen)
    net.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        prefix = run_parts(net, model, x, STEM, frozen_output_part(3))
        assert torch.allclose(
            net(x), run_parts(net, model, prefix, frozen_output_part(3)), atol=1e-4
        )


def test_missing_resnet_weights_name_file_folder_and_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as err:
        ensure_pretrained_weights("resnet18", download=False)
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "--space lite" in message and "pretrained: false" in message


def test_cached_resnet_weights_are_used_through_torchvision(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torchvision

    reference = torchvision.models.resnet18()
    torch.nn.init.constant_(reference.conv1.weight, 0.125)
    path = pretrained_weights_file("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    net = build_model("resnet18", num_classes=4, pretrained=True)
    assert torch.all(net.conv1.weight == 0.125)
    assert net.fc.out_features == 4


@pytest.mark.parametrize("model", ["resnet18", "efficientnet_lite0"])
def test_the_network_split_at_any_frozen_depth_computes_the_same_logits(model):
    from trainables.models._models import STEM, frozen_output_part, run_parts

    torch.manual_seed(0)
    net = build_model(model, num_classes=3, pretrained=False, image_size=64)
    x = torch.randn(4, 3, 64, 64)
    for depth in range(1, 5):
        frozen = freeze(net, model, depth)
        set_train_mode(net, frozen)  # the trained part draws dropout masks: same seed, same masks
        torch.manual_seed(1)
        whole = net(x)
        part = frozen_output_part(depth)
        with torch.no_grad():
            prefix = run_parts(net, model, x, STEM, part)
        torch.manual_seed(1)
        split = run_parts(net, model, prefix, part)
        assert torch.allclose(whole, split, atol=1e-5), depth
        assert prefix.dim() == (2 if depth == 4 else 4)
    with pytest.raises(ValueError, match="depth"):
        frozen_output_part(0)
