"""``caril collect``, ``caril data info/check`` and ``caril bench collect`` as a user meets them: subprocesses,
exit codes, one-line errors, files on disk, and a recording killed with SIGKILL then resumed."""

import json
import shutil
import signal
import subprocess
import sys
import time

import h5py
import pytest

from training.episode_file import EpisodeReader, check_dataset, read_manifest

TINY = ["--res", "32x24", "--routes", "straight,one-turn", "--allow-heldout", "--max-frames", "20", "--image-format",
        "png"]


def caril(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "scripts.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("collect") / "data"
    r = caril("collect", "--out", str(out), "--episodes", "3", "--seed", "4", *TINY)
    assert r.returncode == 0, r.stderr
    assert "recorded 3 episodes, 60 frames" in r.stdout and "frames=" in r.stderr  # the progress bar
    return out


def test_collect_writes_episodes_manifest_and_config(dataset):
    manifest = read_manifest(dataset)
    assert [(e["file"], e["route"], e["frames"]) for e in manifest["episodes"]] == [
        ("episodes/episode_000000.h5", "straight", 20), ("episodes/episode_000001.h5", "one-turn", 20),
        ("episodes/episode_000002.h5", "straight", 20)]
    config = json.loads((dataset / "config.json").read_text())
    assert config["episodes"] == 3 and config["seed"] == 4 and config["camera"]["width"] == 32
    assert config["noise"]["enabled"] is True and config["workers"] == 1 and config["max_frames"] == 20


def test_data_info_summarises_and_plots(dataset, tmp_path):
    r = caril("data", "info", str(dataset), "--json", str(tmp_path / "info.json"),
              "--plot-path", str(tmp_path / "hist.png"))
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "info.json").read_text())
    assert (info["episodes"], info["frames"], info["fps"]) == (3, 60, 20.0)
    assert info["hours"] == round(60 / 20 / 3600, 4)
    assert info["per_route"] == {"straight": {"episodes": 2, "frames": 40}, "one-turn": {"episodes": 1, "frames": 20}}
    assert info["per_weather"] == {"ClearNoon": {"episodes": 3, "frames": 60}}
    hist = info["steering_histogram"]
    assert len(hist["counts"]) == 11 and sum(hist["counts"]) + hist["filtered_out"] == 60
    assert (tmp_path / "hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "3 of 3 planned" in r.stdout and "noise        active on" in r.stdout
    assert info["heldout"] == ["straight", "one-turn"]  # recorded with --allow-heldout: it says so
    assert "held out     straight, one-turn: recorded on held-out conditions" in r.stdout
    assert sum(info["commands"].values()) == 60 and set(info["commands"]) <= {"LEFT", "RIGHT", "STRAIGHT",
                                                                               "LANEFOLLOW"}
    assert json.loads((dataset / "config.json").read_text())["allow_heldout"] is True


def test_data_info_on_a_failed_checksum_is_one_line_and_an_unwritable_plot_is_said(dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    r = caril("data", "info", str(copy), "--plot-path", str(blocker / "hist.png"))
    assert r.returncode == 0, r.stderr
    assert f"histogram not written ({blocker / 'hist.png'}:" in r.stdout and "steering bins" in r.stdout
    path = copy / "episodes" / "episode_000001.h5"
    with h5py.File(path, "r") as f:  # one byte of the steering label's chunk flipped: its fletcher32 fails
        offset = f["action/expert"].id.get_chunk_info(0).byte_offset
    raw = bytearray(path.read_bytes())
    raw[offset + 3] ^= 0xFF
    path.write_bytes(bytes(raw))
    r = caril("data", "info", str(copy))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "a column could not be read" in lines[0], r.stderr
    assert f"'caril data check {copy}' names the corrupt or truncated files" in lines[0]


def test_data_check_names_corrupt_and_truncated_files_and_exits_non_zero(dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    assert caril("data", "check", str(copy)).returncode == 0
    (copy / "episodes" / "episode_000000.h5").write_bytes(b"garbage bytes, not HDF5 " * 200)
    whole = (copy / "episodes" / "episode_000002.h5").read_bytes()
    (copy / "episodes" / "episode_000002.h5").write_bytes(whole[: len(whole) * 2 // 3])
    for extra in ([], ["--fast"]):
        r = caril("data", "check", str(copy), *extra)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "Traceback" not in r.stderr
        bad = [line for line in r.stdout.splitlines() if line.startswith("BAD")]
        assert [line.split(":")[0] for line in bad] == ["BAD  episodes/episode_000000.h5",
                                                        "BAD  episodes/episode_000002.h5"]
        assert "FAILED: 2 problem file(s) among 3 episode files" in r.stdout


def test_data_check_names_a_frame_whose_jpeg_bytes_were_flipped(dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    path = copy / "episodes" / "episode_000001.h5"
    with h5py.File(path, "r") as f:
        frame = bytes(f["observation/image"][5])
    raw = bytearray(path.read_bytes())
    raw[raw.find(frame) + len(frame) - 20] ^= 0x10  # the JPEG still decodes, with a wrong block
    path.write_bytes(bytes(raw))
    r = caril("data", "check", str(copy))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "BAD  episodes/episode_000001.h5: frame 5: the image bytes fail their CRC32 check (corrupt data)" \
        in r.stdout, r.stdout


def test_sigkill_mid_episode_keeps_finished_episodes_and_resume_completes_the_job(tmp_path):
    out = tmp_path / "data"
    args = ["collect", "--out", str(out), "--episodes", "3", "--seed", "1", "--res", "32x24", "--routes", "mixed",
            "--allow-heldout",
            "--max-frames", "600", "--image-format", "png"]
    proc = subprocess.Popen([sys.executable, "-m", "scripts.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    manifest, partials = out / "manifest.json", out / "episodes"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        listed = json.loads(manifest.read_text())["episodes"] if manifest.exists() else []
        if listed and list(partials.glob("*.partial")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the recording ended before it could be killed mid-episode"
    finished = sorted(p.name for p in partials.glob("*.h5"))
    assert 1 <= len(finished) < 3 and list(partials.glob("*.partial"))
    for name in finished:  # every file that looks whole is whole
        assert len(EpisodeReader(partials / name)) == 600
    r = caril("data", "check", str(out))
    assert r.returncode == 0, r.stdout
    assert "is an unfinished episode" in r.stdout
    r = caril(*args)
    assert r.returncode == 2 and "already holds a dataset; continue it with --resume" in r.stderr  # usage
    r = caril(*args, "--resume")
    assert r.returncode == 0, r.stderr
    assert f"recording {3 - len(finished)} of 3 episodes" in r.stdout
    manifest_data = read_manifest(out)
    assert [e["index"] for e in manifest_data["episodes"]] == [0, 1, 2]
    assert [e["frames"] for e in manifest_data["episodes"]] == [600, 600, 600]
    report = check_dataset(out)
    assert report.ok and report.notes == [] and len(report.checked) == 3


@pytest.mark.parametrize("args, message", [
    (["collect", "--out", "x", "--episodes", "0"], "--episodes must be at least 1, got 0"),
    (["collect", "--out", "x", "--jpeg-quality", "101"], "JPEG quality 101 is outside 1..100"),
    (["collect", "--out", "x", "--noise-fraction", "1.5"], "noise active fraction 1.5 is outside [0, 1)"),
    (["collect", "--out", "x", "--workers", "2", "--backend", "carla"], "--workers > 1 needs --backend embedded"),
    (["collect", "--out", "x", "--image-format", "gif"], "argument --image-format: invalid choice: 'gif'"),
    (["collect", "--out", "x", "--routes", "paper"], "straight, one-turn, two-turn are held out for evaluation"),
    (["collect", "--out", "x", "--routes", "random:100000,random:99999"], "random:99999 is held out for evaluation"),
    (["collect", "--out", "x", "--weathers", "ClearNoon,HardRainNoon"], "HardRainNoon is held out for evaluation"),
    (["data", "info", "x"], "dataset folder x does not exist"),
    (["data", "check"], "the following arguments are required: dir"),
    (["data", "show", "x"], "name an action first: one of info, check"),
])
def test_bad_input_is_one_line_and_non_zero(tmp_path, args, message):
    r = caril(*args, cwd=tmp_path)
    assert r.returncode != 0
    assert not (tmp_path / "x").exists()  # refused before anything is written
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert message in lines[0]
    assert not (tmp_path / "x").exists()


def test_resume_after_a_lost_manifest_reports_the_rebuilt_frames(dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    (copy / "manifest.json").unlink()
    r = caril("collect", "--out", str(copy), "--episodes", "3", "--seed", "4", *TINY, "--resume")
    assert r.returncode == 0, r.stderr
    assert "recording 0 of 3 episodes" in r.stdout and f"dataset {copy}: 3 episodes, 60 frames" in r.stdout
    assert read_manifest(copy)["total_frames"] == 60


def test_resume_with_other_settings_names_the_differences(dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    r = caril("collect", "--out", str(copy), "--episodes", "3", "--seed", "4", *TINY[:-1], "jpeg", "--resume",
              "--noise-amplitude", "0.3")
    assert r.returncode == 2
    assert "codec.format: 'png' -> 'jpeg'" in r.stderr and "noise.amplitude: 0.2 -> 0.3" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bench_collect_reports_its_keys(tmp_path):
    r = caril("bench", "collect", "--frames", "30", "--episode-frames", "15", "--reads", "20", "--res", "32x32",
              "--codec-frames", "3", "--json", str(tmp_path / "b.json"))
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["record"]["frames"] == 30 and result["record"]["episodes"] == 2
    assert result["record_frames_per_s"] > 0 and result["read_frames_per_s"] > 0 and result["bytes_per_frame"] > 0
    assert set(result["codecs"]) >= {"jpeg_q90", "png_c1"}
