"""The episode file format: writer, reader, dataset index, checks, manifest and the training label options."""

import multiprocessing as mp
import os
import pickle
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from sim.errors import CarilError
from training.data_options import LabelOptions, label_dataset, label_frames, scale_steer, steering_histogram
from training.episode_file import (
    CRC_KEY,
    IMAGE_KEY,
    DatasetError,
    DatasetIndex,
    EpisodeReader,
    EpisodeWriter,
    FrameChecksumError,
    ImageCodec,
    check_dataset,
    check_episode,
    decode_image,
    default_features,
    episode_index_of,
    episode_name,
    frame_crc32,
    new_manifest,
    read_manifest,
    write_manifest,
)
from training.recorder import Recorder

H, W = 12, 16


def synthetic_frame(rng, i):
    return {
        "frame_index": i, "sim_frame": 100 + i, "sim_time_s": 0.05 * i,
        IMAGE_KEY: rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
        "observation/speed_mps": float(rng.uniform(0, 10)),
        "observation/pose": tuple(rng.normal(size=3).tolist()),
        "observation/lateral_offset_m": float(rng.normal()),
        "observation/heading_error_deg": float(rng.normal()),
        "observation/route_progress": i / 10,
        "observation/distance_along_m": float(i),
        "observation/command": 4,
        "action/expert": tuple(rng.uniform(0, 1, 3).tolist()),
        "action/executed": tuple(rng.uniform(0, 1, 3).tolist()),
        "action/noise_active": bool(i % 3 == 0),
        "events/collisions": int(i == 4),
        "events/lane_invasions": int(i % 2),
        "events/markings": "Broken,Solid" if i % 2 else "",
    }


def write_episode(path, frames, codec, attrs=None):
    writer = EpisodeWriter(path, default_features(H, W), {"fps": 20.0, "dt_s": 0.05, "route": "straight",
                                                           **(attrs or {})}, flush_every=4)
    for f in frames:
        writer.append(codec.encode(f[IMAGE_KEY]), f)
    return writer


def record_dataset(root, episodes=2, frames=7, seed=0, codec=None):
    rng = np.random.default_rng(seed)
    rec = Recorder.create(root, 20.0, default_features(H, W), codec or ImageCodec("png"), planned_episodes=episodes)
    recorded = []
    for e in range(episodes):
        rec.start_episode(e, {"route": "straight", "weather": "ClearNoon", "seed": 10 + e})
        for i in range(frames + e):
            f = synthetic_frame(rng, i)
            rec.add_frame(f)
            recorded.append(f)
        rec.save_episode()
    rec.finalize()
    return recorded


def test_png_episode_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(1)
    frames = [synthetic_frame(rng, i) for i in range(10)]
    path = tmp_path / episode_name(3)
    K = np.arange(9.0).reshape(3, 3)
    write_episode(path, frames, ImageCodec("png"), {"camera_K": K, "expert": {"gain": 3.0}}).commit(
        {"termination": "goal"})
    reader = EpisodeReader(path)
    assert len(reader) == 10
    assert reader.attrs["route"] == "straight" and reader.attrs["termination"] == "goal"
    assert reader.attrs["expert"] == {"gain": 3.0} and np.array_equal(reader.attrs["camera_K"], K)
    for i, f in enumerate(frames):
        got = reader.frame(i)
        assert np.array_equal(got[IMAGE_KEY], f[IMAGE_KEY])
        for key, feat in reader.features.items():
            if key == IMAGE_KEY:
                continue
            expected = f[key] if feat.dtype == "str" else np.asarray(f[key], feat.dtype)
            assert np.array_equal(got[key], expected), key
    assert reader.column("events/markings").tolist()[:2] == ["", "Broken,Solid"]
    assert reader.column("action/expert").dtype == np.float32 and reader.column("observation/pose").shape == (10, 3)


def test_jpeg_keeps_the_encoded_bytes_and_decodes_close(tmp_path):
    frame = np.zeros((H, W, 3), np.uint8)
    frame[:, :8] = (200, 40, 10)  # RGB order must survive (cv2 works in BGR)
    codec = ImageCodec("jpeg", jpeg_quality=95)
    frames = [{**synthetic_frame(np.random.default_rng(0), 0), IMAGE_KEY: frame}]
    write_episode(tmp_path / "e.h5", frames, codec).commit()
    reader = EpisodeReader(tmp_path / "e.h5")
    assert np.array_equal(reader.encoded(0), codec.encode(frame))
    assert np.abs(reader.image(0).astype(int) - frame).mean() < 6
    assert reader.image(0)[6, 2, 0] > 150 and reader.image(0)[6, 2, 2] < 60


def test_episode_is_partial_until_commit_and_abort_deletes_it(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "episodes" / episode_name(0)
    writer = write_episode(path, [synthetic_frame(rng, i) for i in range(9)], ImageCodec("png"))
    assert not path.exists() and (tmp_path / "episodes" / "episode_000000.h5.partial").exists()
    writer.commit()
    assert path.exists() and not list(path.parent.glob("*.partial"))
    other = write_episode(tmp_path / "x.h5", [synthetic_frame(rng, 0)], ImageCodec("png"))
    other.abort()
    assert list(tmp_path.iterdir()) == [tmp_path / "episodes"]


def test_check_episode_finds_garbage_truncation_missing_data_and_bad_images(tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.h5"
    write_episode(good, [synthetic_frame(rng, i) for i in range(6)], ImageCodec("png")).commit()
    assert check_episode(good) == []
    data = good.read_bytes()
    (tmp_path / "garbage.h5").write_bytes(b"not an hdf5 file" * 100)
    (tmp_path / "truncated.h5").write_bytes(data[: len(data) // 2])
    assert check_episode(tmp_path / "garbage.h5")[0].startswith("cannot be read (corrupt or truncated)")
    assert check_episode(tmp_path / "truncated.h5")[0].startswith("cannot be read (corrupt or truncated)")
    missing = tmp_path / "missing.h5"
    missing.write_bytes(data)
    with h5py.File(missing, "a") as f:
        del f["action/expert"]
    assert check_episode(missing) == ["missing dataset action/expert"]
    bad_image = tmp_path / "bad_image.h5"
    bad_image.write_bytes(data)
    with h5py.File(bad_image, "a") as f:
        f[IMAGE_KEY][2] = np.frombuffer(b"\x89PNG broken", np.uint8)
        f["observation/image_nbytes"][2] = 11
        f[CRC_KEY][2] = frame_crc32(b"\x89PNG broken")  # bytes that are what was "recorded", yet no image
    assert check_episode(bad_image) == ["frame 2: image does not decode"]
    assert check_episode(bad_image, decode="none") == []
    unfinished = tmp_path / "unfinished.h5"
    unfinished.write_bytes(data)
    with h5py.File(unfinished, "a") as f:
        f.attrs["complete"] = False
    assert check_episode(unfinished) == ["not marked complete (the recording was interrupted)"]
    flipped = tmp_path / "flipped.h5"  # one byte of a numeric column changed on disk: its checksum fails
    with h5py.File(good, "r") as f:
        offset = f["observation/pose"].id.get_chunk_info(0).byte_offset
    raw = bytearray(data)
    raw[offset + 3] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    assert check_episode(flipped, decode="none")[0].startswith("cannot be read (corrupt or truncated)")
    with h5py.File(good, "r") as f:  # an integer column is verified too
        offset = f["frame_index"].id.get_chunk_info(0).byte_offset
    raw = bytearray(data)
    raw[offset] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    assert check_episode(flipped, decode="none")[0].startswith("cannot be read (corrupt or truncated)")
    not_finite = tmp_path / "not_finite.h5"
    not_finite.write_bytes(data)
    with h5py.File(not_finite, "a") as f:
        f["observation/speed_mps"][1] = np.nan
    assert check_episode(not_finite, decode="none") == [
        "dataset observation/speed_mps holds values that are not finite (corrupt data)"]


def test_a_flipped_byte_inside_a_jpeg_frame_is_named_by_check_and_by_the_reader(tmp_path):
    rng = np.random.default_rng(1)
    good = tmp_path / "good.h5"
    write_episode(good, [synthetic_frame(rng, i) for i in range(6)], ImageCodec("jpeg")).commit()
    with h5py.File(good, "r") as f:
        assert f[CRC_KEY][()].tolist() == [frame_crc32(f[IMAGE_KEY][i]) for i in range(6)]
        frame3 = bytes(f[IMAGE_KEY][3])
    raw = bytearray(good.read_bytes())
    at = raw.find(frame3)
    assert at > 0 and raw.find(frame3, at + 1) == -1  # the frame's bytes, once in the file
    raw[at + len(frame3) - 20] ^= 0x10  # in the entropy-coded data near its end: the decoder only warns
    flipped = tmp_path / "flipped.h5"
    flipped.write_bytes(bytes(raw))
    assert decode_image(EpisodeReader(flipped).handle()[IMAGE_KEY][3]).shape == (H, W, 3)  # decodes "fine"
    assert check_episode(flipped) == ["frame 3: the image bytes fail their CRC32 check (corrupt data)"]
    reader = EpisodeReader(flipped)
    assert reader.image(2).shape == (H, W, 3)
    with pytest.raises(FrameChecksumError, match=r"flipped.h5 frame 3: the image bytes fail their CRC32 check"):
        reader.image(3)
    old = tmp_path / "old.h5"  # recorded before per-frame CRCs: still loads and checks, unverified
    old.write_bytes(bytes(raw))
    with h5py.File(old, "a") as f:
        del f[CRC_KEY]
    assert check_episode(old) == [] and EpisodeReader(old).image(3).shape == (H, W, 3)


def test_dataset_index_addresses_every_frame_of_every_episode(tmp_path):
    recorded = record_dataset(tmp_path / "d", episodes=3, frames=5)
    index = DatasetIndex(tmp_path / "d", max_open=2)
    assert len(index) == 5 + 6 + 7 == len(recorded)
    assert index.locate(0) == (0, 0) and index.locate(5) == (1, 0) and index.locate(17) == (2, 6)
    assert index.episode_ids().tolist() == [0] * 5 + [1] * 6 + [2] * 7
    steer = index.column("action/expert")[:, 0]
    assert np.array_equal(steer, np.float32([f["action/expert"][0] for f in recorded]))
    for i in (17, 0, 6, 11, 3):
        assert np.array_equal(index.image(i), recorded[i][IMAGE_KEY])
        assert index.frame(i)["frame_index"] == recorded[i]["frame_index"]
    assert sum(r.is_open for r in index.readers) == 2  # least recently used handles are closed
    clone = pickle.loads(pickle.dumps(index))
    assert not any(r.is_open for r in clone.readers)
    assert np.array_equal(clone.image(9), recorded[9][IMAGE_KEY])
    with pytest.raises(IndexError, match="frame 18 is outside 0..17"):
        index.locate(18)


_FORKED_INDEX = None


def _image_in_child(i):
    return _FORKED_INDEX.image(i), _FORKED_INDEX.readers[0].is_open


def test_handles_opened_before_a_fork_are_reopened_in_the_child(tmp_path):
    global _FORKED_INDEX
    recorded = record_dataset(tmp_path / "d", episodes=1, frames=6)
    _FORKED_INDEX = DatasetIndex(tmp_path / "d")
    _FORKED_INDEX.image(0)  # the parent holds an open handle
    parent_handle = _FORKED_INDEX.readers[0].handle()
    with mp.get_context("fork").Pool(2) as pool:
        results = pool.map(_image_in_child, [1, 4, 5])
    for (image, reopened), i in zip(results, (1, 4, 5), strict=True):
        assert reopened and np.array_equal(image, recorded[i][IMAGE_KEY])
    assert _FORKED_INDEX.readers[0].handle() is parent_handle and parent_handle.id.valid


def test_check_dataset_reports_files_by_name_and_notes_leftovers(tmp_path):
    root = tmp_path / "d"
    record_dataset(root, episodes=3, frames=4)
    assert check_dataset(root).ok
    (root / "episodes" / "episode_000001.h5").write_bytes(b"\0garbage" * 64)
    (root / "episodes" / "episode_000003.h5.partial").write_bytes(b"half")
    (root / "episodes" / "episode_000002.h5").unlink()
    report = check_dataset(root)
    assert sorted(report.problems) == ["episodes/episode_000001.h5", "episodes/episode_000002.h5"]
    assert report.problems["episodes/episode_000002.h5"] == ["listed in the manifest but the file is missing"]
    assert report.notes and "episode_000003.h5.partial is an unfinished episode" in report.notes[0]
    with pytest.raises(DatasetError, match="does not exist"):
        check_dataset(tmp_path / "nowhere")


def test_manifest_is_sorted_totalled_and_validated(tmp_path):
    manifest = new_manifest(default_features(H, W), 20.0, 2)
    manifest["episodes"] = [{"index": 1, "frames": 5}, {"index": 0, "frames": 3}]
    write_manifest(tmp_path, manifest)
    stored = read_manifest(tmp_path)
    assert [e["index"] for e in stored["episodes"]] == [0, 1] and stored["total_frames"] == 8
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="has no manifest.json: not a caril dataset"):
        read_manifest(tmp_path / "empty")
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(DatasetError, match="is unreadable"):
        DatasetIndex(tmp_path)


def test_names_codecs_and_decoding_errors():
    assert episode_name(42) == "episode_000042.h5" and episode_index_of("a/episode_000042.h5") == 42
    assert episode_index_of("episode_000042.h5.partial") is None
    with pytest.raises(CarilError, match=re.escape("JPEG quality 0 is outside 1..100")):
        ImageCodec("jpeg", jpeg_quality=0)
    with pytest.raises(CarilError, match="image format 'webp' is not one of jpeg, png"):
        ImageCodec("webp")
    with pytest.raises(DatasetError, match="an image of 3 bytes does not decode"):
        decode_image(np.array([1, 2, 3], np.uint8))


# -- label options (applied when reading) -------------------------------------------------------------------
def test_filter_and_scale_follow_the_paper():
    steer = np.array([0.0, 0.1, -0.3, 0.25, -0.25, 0.2, 0.02, 0.26])
    labeled = label_frames(steer, LabelOptions())
    assert labeled.indices.tolist() == [0, 1, 3, 4, 5, 6]
    assert np.allclose(labeled.steer, [0.0, 0.4, 1.0, -1.0, 0.8, 0.08])
    assert labeled.classes.tolist() == [5, 7, 10, 0, 9, 5]
    assert np.allclose(scale_steer(np.array([0.5, -0.01]), LabelOptions()), [1.0, -0.04])
    assert len(label_frames(steer, LabelOptions(steer_limit=None))) == 8


def test_balancing_caps_each_bin_reproducibly_and_noisy_frames_can_be_dropped():
    rng = np.random.default_rng(0)
    steer = np.concatenate([np.zeros(50), np.full(5, 0.1), np.full(3, -0.2)])
    rng.shuffle(steer)
    options = LabelOptions(max_per_bin=4, seed=7)
    a, b = label_frames(steer, options), label_frames(steer, options)
    assert np.array_equal(a.indices, b.indices)
    assert np.bincount(a.classes, minlength=11).tolist() == [0, 3, 0, 0, 0, 4, 0, 4, 0, 0, 0]
    assert np.all(np.diff(a.indices) > 0) and np.allclose(a.steer, scale_steer(steer[a.indices], options))
    assert not np.array_equal(a.indices, label_frames(steer, LabelOptions(max_per_bin=4, seed=8)).indices)
    noisy = np.zeros(len(steer), bool)
    noisy[:10] = True
    kept = label_frames(steer, LabelOptions(drop_noisy=True), noisy).indices
    assert kept.min() == 10 and len(kept) == len(steer) - 10
    with pytest.raises(CarilError, match="max frames per bin 0 must be at least 1"):
        LabelOptions(max_per_bin=0)


def test_balancing_caps_each_command_separately_so_junction_frames_survive():
    steer = np.zeros(60)
    commands = np.full(60, 4)  # LANEFOLLOW ...
    commands[[3, 17, 40]] = 3  # ... and three frames driving straight through a junction, all in the centre bin
    labeled = label_frames(steer, LabelOptions(max_per_bin=5, seed=1), commands=commands)
    assert len(labeled) == 8 and labeled.classes.tolist() == [5] * 8
    assert sorted(labeled.indices[labeled.commands == 3].tolist()) == [3, 17, 40]
    assert np.array_equal(labeled.commands, commands[labeled.indices])
    assert label_frames(steer, LabelOptions()).commands.tolist() == [4] * 60  # no commands recorded: lane follow


def test_histogram_and_dataset_labels(tmp_path):
    hist = steering_histogram(np.array([0.0, 0.0, 0.1, -0.3, 0.24]))
    assert hist["counts"] == [0, 0, 0, 0, 0, 2, 0, 1, 0, 0, 1] and hist["filtered_out"] == 1
    assert len(hist["edges"]) == 12 and hist["edges"][0] == -1.0
    recorded = record_dataset(tmp_path / "d", episodes=2, frames=5)
    labeled = label_dataset(DatasetIndex(tmp_path / "d"), LabelOptions(steer_limit=None))
    assert np.allclose(labeled.steer, np.clip(4 * np.float32([f["action/expert"][0] for f in recorded]), -1, 1))


def test_an_unreadable_episode_or_manifest_is_said_to_be_unreadable_not_corrupt(tmp_path, monkeypatch):
    record_dataset(tmp_path / "d", episodes=2)
    denied = tmp_path / "d" / "episodes" / "episode_000001.h5"
    real_access = os.access  # the tests may run as root, whom chmod 000 does not stop: deny as a user is denied
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != denied and real_access(p, mode))
    report = check_dataset(tmp_path / "d")
    assert report.problems == {"episodes/episode_000001.h5": [
        "cannot be read: permission denied (check its owner and mode)"]}
    with pytest.raises(DatasetError, match=r"episode file .*episode_000001.h5 cannot be read: permission denied"):
        len(EpisodeReader(denied))
    monkeypatch.undo()
    real_read_text = Path.read_text

    def read_text(self, *args, **kwargs):
        if self.name == "manifest.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(DatasetError, match=r"manifest.json cannot be read: permission denied"):
        read_manifest(tmp_path / "d")
