"""``caril drive``: headless runs write the screenshot, video and dataset asked for; bad flags fail in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from scripts.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--res", "320x180", "--camera-res", "64x48"]


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    return frames


def test_headless_run_writes_a_screenshot_and_a_video_of_the_requested_length(tmp_path):
    shot, video = tmp_path / "x.png", tmp_path / "y.mp4"
    env = {k: v for k, v in os.environ.items() if k != "SDL_VIDEODRIVER"}  # --headless must set it itself
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "drive", "--headless", "--frames", "30", "--res", "320x180",
         "--camera-res", "96x96", "--screenshot", str(shot), "--video", str(video), "--out", str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("30 steps, 30 frames")
    assert f"video: {video} (30 frames)" in proc.stdout
    assert cv2.imread(str(shot)).shape == (180, 320, 3)
    assert count_frames(video) == 30
    cap = cv2.VideoCapture(str(video))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (320, 180)


def test_record_now_writes_a_dataset_episode_of_the_driven_frames(tmp_path, capsys):
    data = tmp_path / "data"
    rc = main(["drive", "--headless", "--frames", "12", *SMALL, "--record", str(data), "--record-now",
               "--out", str(tmp_path / "out")])
    assert rc == 0
    manifest = json.loads((data / "manifest.json").read_text())
    assert [(e["index"], e["frames"], e["route"], e["termination"]) for e in manifest["episodes"]] == [
        (0, 12, "one-turn", "stopped")]
    assert f"dataset episode 0: 12 frames in {data}" in capsys.readouterr().out


def test_record_now_refuses_a_dataset_of_another_camera(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["drive", "--headless", "--frames", "2", *SMALL, "--record", str(data), "--record-now"]) == 0
    rc = main(["drive", "--headless", "--frames", "2", "--res", "320x180", "--camera-res", "96x96",
               "--record", str(data), "--record-now"])
    assert rc == 1
    assert "holds a dataset of another camera size or rate" in capsys.readouterr().err


def test_the_caril_agent_drives_headless(tmp_path, capsys):
    import torch

    from agent.bins import SteeringBins
    from agent.checkpoint import save_checkpoint
    from agent.network import DualHeadNet, NetworkConfig
    from agent.preprocess import PreprocessConfig

    torch.manual_seed(0)
    net_cfg = NetworkConfig(input_size=(32, 32))
    ckpt = save_checkpoint(tmp_path / "ckpt", DualHeadNet(net_cfg).eval(), net_cfg,
                           PreprocessConfig(height=32, width=32), SteeringBins())
    rc = main(["drive", "--policy", "caril", "--checkpoint", str(ckpt), "--correction", "blend", "--headless",
               "--frames", "5", *SMALL, "--screenshot", str(tmp_path / "c.png")])
    assert rc == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("5 steps, 5 frames")
    assert cv2.imread(str(tmp_path / "c.png")).shape == (180, 320, 3)


@pytest.mark.parametrize(("argv", "status", "message"), [
    (["--policy", "caril"], 2, "--policy caril needs --checkpoint RUN"),
    (["--checkpoint", "runs/x"], 2, "--checkpoint is only used with --policy caril"),
    (["--policy", "caril", "--checkpoint", "nowhere"], 1, "no checkpoint in nowhere"),
    (["--headless"], 2, "--headless needs --frames N"),
    (["--headless", "--frames", "1", "--screenshot", "x.jpg"], 2, "must be a .png file"),
    (["--headless", "--frames", "1", "--video", "x.gif"], 2, "must end in .mp4 or .avi"),
    (["--route", "moon"], 2, "unknown route 'moon'"),
    (["--res", "big"], 2, "is not WIDTHxHEIGHT"),
    (["--res", "32x32", "--headless", "--frames", "1"], 2, "window size 32x32 is outside"),
])
def test_bad_flags_fail_in_one_line(argv, status, message, capsys):
    assert main(["drive", *argv]) == status
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_an_unknown_policy_is_a_parse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["drive", "--policy", "robot"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'robot' (choose from 'expert', 'caril', 'manual')" in capsys.readouterr().err
