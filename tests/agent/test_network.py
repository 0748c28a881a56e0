"""The dual-head network: shapes for every backbone, the paper's structure, the loss, and local-only weights."""

import json
import math
import re

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from agent.network import (
    BACKBONES,
    PAPER_FROZEN_RESNET50,
    DualHeadNet,
    LossConfig,
    NetworkConfig,
    PretrainedWeightsError,
    ResNetFeatures,
    pretrained_weights_file,
)
from sim.errors import CarilError, UnknownNameError, UsageError

TINY = (64, 64)


@pytest.fixture(scope="module")
def nets():
    """One network per backbone at 64x64, each built once (ResNet-50 as the paper preset)."""
    torch.manual_seed(0)
    built = {}
    for name in BACKBONES:
        cfg = (NetworkConfig.preset("paper", pretrained=False, input_size=TINY) if name == "resnet50"
               else NetworkConfig(backbone=name, input_size=TINY))
        built[name] = DualHeadNet(cfg).eval()
    return built


def batch(n=2, size=TINY, seed=0):
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_gives_one_steer_and_n_bins_logits(nets, backbone):
    with torch.inference_mode():
        out = nets[backbone](batch())
    assert set(out) == {"steer", "logits"}
    assert out["steer"].shape == (2,) and out["logits"].shape == (2, 11)
    assert out["steer"].dtype == torch.float32 and torch.isfinite(out["logits"]).all()


def test_paper_preset_matches_the_reference_model(nets):
    cfg = NetworkConfig.preset("paper")
    assert (cfg.backbone, cfg.pretrained, cfg.input_size, cfg.trunk, cfg.head_hidden) == \
        ("resnet50", True, (160, 160), (256, 128), 64)
    assert (cfg.dropout, cfg.n_bins, cfg.pool, cfg.regression_activation) == (0.3, 11, "avg", "none")
    net = nets["resnet50"]
    assert isinstance(net.backbone, ResNetFeatures) and net.backbone.out_channels == 2048
    assert isinstance(net.pool[0], nn.AdaptiveAvgPool2d)

    def layout(seq):
        return [(type(m).__name__, getattr(m, "in_features", None), getattr(m, "out_features", None),
                 getattr(m, "p", None)) for m in seq]

    relu, drop = ("ReLU", None, None, None), ("Dropout", None, None, 0.3)
    assert layout(net.trunk) == [("Linear", 2048, 256, None), relu, drop, ("Linear", 256, 128, None), relu, drop]
    assert layout(net.regression_head) == [("Linear", 128, 64, None), relu, drop, ("Linear", 64, 1, None)]
    assert layout(net.classification_head) == [("Linear", 128, 64, None), relu, drop, ("Linear", 64, 11, None)]
    assert net.num_parameters() == 24_082_764  # ResNet-50 without fc (23,508,032) + trunk and heads
    assert pretrained_weights_file("resnet50") == "resnet50-11ad3fa6.pth"


def test_paper_preset_freezes_what_keras_layers_120_froze(nets):
    net = nets["resnet50"]
    trainable = {n for n, p in net.backbone.named_parameters() if p.requires_grad}
    assert "layer3.3.conv3.weight" not in trainable and "layer3.2.bn3.weight" not in trainable
    assert {"layer3.3.bn3.weight", "layer3.4.conv1.weight", "layer4.2.conv3.weight"} <= trainable
    assert net.num_parameters(trainable_only=True) == 17_775_884
    net.train()  # frozen BatchNorm keeps fixed statistics, the rest trains
    try:
        assert not net.backbone.layer3[3].bn2.training and net.backbone.layer3[3].bn3.training
        assert net.trunk.training
    finally:
        net.eval()


def test_loss_is_half_mse_plus_half_cross_entropy(nets):
    net = nets["small_cnn"]
    images = batch(3)
    targets = {"steer": torch.tensor([0.5, -0.25, 0.0]), "bin": torch.tensor([8, 3, 5])}
    with torch.no_grad():
        plain = net(images)
        out = net(images, targets)
    s, z = plain["steer"].double().numpy(), plain["logits"].double().numpy()
    mse = np.mean((s - targets["steer"].double().numpy()) ** 2)
    log_p = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    ce = -np.mean(log_p[np.arange(3), targets["bin"].numpy()])
    assert out["loss"].ndim == 0 and out["loss"].dtype == torch.float32
    assert out["loss"].item() == pytest.approx(0.5 * mse + 0.5 * ce, rel=1e-6)
    assert set(out["loss_dict"]) == {"loss_regression", "loss_classification", "loss"}
    assert all(isinstance(v, float) for v in out["loss_dict"].values())
    assert out["loss_dict"]["loss_regression"] == pytest.approx(mse, rel=1e-6)
    assert out["loss_dict"]["loss_classification"] == pytest.approx(ce, rel=1e-6)
    assert out["loss_dict"]["loss"] == pytest.approx(out["loss"].item())


def test_huber_loss_and_weights_come_from_the_loss_config():
    torch.manual_seed(0)
    loss_cfg = LossConfig(regression="huber", huber_delta=0.5, w_regression=2.0, w_classification=0.0)
    net = DualHeadNet(NetworkConfig(input_size=TINY), loss_cfg).eval()
    with torch.no_grad():
        s = net(batch(2))["steer"].double()
        target = s + torch.tensor([3.0, 0.25], dtype=torch.float64)  # one error beyond delta, one inside
        out = net(batch(2), {"steer": target.float(), "bin": torch.tensor([0, 10])})
    huber = np.mean([0.5 * (3.0 - 0.25), 0.5 * 0.25**2])  # delta * (|d| - delta / 2) and d^2 / 2
    assert out["loss_dict"]["loss_regression"] == pytest.approx(huber, rel=1e-5)
    assert out["loss"].item() == pytest.approx(2.0 * huber, rel=1e-5)


def test_gradients_reach_backbone_and_both_heads():
    net = DualHeadNet(NetworkConfig(input_size=TINY)).train()
    out = net(batch(4), {"steer": torch.zeros(4), "bin": torch.full((4,), 5)})
    out["loss"].backward()
    for name in ("backbone.0.conv.weight", "trunk.0.weight", "regression_head.3.weight",
                 "classification_head.3.weight"):
        grad = net.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_same_seed_builds_the_same_network():
    states = []
    for _ in range(2):
        torch.manual_seed(7)
        states.append(DualHeadNet(NetworkConfig(input_size=TINY)).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_channels_last_and_bf16_autocast(nets):
    net = nets["small_cnn"]
    images = batch(2)
    with torch.no_grad():
        reference = net(images)
        net.to(memory_format=torch.channels_last)
        try:
            cl = net(images.to(memory_format=torch.channels_last))
        finally:
            net.to(memory_format=torch.contiguous_format)
        torch.testing.assert_close(cl["logits"], reference["logits"], rtol=1e-4, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(images, {"steer": torch.zeros(2), "bin": torch.tensor([1, 2])})
    assert out["loss"].dtype == torch.float32 and math.isfinite(out["loss"].item())
    torch.testing.assert_close(out["logits"].float(), reference["logits"], rtol=0.1, atol=0.1)


def test_tanh_regression_is_bounded():
    torch.manual_seed(0)
    net = DualHeadNet(NetworkConfig(input_size=TINY, regression_activation="tanh")).eval()
    with torch.no_grad():
        steer = net(100.0 * batch(4))["steer"]
    assert steer.abs().max() < 1.0


def test_flatten_pool_sizes_the_trunk_from_the_feature_map():
    net = DualHeadNet(NetworkConfig(input_size=TINY, pool="flatten"))
    assert net.trunk[0].in_features == 192 * 4 * 4  # 64 px / 16 (four stride-2 blocks) = 4
    assert net(batch(2))["logits"].shape == (2, 11)


def test_input_of_the_wrong_size_is_refused(nets):
    with pytest.raises(ValueError, match=re.escape("images must be (B, 3, 64, 64) as the preprocessing makes them, "
                                                   "got (2, 3, 160, 160)")):
        nets["small_cnn"](batch(2, size=(160, 160)))


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"backbone": "vgg16"}, UnknownNameError, "unknown backbone 'vgg16'; valid backbones: small_cnn, resnet18"),
    ({"pretrained": True}, UsageError, "small_cnn has no pretrained weights"),
    ({"backbone": "resnet18", "weights_path": "w.pth"}, UsageError, "is set but pretrained=False"),
    ({"input_size": (16, 16)}, UsageError, "each 32..2048 pixels"),
    ({"trunk": (256, 0)}, UsageError, "must list positive layer widths"),
    ({"dropout": 1.0}, UsageError, "dropout 1.0 must be in [0, 1)"),
    ({"n_bins": 1}, UsageError, "n_bins 1 must be at least 2"),
    ({"pool": "sum"}, UsageError, "pool 'sum' is not one of avg, max, flatten"),
    ({"regression_activation": "sigmoid"}, UsageError, "is not one of none, tanh"),
])
def test_invalid_network_config_says_how_to_fix_it(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        NetworkConfig(**kwargs)


def test_invalid_loss_config_and_presets():
    with pytest.raises(UsageError, match="regression loss 'l1' is not one of mse, huber"):
        LossConfig(regression="l1")
    with pytest.raises(UsageError, match="must be >= 0, not both 0"):
        LossConfig(w_regression=0.0, w_classification=0.0)
    with pytest.raises(UnknownNameError, match="unknown network preset 'huge'; valid network presets: paper, fast"):
        NetworkConfig.preset("huge")
    assert NetworkConfig.preset("fast") == NetworkConfig()
    with pytest.raises(UsageError, match=re.escape("frozen prefix 'layer9.' matches no small_cnn parameter")):
        DualHeadNet(NetworkConfig(input_size=TINY, frozen_backbone_prefixes=("layer9.",)))


def test_configs_round_trip_through_json():
    cfg = NetworkConfig.preset("paper", weights_path="/w/resnet50.pth")
    back = NetworkConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.frozen_backbone_prefixes == PAPER_FROZEN_RESNET50
    loss = LossConfig(regression="huber", label_smoothing=0.1)
    assert LossConfig.from_dict(json.loads(json.dumps(loss.to_dict()))) == loss
    with pytest.raises(UsageError, match=r"unknown network setting\(s\) \['width'\]"):
        NetworkConfig.from_dict({**cfg.to_dict(), "width": 3})


# --- pretrained weights: never downloaded -------------------------------------------------------------------

MOBILENET_FILE = "mobilenet_v3_small-047dcff4.pth"


def saved_torchvision_weights(path, name="mobilenet_v3_small", seed=3):
    torch.manual_seed(seed)
    state = torchvision.models.get_model(name, weights=None).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_missing_pretrained_weights_name_the_file_and_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    expected = (f"pretrained mobilenet_v3_small weights not found at {cache / MOBILENET_FILE}; nothing is "
                f"downloaded: copy {MOBILENET_FILE}")
    with pytest.raises(PretrainedWeightsError, match=re.escape(expected)) as info:
        DualHeadNet(NetworkConfig(backbone="mobilenet_v3_small", pretrained=True, input_size=TINY))
    assert f"into {cache}/ or pass --weights PATH" in str(info.value)
    assert isinstance(info.value, CarilError)
    assert not cache.exists()  # nothing was fetched


def test_pretrained_weights_load_from_torchvision_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = saved_torchvision_weights(tmp_path / "hub" / "checkpoints" / MOBILENET_FILE)
    net = DualHeadNet(NetworkConfig(backbone="mobilenet_v3_small", pretrained=True, input_size=TINY))
    loaded = net.backbone.state_dict()
    assert set(loaded) == {k for k in state if k.startswith("features.")}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_pretrained_weights_load_from_an_explicit_path(tmp_path):
    path = tmp_path / "my_resnet18.pth"
    state = saved_torchvision_weights(path, "resnet18")
    net = DualHeadNet(NetworkConfig(backbone="resnet18", pretrained=True, weights_path=str(path), input_size=TINY))
    assert torch.equal(net.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert torch.equal(net.backbone.bn1.running_var, state["bn1.running_var"])


def test_wrong_or_missing_weights_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(PretrainedWeightsError, match=re.escape(f"backbone weights file {missing} does not exist")):
        DualHeadNet(NetworkConfig(backbone="resnet18", pretrained=True, weights_path=str(missing), input_size=TINY))
    other = tmp_path / "mobilenet.pth"
    saved_torchvision_weights(other)
    with pytest.raises(PretrainedWeightsError, match=re.escape(f"{other} does not hold torchvision resnet18 weights")):
        DualHeadNet(NetworkConfig(backbone="resnet18", pretrained=True, weights_path=str(other), input_size=TINY))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match=re.escape(f"cannot read backbone weights {garbage}")):
        DualHeadNet(NetworkConfig(backbone="resnet18", pretrained=True, weights_path=str(garbage), input_size=TINY))



def test_command_branches_pick_each_samples_head_by_its_route_command():
    torch.manual_seed(0)
    net = DualHeadNet(NetworkConfig(input_size=TINY, command_branches=True)).eval()
    assert isinstance(net.regression_head, nn.ModuleList) and len(net.regression_head) == 4
    images = batch(4)
    commands = torch.tensor([1, 2, 3, 4])  # LEFT, RIGHT, STRAIGHT, LANEFOLLOW
    with torch.no_grad():
        out = net(images, command=commands)
        shared = net.trunk(net.pool(net.backbone(images)))
        for i, c in enumerate(commands.tolist()):
            one = shared[i:i + 1]  # (1, 128); a batch of one may round differently from the batch of four
            torch.testing.assert_close(out["steer"][i], net.regression_head[c - 1](one)[0, 0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(out["logits"][i], net.classification_head[c - 1](one)[0], rtol=1e-5,
                                       atol=1e-6)
        # another command for the same image gives another branch's output
        assert not torch.equal(net(images, command=torch.tensor([4, 4, 4, 4]))["steer"][:3], out["steer"][:3])
    with pytest.raises(ValueError, match="command-branched: pass command"):
        net(images)
    plain = DualHeadNet(NetworkConfig(input_size=TINY)).eval()
    with torch.no_grad():
        assert torch.equal(plain(images)["steer"], plain(images, command=commands)["steer"])  # ignored


def test_loss_reaches_only_the_commanded_branch():
    torch.manual_seed(0)
    net = DualHeadNet(NetworkConfig(input_size=TINY, command_branches=True))
    out = net(batch(2), {"steer": torch.tensor([0.5, -0.5]), "bin": torch.tensor([8, 2])},
              command=torch.tensor([2, 2]))
    out["loss"].backward()
    grads = [head[-1].weight.grad for head in net.regression_head]
    assert grads[1] is not None and grads[1].abs().sum() > 0
    assert all(g is None or g.abs().sum() == 0 for i, g in enumerate(grads) if i != 1)
