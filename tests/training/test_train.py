"""The training loop on a tiny recorded dataset: it learns, writes what it promises, resumes bit for bit,
round-trips its checkpoints, stops early, and fails with one clear error on a diverging loss or a wrong resume."""

import itertools
import json
import math
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from agent.checkpoint import CheckpointError, load_checkpoint, load_training_state
from agent.network import DualHeadNet, NetworkConfig
from agent.preprocess import PreprocessConfig
from sim.errors import CarilError, UsageError
from tests.tiny_dataset import record
from training import train as train_module
from training.data_options import LabelOptions, label_dataset
from training.dataset import DrivingDataset, make_loader, open_dataset
from training.episode_file import COMMAND_KEY, IMAGE_KEY, DatasetError
from training.train import TrainCallbacks, TrainConfig, TrainingDiverged, get_lr, seed_everything, to_device, train

NET = NetworkConfig(input_size=(32, 32))
PRE = PreprocessConfig(height=32, width=32)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return record(tmp_path_factory.mktemp("train") / "tiny")


def tiny(data_root, out, **overrides):
    base = dict(data=str(data_root), out=str(out), network=NET, preprocess=PRE, epochs=2, batch_size=16, lr=3e-3,
                workers=0, log_every=2, deterministic=True)
    return TrainConfig(**{**base, **overrides})


class StopAfter(TrainCallbacks):
    """Simulates a crash right after an epoch's checkpoints are written."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch(self, epoch, metrics):
        if epoch == self.epoch:
            raise KeyboardInterrupt


class StopAfterSteps(TrainCallbacks):
    """Simulates a kill in the middle of the first epoch, after ``steps`` optimizer steps."""

    def __init__(self, steps):
        self.steps = steps

    def on_step(self, step, losses):
        if step >= self.steps:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    """Two epochs in one go."""
    cfg = tiny(data_root, tmp_path_factory.mktemp("runs") / "straight")
    return cfg, train(cfg)


@pytest.fixture(scope="module")
def interrupted(data_root, tmp_path_factory):
    """The same run stopped after epoch 1 (a copy is kept for the tests that resume it)."""
    cfg = tiny(data_root, tmp_path_factory.mktemp("runs") / "interrupted")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, StopAfter(1))
    return cfg


def copy_run(cfg, dest):
    shutil.copytree(cfg.out, dest)
    return dest


def dataset_losses(net, cfg):
    """Mean regression and classification losses of ``net`` over every labelled frame (no augmentation)."""
    index = open_dataset(cfg.data, cfg.preprocess)
    frames = label_dataset(index, cfg.labels)
    loader = make_loader(DrivingDataset(index, frames, cfg.preprocess, cfg.labels.bins), range(len(frames)), 64, 0)
    net.eval()
    totals = np.zeros(2)
    with torch.no_grad():
        for batch in loader:
            images, command, targets = to_device(batch, cfg.preprocess, torch.device("cpu"))
            out = net(images, command=command)
            _, parts = net.compute_loss(out["steer"], out["logits"], targets)
            totals += len(images) * np.array([parts["loss_regression"].item(), parts["loss_classification"].item()])
    return totals / len(frames)


def test_training_lowers_both_losses(data_root, tmp_path):
    cfg = tiny(data_root, tmp_path / "learn", network=NetworkConfig(input_size=(32, 32), dropout=0.0), epochs=4,
               batch_size=8)
    result = train(cfg)
    seed_everything(cfg.seed)
    initial = dataset_losses(DualHeadNet(cfg.network, cfg.loss), cfg)  # the weights training started from
    trained = dataset_losses(load_checkpoint(result.run / "last").model, cfg)
    assert trained[0] < 0.5 * initial[0] and trained[1] < 0.5 * initial[1]  # regression, classification


def test_run_folder_holds_config_metrics_checkpoints_plots_and_logs(straight):
    _, result = straight
    run = result.run
    assert (result.epochs_completed, result.stopped) == (2, "completed")
    config = json.loads((run / "config.json").read_text())
    assert config["network"]["input_size"] == [32, 32] and config["world_size"] == 1 and config["seed"] == 0
    assert config["split"]["val"] and not set(config["split"]["val"]) & set(config["split"]["train"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics["epochs"]] == [1, 2] and metrics["stopped"] == "completed"
    best = metrics["epochs"][metrics["best_epoch"] - 1]
    assert best["val_loss"] == min(m["val_loss"] for m in metrics["epochs"]) == result.best_val_loss
    assert metrics["temperature"] == best["temperature"] == result.temperature
    for key in ("train_loss", "val_loss_regression", "val_loss_classification", "steer_mae", "steer_rmse",
                "accuracy", "ece", "ece_calibrated", "train_samples_per_s"):
        assert math.isfinite(best[key])
    assert best["steer_mae_carla"] == pytest.approx(best["steer_mae"] / 4.0)
    assert best["steer_rmse"] >= best["steer_mae"]
    cm = np.array(best["confusion_matrix"])
    assert cm.shape == (11, 11) and cm.sum() == best["val_frames"] == metrics["val_frames"]
    assert best["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    ckpt = load_checkpoint(run / "best")
    assert ckpt.temperature == result.temperature and ckpt.steer_scale == 4.0
    assert ckpt.meta["epoch"] == result.best_epoch and ckpt.preprocess == PRE and ckpt.network == NET
    entries = json.loads((Path(config["data"]) / "manifest.json").read_text())["episodes"]
    assert ckpt.meta["trained_on"] == {"routes": list(dict.fromkeys(e["route"] for e in entries)),
                                       "weathers": list(dict.fromkeys(e["weather"] for e in entries))}
    assert ckpt.meta["trained_on"]["routes"] and ckpt.meta["augment"] == config["augment"]
    assert load_checkpoint(run / "last").meta["epoch"] == 2
    assert load_training_state(run / "last" / "training_state.pt").epoch == 2
    for name in ("confusion_matrix", "reliability_diagram", "reliability_diagram_calibrated"):
        assert (run / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb")).Reload()
    tags = events.Tags()["scalars"]
    assert {"losses/train", "losses/train_regression", "losses/train_classification", "losses/val",
            "metrics/steer_mae", "metrics/accuracy", "metrics/ece", "metrics/temperature", "charts/lr",
            "charts/samples_per_s"} <= set(tags)
    assert all(t.split("/")[0] in ("losses", "metrics", "charts") for t in tags)
    assert "charts/confusion_matrix" in events.Tags()["images"]


def test_checkpoint_round_trips_to_identical_outputs(straight):
    cfg, result = straight
    ckpt = load_checkpoint(result.run / "best")
    saved = np.load(result.run / "best" / "val_predictions.npz")  # what the trained model output in training
    index = open_dataset(cfg.data, cfg.preprocess)
    frames = label_dataset(index, cfg.labels)
    keep = np.isin(frames.indices, saved["frame"])
    val = frames.subset(keep)
    loader = make_loader(DrivingDataset(index, val, ckpt.preprocess, ckpt.bins), range(len(val)), cfg.batch_size, 0)
    steer, logits = [], []
    with torch.no_grad():
        for batch in loader:
            images, command, _ = to_device(batch, ckpt.preprocess, torch.device("cpu"))
            out = ckpt.model(images, command=command)
            steer.append(out["steer"])
            logits.append(out["logits"])
    assert torch.equal(torch.cat(steer), torch.from_numpy(saved["steer"]))
    assert torch.equal(torch.cat(logits), torch.from_numpy(saved["logits"]))


def test_resumed_run_continues_with_identical_state(straight, interrupted, tmp_path):
    run = copy_run(interrupted, tmp_path / "resumed")
    assert load_training_state(run / "last" / "training_state.pt").epoch == 1
    result = train(tiny(interrupted.data, run, resume=True))
    assert result.epochs_completed == 2
    a = load_file(str(straight[1].run / "last" / "model.safetensors"))
    b = load_file(str(run / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    sa = load_training_state(straight[1].run / "last" / "training_state.pt")
    sb = load_training_state(run / "last" / "training_state.pt")
    assert (sa.epoch, sa.step, sa.best_val, sa.scheduler) == (sb.epoch, sb.step, sb.best_val, sb.scheduler)
    for pa, pb in zip(sa.optimizer["state"].values(), sb.optimizer["state"].values(), strict=True):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    ma = json.loads((straight[1].run / "metrics.json").read_text())["epochs"]
    mb = json.loads((run / "metrics.json").read_text())["epochs"]
    drop = ("train_samples_per_s", "ms_per_iter")
    assert [{k: v for k, v in m.items() if k not in drop} for m in ma] == \
        [{k: v for k, v in m.items() if k not in drop} for m in mb]


def test_resume_after_a_kill_between_checkpoint_and_metrics_keeps_the_epoch(interrupted, tmp_path):
    """Killed after last/ was saved but before metrics.json was written: the epoch's entry is rebuilt from
    the checkpoint's metadata, and the resumed run finishes (no StopIteration on the best epoch)."""
    run = copy_run(interrupted, tmp_path / "killed")
    (run / "metrics.json").unlink()
    val_loss = load_checkpoint(run / "last").meta["metrics"]["val_loss"]
    result = train(tiny(interrupted.data, run, resume=True))
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    assert result.epochs_completed == 2 and [m["epoch"] for m in epochs] == [1, 2]
    assert epochs[0]["val_loss"] == val_loss


def test_resume_refuses_settings_that_change_how_the_rest_trains(interrupted, tmp_path):
    run = copy_run(interrupted, tmp_path / "changed")
    with pytest.raises(CheckpointError, match=r"batch_size: 16 in the run, 64 now; lr: 0.003 in the run, 0.01 now"):
        train(tiny(interrupted.data, run, resume=True, batch_size=64, lr=1e-2))
    with pytest.raises(CheckpointError, match=r"labels: .*'steer_limit': 0.25.* in the run"):
        train(tiny(interrupted.data, run, resume=True, labels=LabelOptions(steer_limit=None)))
    assert train(tiny(interrupted.data, run, resume=True, epochs=3)).epochs_completed == 3  # more epochs: fine


def test_nan_loss_stops_with_one_error_and_keeps_the_last_good_checkpoint(interrupted, tmp_path, monkeypatch):
    run = copy_run(interrupted, tmp_path / "nan")
    before = {p.name: p.read_bytes() for p in (run / "last").iterdir()}
    monkeypatch.setattr(train_module, "get_lr", lambda *args: 1e30)  # epoch 2 diverges
    with pytest.raises(TrainingDiverged, match=r"loss became NaN or infinite in epoch 2 .*the last good checkpoint "
                                               r"is .*last \(epoch 1\); lower --lr"):
        train(tiny(interrupted.data, run, resume=True, log_every=1))
    assert {p.name: p.read_bytes() for p in (run / "last").iterdir()} == before
    assert json.loads((run / "metrics.json").read_text())["last_epoch"] == 1
    assert load_checkpoint(run / "last").meta["epoch"] == 1


def test_resume_of_a_run_killed_in_its_first_epoch_starts_afresh_and_says_so(data_root, tmp_path, caplog):
    cfg = tiny(data_root, tmp_path / "first_epoch", epochs=1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, StopAfterSteps(1))  # killed before any epoch finished: config.json and tb/, no last/
    run = Path(cfg.out)
    assert (run / "config.json").exists() and not (run / "last").exists()
    with pytest.raises(UsageError, match="already holds a training run; continue it with --resume"):
        train(cfg)
    with caplog.at_level("WARNING"):
        result = train(tiny(data_root, run, epochs=1, resume=True))
    assert "nothing to resume in" in caplog.text and "starting the run afresh in that folder" in caplog.text
    assert result.epochs_completed == 1 and (run / "last" / "training_state.pt").is_file()
    fresh = train(tiny(data_root, tmp_path / "never_started", epochs=1, resume=True))  # nothing there at all
    assert fresh.epochs_completed == 1


def test_resume_refuses_an_incompatible_checkpoint(interrupted, tmp_path):
    run = copy_run(interrupted, tmp_path / "other_net")
    other = NetworkConfig(input_size=(32, 32), trunk=(64,))
    with pytest.raises(CheckpointError, match=r"cannot resume .*other_net: its checkpoint does not match this "
                                              r"configuration \(network.trunk: \[256, 128\] in the run, \[64\] now\)"):
        train(tiny(interrupted.data, run, resume=True, network=other))
    with pytest.raises(UsageError, match="already holds a training run; continue it with --resume"):
        train(tiny(interrupted.data, run))
    (run / "last" / "training_state.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="training_state.pt is not a readable training state"):
        train(tiny(interrupted.data, run, resume=True))


def test_bad_frame_met_in_a_worker_is_one_line_naming_file_and_frame(data_root, tmp_path):
    root = tmp_path / "badframe"
    shutil.copytree(data_root, root)
    with h5py.File(root / "episodes" / "episode_000000.h5", "r+") as f:
        f[IMAGE_KEY][3] = np.zeros(len(f[IMAGE_KEY][3]), np.uint8)  # no longer an image
    cfg = tiny(root, tmp_path / "run", workers=2, check="none",
               labels=LabelOptions(steer_limit=None))  # every frame is used, the bad one included
    with pytest.raises(DatasetError) as caught:
        train(cfg)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    assert re.fullmatch(r".*episode_000000.h5 frame 3: the image bytes fail their CRC32 check \(corrupt data\); "
                        r"run 'caril data check .*badframe' \(re-record or delete the episode\)", message), message


def test_early_stopping_on_validation_loss(data_root, tmp_path, monkeypatch):
    real = train_module.validation_metrics
    scripted = iter([1.0, 0.9, 0.95, 0.97, 0.5, 0.4])

    def validation_metrics(*args, **kwargs):
        return {**real(*args, **kwargs), "val_loss": next(scripted)}

    monkeypatch.setattr(train_module, "validation_metrics", validation_metrics)
    result = train(tiny(data_root, tmp_path / "early", epochs=6, patience=2, batch_size=64))
    assert (result.stopped, result.epochs_completed, result.best_epoch, result.best_val_loss) == \
        ("early_stopping", 4, 2, 0.9)
    metrics = json.loads((tmp_path / "early" / "metrics.json").read_text())
    assert (metrics["stopped"], metrics["best_epoch"], len(metrics["epochs"])) == ("early_stopping", 2, 4)
    assert load_checkpoint(tmp_path / "early" / "best").meta["epoch"] == 2
    assert load_checkpoint(tmp_path / "early" / "last").meta["epoch"] == 4
    last = (tmp_path / "early" / "last" / "model.safetensors").read_bytes()
    again = train(tiny(data_root, tmp_path / "early", epochs=6, patience=2, batch_size=64, resume=True))
    assert (again.stopped, again.epochs_completed) == ("early_stopping", 4)  # a stopped run stays stopped
    assert (tmp_path / "early" / "last" / "model.safetensors").read_bytes() == last
    metrics = json.loads((tmp_path / "early" / "metrics.json").read_text())
    metrics.update(stopped="running", epochs=metrics["epochs"][:3])  # killed before metrics.json's last write
    (tmp_path / "early" / "metrics.json").write_text(json.dumps(metrics))
    train(tiny(data_root, tmp_path / "early", epochs=6, patience=2, batch_size=64, resume=True))
    metrics = json.loads((tmp_path / "early" / "metrics.json").read_text())
    assert (metrics["stopped"], len(metrics["epochs"])) == ("early_stopping", 4)


def test_get_lr_warms_up_then_decays_to_the_floor():
    lrs = [get_lr(s, 1.0, 0.1, 4, 24) for s in range(30)]
    assert lrs[:4] == [0.2, 0.4, 0.6, 0.8]
    assert lrs[4] == 1.0 and lrs[14] == pytest.approx(0.55) and lrs[24:] == [0.1] * 6
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))


def test_config_is_validated(data_root):
    with pytest.raises(UsageError, match="the network takes 32x32 images but the preprocessing makes 160x160"):
        TrainConfig(data="d", out="o", network=NET)
    with pytest.raises(UsageError, match="the labels have 5 steering bins but the network 11 classes"):
        TrainConfig(data="d", out="o", network=NET, preprocess=PRE, labels=LabelOptions(n_bins=5))
    with pytest.raises(UsageError, match="--batch-size must be a positive integer"):
        tiny(data_root, "o", batch_size=0)
    for bad in ({"weight_decay": math.nan}, {"grad_clip": math.inf}):
        with pytest.raises(UsageError, match="must be finite and not negative"):
            tiny(data_root, "o", **bad)
    with pytest.raises(UsageError, match="steer scale nan must be a positive number"):
        LabelOptions(steer_scale=math.nan)
    with pytest.raises(CarilError, match="unknown training preset 'huge'; valid training presets: fast, paper"):
        TrainConfig.preset("huge", data="d", out="o")
    paper = TrainConfig.preset("paper", data="d", out="o")
    assert (paper.network.backbone, paper.batch_size, paper.lr, paper.patience) == ("resnet50", 32, 1e-4, 10)


def without_commands(data_root, dest):
    """A copy of the dataset as recorded before route commands existed: no observation/command column."""
    shutil.copytree(data_root, dest)
    for path in sorted((dest / "episodes").glob("*.h5")):
        with h5py.File(path, "r+") as f:
            del f[COMMAND_KEY]
            features = json.loads(f.attrs["features"]) if isinstance(f.attrs["features"], str) else None
            if features is not None:
                features.pop(COMMAND_KEY)
                f.attrs["features"] = json.dumps(features)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["features"].pop(COMMAND_KEY)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_command_branched_training_needs_recorded_commands_and_round_trips(data_root, tmp_path):
    branched = NetworkConfig(input_size=(32, 32), command_branches=True)
    old = without_commands(data_root, tmp_path / "old")
    with pytest.raises(DatasetError, match=r"recorded without route commands \(observation/command\), which the "
                                           r"command-branched network needs; .* or train camera-only with "
                                           r"--no-commands"):
        train(tiny(old, tmp_path / "refused", network=branched))
    assert not (tmp_path / "refused" / "best").exists()
    train(tiny(old, tmp_path / "camera_only", epochs=1))  # the paper's network does not need them
    cfg = tiny(data_root, tmp_path / "branched", network=branched, epochs=1)
    train(cfg)
    ckpt = load_checkpoint(tmp_path / "branched" / "best")
    assert ckpt.model.config.command_branches and len(ckpt.model.regression_head) == 4
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        left = ckpt.model(images, command=torch.tensor([1, 1]))["steer"]
        follow = ckpt.model(images, command=torch.tensor([4, 4]))["steer"]
    assert not torch.equal(left, follow)
