"""``caril train`` as a user meets it: ``python -m scripts.train``, ``torchrun --nproc_per_node=2`` on CPU,
``--resume``, and one line on stderr with a non-zero exit for each mistake."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.checkpoint import load_checkpoint
from scripts.cli import main
from sim.types import CameraConfig
from tests import tiny_dataset
from training.collect import CollectConfig, CollectJob
from training.episode_file import entry_from_file, read_manifest, write_manifest

TINY = ["--input-size", "32x32", "--epochs", "1", "--batch-size", "16", "--workers", "0", "--log-every", "2"]


def tiny(**changes):
    """TINY with some options changed, e.g. ``tiny(epochs=2, resume=True)`` (``True``: a bare flag)."""
    options = {**dict(zip(TINY[::2], TINY[1::2], strict=True)), **{f"--{k.replace('_', '-')}": v
                                                                     for k, v in changes.items()}}
    return [str(x) for k, v in options.items() for x in ((k,) if v is True else (k, v))]
VENV_BIN = Path(sys.executable).parent


def record(root, episodes=3, width=64, height=64, frames=40):
    return tiny_dataset.record(root, episodes, width, height, frames, seed=2)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return record(tmp_path_factory.mktemp("cli") / "tiny")


def run_cli(capsys, *args):
    """``caril train ARGS`` in this process: (exit code, stdout, stderr lines)."""
    code = main(["train", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def test_train_then_resume_in_one_process_with_workers(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "--data", data_root, "--out", run, *TINY)
    assert code == 0 and "completed after epoch 1; best epoch 1" in out
    assert any("step/s" in line for line in err)  # the progress bar
    assert load_checkpoint(run / "best").meta["epoch"] == 1
    # workers started after this process recorded and trained: they must not inherit its OpenCV, TensorBoard
    # or torch threads' locks (a plain fork deadlocks in cv2.setNumThreads)
    code, out, _ = run_cli(capsys, "--data", data_root, "--out", run, *tiny(epochs=2, workers=2, resume=True))
    assert code == 0 and "resuming at epoch 2" in out and "completed after epoch 2" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics["epochs"]] == [1, 2] and metrics["stopped"] == "completed"
    assert json.loads((run / "config.json").read_text())["epochs"] == 2


def test_two_datasets_train_together(data_root, tmp_path, capsys):
    """``--data a,b`` (the expert's data and a DAgger recording, say): one run over both datasets' episodes."""
    other = record(tmp_path / "dagger", episodes=2)
    run = tmp_path / "run"
    code, out, _ = run_cli(capsys, "--data", f"{data_root},{other}", "--out", run, *TINY)
    assert code == 0 and "completed after epoch 1" in out
    config = json.loads((run / "config.json").read_text())
    episodes = [*config["split"]["train"], *config["split"]["val"]]
    assert len(episodes) == 5 and sum(name.startswith(f"{other}/") for name in episodes) == 2


def test_torchrun_two_cpu_processes_train_and_rank_zero_writes_once(data_root, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "scripts.train",
                        "--data", str(data_root), "--out", str(run), *TINY],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("completed after epoch 1") == 1  # only rank 0 reports
    assert "2 process(es)" in r.stdout
    assert sorted(p.name for p in run.iterdir()) == [
        "best", "config.json", "confusion_matrix.png", "last", "metrics.json", "reliability_diagram.png",
        "reliability_diagram_calibrated.png", "tb"]
    assert sorted(p.name for p in (run / "best").iterdir()) == ["config.json", "model.safetensors",
                                                                 "val_predictions.npz"]
    assert sorted(p.name for p in (run / "last").iterdir()) == ["config.json", "model.safetensors",
                                                                 "training_state.pt"]
    assert len(list((run / "tb").iterdir())) == 1  # one event file: one writer
    for folder in ("best", "last"):
        meta = load_checkpoint(run / folder).meta
        assert (meta["world_size"], meta["written_by_rank"], meta["epoch"]) == (2, 0, 1)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and len(metrics["epochs"]) == 1
    assert metrics["epochs"][0]["val_frames"] == metrics["val_frames"]  # both ranks' shards, gathered
    config = json.loads((run / "config.json").read_text())
    assert (config["world_size"], config["global_batch_size"]) == (2, 32)


def corrupt(root, tmp_path):
    copy = tmp_path / "corrupt"
    shutil.copytree(root, copy)
    path = copy / "episodes" / "episode_000001.h5"
    path.write_bytes(path.read_bytes()[:4000])
    return copy


def mixed(root, tmp_path):
    copy = tmp_path / "mixed"
    shutil.copytree(root, copy)
    other = record(tmp_path / "other", episodes=1, width=48, height=64, frames=10)
    target = copy / "episodes" / "episode_000003.h5"
    shutil.copy(other / "episodes" / "episode_000000.h5", target)
    manifest = read_manifest(copy)
    manifest["episodes"].append({**entry_from_file(target), "index": 3, "file": "episodes/episode_000003.h5"})
    write_manifest(copy, manifest)
    return copy


def empty(_, tmp_path):
    job = CollectJob(CollectConfig(episodes=1, camera=CameraConfig(width=64, height=64)), tmp_path / "empty")
    job.prepare()
    return tmp_path / "empty"


@pytest.mark.parametrize(("make", "message"), [
    (empty, r"dataset .*empty has no episodes; record some with: caril collect --out"),
    (corrupt, r"episodes/episode_000001.h5: cannot be read \(corrupt or truncated\).*'caril data check"),
    (mixed, r"dataset .*mixed mixes camera sizes \(64x64 in episode_000000.h5, episode_000001.h5, "
            r"episode_000002.h5; 48x64 in episode_000003.h5\)"),
])
def test_unusable_data_is_one_line_and_a_non_zero_exit(make, message, data_root, tmp_path, capsys):
    code, _, err = run_cli(capsys, "--data", make(data_root, tmp_path), "--out", tmp_path / "run", *TINY)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("caril train: error: ")
    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "run").exists()  # nothing written for a run that could not start


def test_nan_loss_is_one_error_line_and_keeps_the_checkpoint(data_root, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert run_cli(capsys, "--data", data_root, "--out", run, *TINY)[0] == 0
    weights = (run / "last" / "model.safetensors").read_bytes()
    import training.train

    monkeypatch.setattr(training.train, "get_lr", lambda *args: 1e30)  # epoch 2 diverges
    code, _, err = run_cli(capsys, "--data", data_root, "--out", run, *tiny(epochs=2, log_every=1, resume=True))
    errors = [line for line in err if "error:" in line]
    assert code == 1 and len(errors) == 1 and err[-1] == errors[0]  # the rest is the progress bar
    assert errors[0].startswith("caril train: error: the training loss became NaN or infinite in epoch 2")
    assert "the last good checkpoint is" in errors[0] and "(epoch 1); lower --lr" in errors[0]
    assert (run / "last" / "model.safetensors").read_bytes() == weights


def test_wrong_resume_and_bad_options_are_one_line(data_root, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert run_cli(capsys, "--data", data_root, "--out", run, *TINY)[0] == 0
    cases = [
        (tiny(resume=True, input_size="48x48"),
         "cannot resume .*run: its checkpoint does not match this configuration \\(network.input_size: \\[32, 32\\] "
         "in the run, \\[48, 48\\] now"),
        (TINY, "already holds a training run; continue it with --resume or choose another --out"),
        (tiny(val_fraction=1.5), "--val-fraction 1.5 must be in \\(0, 1\\)"),
        (tiny(input_size="big"), "big"),
    ]
    for extra, message in cases:
        code, _, err = run_cli(capsys, "--data", data_root, "--out", run, *extra)
        # a checkpoint that does not fit is a data error (1); the rest are usage errors (2)
        assert code == (1 if message.startswith("cannot resume") else 2) and len(err) == 1, (extra, err)
        assert err[0].startswith("caril train: error: ") and re.search(message, err[0]), err[0]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no cached ImageNet weights there
    paper = tiny(preset="paper")[2:]  # the paper's 160x160 input
    code, _, err = run_cli(capsys, "--data", data_root, "--out", tmp_path / "paper", *paper)
    assert code != 0 and len(err) == 1
    assert "pretrained resnet50 weights not found" in err[0] and "nothing is downloaded" in err[0]
