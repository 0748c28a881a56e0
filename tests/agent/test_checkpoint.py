"""Checkpoints: an exact round trip from safetensors + JSON, one clear error per corruption, resume state."""

import hashlib
import json
import os
import random
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from agent.bins import SteeringBins
from agent.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    capture_rng_states,
    file_sha256,
    load_checkpoint,
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from agent.network import DualHeadNet, LossConfig, NetworkConfig
from agent.preprocess import PreprocessConfig
from sim.errors import CarilError

NET_CFG = NetworkConfig(input_size=(64, 64))
PRE_CFG = PreprocessConfig(height=64, width=64, normalisation="imagenet")
BINS = SteeringBins()


def trained_net(seed=0, cfg=NET_CFG, loss=None):
    """A small net whose weights and BatchNorm statistics are no longer the initial ones."""
    torch.manual_seed(seed)
    net = DualHeadNet(cfg, loss).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    images = torch.rand(4, 3, *cfg.input_size)
    net(images, {"steer": torch.rand(4) - 0.5, "bin": torch.tensor([0, 3, 5, 10])})["loss"].backward()
    opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One saved checkpoint; corruption tests copy it."""
    net = trained_net()
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best", net, NET_CFG, PRE_CFG, BINS,
                           {"epoch": 3, "metrics": {"val_loss": 0.125}}, temperature=1.5, steer_scale=4.0)
    return net, path


def test_round_trip_is_bit_exact(saved):
    net, path = saved
    loaded = load_checkpoint(path)
    assert not loaded.model.training
    original, restored = net.state_dict(), loaded.model.state_dict()
    assert list(original) == list(restored)
    assert all(torch.equal(original[k], restored[k]) and original[k].dtype == restored[k].dtype for k in original)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = net(images), loaded.model(images)
    assert torch.equal(a["steer"], b["steer"]) and torch.equal(a["logits"], b["logits"])


def test_configs_and_metadata_come_back(saved):
    _, path = saved
    loaded = load_checkpoint(path)
    assert (loaded.network, loaded.preprocess, loaded.bins, loaded.loss) == (NET_CFG, PRE_CFG, BINS, LossConfig())
    assert (loaded.temperature, loaded.steer_scale) == (1.5, 4.0)
    assert loaded.meta == {"epoch": 3, "metrics": {"val_loss": 0.125}}
    assert loaded.path == path


def test_what_is_on_disk(saved):
    _, path = saved
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # no temporary files left
    doc = json.loads((path / CONFIG_FILE).read_text())
    assert (doc["format"], doc["format_version"], doc["steer_scale"]) == ("caril-checkpoint", 1, 4.0)
    assert doc["network"]["backbone"] == "small_cnn" and doc["bins"] == {"n_bins": 11, "low": -1.0, "high": 1.0}
    with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:  # a safetensors file, no pickle
        assert f.metadata()["checkpoint_id"] == doc["checkpoint_id"]
        names = f.keys()
        assert "trunk.0.weight" in names


def test_loss_config_and_overwrite(tmp_path):
    loss = LossConfig(regression="huber", huber_delta=0.2)
    save_checkpoint(tmp_path, trained_net(1), NET_CFG, PRE_CFG, BINS, {"epoch": 1})
    second = trained_net(2, loss=loss)
    save_checkpoint(tmp_path, second, NET_CFG, PRE_CFG, BINS, {"epoch": 2})
    loaded = load_checkpoint(tmp_path)
    assert loaded.meta == {"epoch": 2} and loaded.loss == loss and loaded.model.loss_config == loss
    assert torch.equal(loaded.model.trunk[0].weight, second.trunk[0].weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]


def test_tied_and_channels_last_weights_are_saved(tmp_path):
    net = trained_net()
    net.classification_head[0].weight = net.regression_head[0].weight  # tie two (128 -> 64) layers
    net.to(memory_format=torch.channels_last)  # conv weights are no longer contiguous
    save_checkpoint(tmp_path, net, NET_CFG, PRE_CFG, BINS)
    aliases = json.loads((tmp_path / CONFIG_FILE).read_text())["tensor_aliases"]
    assert aliases == {"classification_head.0.weight": "regression_head.0.weight"}
    loaded = load_checkpoint(tmp_path)
    assert torch.equal(loaded.model.classification_head[0].weight, net.regression_head[0].weight)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(images)["logits"], net(images)["logits"], rtol=1e-5, atol=1e-6)


def test_a_pretrained_config_loads_without_the_imagenet_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), weights)
    cfg = NetworkConfig(backbone="mobilenet_v3_small", pretrained=True, weights_path=str(weights), input_size=(64, 64))
    net = DualHeadNet(cfg).eval()
    save_checkpoint(tmp_path / "ckpt", net, cfg, PRE_CFG, BINS)
    weights.unlink()  # rebuilding from the checkpoint must not read it (nor any cache)
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.network == cfg
    assert torch.equal(loaded.model.backbone.features[0][0].weight, net.backbone.features[0][0].weight)


def test_save_refuses_inconsistent_inputs(tmp_path):
    net = trained_net()
    with pytest.raises(ValueError, match="the network has 11 classes but the bins 7"):
        save_checkpoint(tmp_path, net, NET_CFG, PRE_CFG, SteeringBins(n_bins=7))
    with pytest.raises(ValueError, match=re.escape("preprocessing makes (160, 160) images but the network takes")):
        save_checkpoint(tmp_path, net, NET_CFG, PreprocessConfig(), BINS)
    with pytest.raises(ValueError, match="must be plain JSON"):
        save_checkpoint(tmp_path, net, NET_CFG, PRE_CFG, BINS, {"metric": np.float32(0.5)})
    assert not any(tmp_path.iterdir())


# --- corrupt and incompatible checkpoints ------------------------------------------------------------------


def edit_config(path, change):
    doc = json.loads((path / CONFIG_FILE).read_text())
    change(doc)
    (path / CONFIG_FILE).write_text(json.dumps(doc))


def edit_tensors(path, change):
    file = str(path / WEIGHTS_FILE)
    with safe_open(file, framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(file)
    change(tensors)
    save_file(tensors, file, metadata=metadata)
    edit_config(path, lambda d: d.update(weights_sha256=file_sha256(path / WEIGHTS_FILE)))  # hash agrees: the
    # checks below it are what is tested


def flip_a_weight_byte(path):
    """One byte of tensor data changed, as a bad copy or disk would: the file still parses."""
    data = bytearray((path / WEIGHTS_FILE).read_bytes())
    data[-100] ^= 0x40
    (path / WEIGHTS_FILE).write_bytes(bytes(data))


def other_save(path):
    save_checkpoint(path.parent / "other", trained_net(), NET_CFG, PRE_CFG, BINS)
    shutil.copy(path.parent / "other" / WEIGHTS_FILE, path / WEIGHTS_FILE)


CORRUPTIONS = {
    "no config": (lambda p: (p / CONFIG_FILE).unlink(), CONFIG_FILE, "is missing: a checkpoint directory holds"),
    "no weights": (lambda p: (p / WEIGHTS_FILE).unlink(), WEIGHTS_FILE, "is missing: the checkpoint directory has"),
    "bad json": (lambda p: (p / CONFIG_FILE).write_text('{"format": "caril-checkpoint",'), CONFIG_FILE,
                 "is not valid JSON"),
    "not ours": (lambda p: (p / CONFIG_FILE).write_text("[1, 2]"), CONFIG_FILE, "is not a caril-checkpoint config"),
    "future version": (lambda p: edit_config(p, lambda d: d.update(format_version=99)), CONFIG_FILE,
                       "has unknown format version 99; this caril reads version 1"),
    "no bins": (lambda p: edit_config(p, lambda d: d.pop("bins")), CONFIG_FILE, "has no 'bins' entry"),
    "bad network": (lambda p: edit_config(p, lambda d: d["network"].update(backbone="vgg")), CONFIG_FILE,
                    "'network' is not usable: unknown backbone 'vgg'"),
    "bad temperature": (lambda p: edit_config(p, lambda d: d.update(temperature=-1)), CONFIG_FILE,
                        "'temperature' is not usable: -1 is not a finite positive number"),
    "inconsistent": (lambda p: edit_config(p, lambda d: d["bins"].update(n_bins=9)), CONFIG_FILE,
                     "is inconsistent: 9 bins for 11 classes"),
    "truncated weights": (lambda p: (p / WEIGHTS_FILE).write_bytes((p / WEIGHTS_FILE).read_bytes()[:1000]),
                          WEIGHTS_FILE, "is not a readable safetensors file"),
    "mixed saves": (other_save, WEIGHTS_FILE, "come from different saves"),
    "flipped byte": (flip_a_weight_byte, WEIGHTS_FILE, "is corrupt: its SHA-256"),
    "missing tensor": (lambda p: edit_tensors(p, lambda t: t.pop("trunk.0.weight")), WEIGHTS_FILE,
                       "does not match the network described in config.json: missing tensors: trunk.0.weight"),
    "extra tensor": (lambda p: edit_tensors(p, lambda t: t.update(bogus=torch.zeros(2))), WEIGHTS_FILE,
                     "unexpected tensors: bogus"),
    "mis-shaped tensor": (lambda p: edit_tensors(p, lambda t: t.update({"trunk.0.bias": torch.zeros(3)})),
                          WEIGHTS_FILE, "mis-shaped tensors: trunk.0.bias (3,) (expected (256,))"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_each_corruption_gives_one_clear_error(saved, tmp_path, case):
    corrupt, file, message = CORRUPTIONS[case]
    path = tmp_path / "ckpt"
    shutil.copytree(saved[1], path)
    corrupt(path)
    with pytest.raises(CheckpointError, match=re.escape(message)) as info:
        load_checkpoint(path)
    assert str(path / file) in str(info.value)
    assert isinstance(info.value, CarilError)


def test_weights_carry_their_hash_and_a_checkpoint_without_one_still_loads(saved, tmp_path):
    path = tmp_path / "old"
    shutil.copytree(saved[1], path)
    doc = json.loads((path / CONFIG_FILE).read_text())
    assert doc["weights_sha256"] == hashlib.sha256((path / WEIGHTS_FILE).read_bytes()).hexdigest()
    edit_config(path, lambda d: d.pop("weights_sha256"))  # a checkpoint saved before the hash was recorded
    model = load_checkpoint(path).model
    for name, tensor in saved[0].state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor)


def test_checkpoint_files_get_the_umasks_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        path = save_checkpoint(tmp_path / "ckpt", trained_net(), NET_CFG, PRE_CFG, BINS)
    finally:
        os.umask(old)
    assert stat.S_IMODE((path / WEIGHTS_FILE).stat().st_mode) == 0o640
    assert stat.S_IMODE((path / CONFIG_FILE).stat().st_mode) == 0o640


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint directory {tmp_path / 'nope'} does not exist")):
        load_checkpoint(tmp_path / "nope")


# --- training state for resume ----------------------------------------------------------------------------


def test_training_state_round_trip_restores_optimizer_scheduler_and_rngs(tmp_path):
    torch.manual_seed(0)
    net = DualHeadNet(NET_CFG)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    for _ in range(2):
        net(torch.rand(2, 3, 64, 64), {"steer": torch.zeros(2), "bin": torch.tensor([5, 5])})["loss"].backward()
        opt.step()
        sched.step()
    path = save_training_state(tmp_path / "run" / "training_state.pt", opt, sched, epoch=4, step=2,
                               rng_states=capture_rng_states(), best_val=0.25)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())

    state = load_training_state(path)
    assert (state.epoch, state.step, state.best_val) == (4, 2, 0.25)
    fresh_opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    fresh_sched = torch.optim.lr_scheduler.ExponentialLR(fresh_opt, gamma=0.9)
    state.apply(fresh_opt, fresh_sched)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert fresh_sched.last_epoch == 2 and fresh_opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.81)
    saved_state, restored = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert all(torch.equal(saved_state[i]["exp_avg_sq"], restored[i]["exp_avg_sq"]) for i in saved_state)
    assert sorted(p.name for p in path.parent.iterdir()) == ["training_state.pt"]


class Payload:  # an arbitrary object: weights_only loading must refuse to rebuild it
    pass


def test_training_state_never_unpickles_arbitrary_objects(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"format": "caril-training-state", "format_version": 1, "x": Payload()}, path)
    with pytest.raises(CheckpointError, match=re.escape(f"{path} is not a readable training state")):
        load_training_state(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_training_state(tmp_path / "missing.pt")
    torch.save({"format": "caril-training-state", "format_version": 7}, path)
    with pytest.raises(CheckpointError, match="unknown format version 7"):
        load_training_state(path)


def test_an_unreadable_checkpoint_file_is_said_to_be_unreadable_not_corrupt(saved, tmp_path, monkeypatch):
    path = tmp_path / "best"
    shutil.copytree(saved[1], path)
    real_access = os.access  # the tests may run as root, whom chmod 000 does not stop: deny as a user is denied
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p).name != WEIGHTS_FILE and real_access(p, mode))
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS_FILE} cannot be read: permission denied \(check its "
                                              r"owner and mode, e.g. ls -l .*\)$") as caught:
        load_checkpoint(path)
    assert "corrupt" not in str(caught.value)
    monkeypatch.undo()
    real_read_text = Path.read_text

    def read_text(self, *args, **kwargs):
        if self.name == CONFIG_FILE:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(CheckpointError, match=rf"{CONFIG_FILE} cannot be read: permission denied"):
        load_checkpoint(path)
