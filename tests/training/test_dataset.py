"""The training dataset: split by episode, flip and jitter augmentation, the agent's preprocessing, sampling,
and one clear error for empty, corrupt and mixed-size datasets."""

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from agent.bins import SteeringBins
from agent.preprocess import PreprocessConfig, preprocess_frame, to_tensor_normalised
from sim.errors import UsageError
from sim.types import CameraConfig
from tests.tiny_dataset import record
from training.collect import CollectConfig, CollectJob
from training.data_options import LabeledFrames, LabelOptions, label_dataset
from training.dataset import (
    NO_AUGMENT,
    AugmentConfig,
    DrivingDataset,
    ShardSampler,
    TrainSampler,
    add_haze,
    color_jitter,
    colour_cast,
    make_loader,
    open_dataset,
    photometric,
    split_by_episode,
)
from training.episode_file import (
    CRC_KEY,
    IMAGE_KEY,
    DatasetError,
    DatasetIndex,
    entry_from_file,
    frame_crc32,
    read_manifest,
    write_manifest,
)

PRE = PreprocessConfig(height=32, width=32)
BINS = SteeringBins()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return record(tmp_path_factory.mktemp("dataset") / "tiny")


@pytest.fixture(scope="session")
def index(data_root):
    return open_dataset(data_root, PRE)


@pytest.fixture(scope="session")
def frames(index):
    return label_dataset(index, LabelOptions())


def test_split_never_puts_one_episode_on_both_sides_and_is_deterministic(index, frames):
    episode_of = index.episode_ids()
    seen = set()
    for seed in range(8):
        split = split_by_episode(index, frames, 0.2, seed)
        train_eps, val_eps = set(episode_of[split.train.indices]), set(episode_of[split.val.indices])
        assert train_eps and val_eps and not train_eps & val_eps
        assert len(val_eps) == 1  # max(1, round(0.2 * 3))
        assert sorted(np.concatenate([split.train.indices, split.val.indices]).tolist()) == frames.indices.tolist()
        files = [index.entries[e]["file"] for e in sorted(val_eps)]
        assert list(split.val_episodes) == files and not set(split.train_episodes) & set(files)
        again = split_by_episode(index, frames, 0.2, seed)
        assert np.array_equal(again.val.indices, split.val.indices) and again.val_episodes == split.val_episodes
        seen.add(split.val_episodes)
    assert len(seen) > 1  # the seed chooses the episodes


def test_split_needs_two_episodes(tmp_path, frames):
    root = record(tmp_path / "one", episodes=1, frames=10)
    one = open_dataset(root, PRE)
    with pytest.raises(DatasetError, match="has 1 episode.*needs at least 2"):
        split_by_episode(one, label_dataset(one, LabelOptions()), 0.2, 0)


def test_samples_are_the_agents_preprocessing_of_the_recorded_frame(index, frames):
    data = DrivingDataset(index, frames, PRE, BINS)
    for i in (0, len(frames) // 2, len(frames) - 1):
        sample = data[i]
        frame = int(frames.indices[i])
        assert sample["frame"].item() == frame
        assert sample["image"].dtype == torch.uint8 and tuple(sample["image"].shape) == (32, 32, 3)
        expected = preprocess_frame(index.image(frame), PRE)  # what CarilAgent.act feeds the network
        assert torch.equal(to_tensor_normalised(sample["image"], PRE), torch.from_numpy(expected))
        assert sample["steer"].item() == frames.steer[i] and sample["bin"].item() == frames.classes[i]


def test_flip_mirrors_image_steering_and_class_together(index, frames):
    plain = DrivingDataset(index, frames, PRE, BINS, NO_AUGMENT)
    flipped = DrivingDataset(index, frames, PRE, BINS, AugmentConfig(1.0, 0.0, 0.0, 0.0))
    assert len({int(c) for c in frames.classes}) >= 4  # the data exercises several classes
    for i in range(len(frames)):
        a, b = plain[i], flipped[(i, 3)]
        assert torch.equal(b["image"], a["image"].flip(1))  # columns reversed, exactly
        assert b["steer"].item() == -a["steer"].item()
        assert b["bin"].item() == BINS.mirror(a["bin"].item()) == BINS.index(-a["steer"].item())
    # a coin flip per sample: each sample is either untouched or mirrored in all three
    half = DrivingDataset(index, frames, PRE, BINS, AugmentConfig(0.5, 0.0, 0.0, 0.0), seed=7)
    outcomes = []
    for i in range(len(frames)):
        a, b = plain[i], half[(i, 0)]
        same = torch.equal(a["image"], b["image"]) and a["steer"] == b["steer"] and a["bin"] == b["bin"]
        mirrored = torch.equal(a["image"].flip(1), b["image"]) and a["steer"] == -b["steer"] \
            and b["bin"].item() == BINS.mirror(a["bin"].item())
        assert same or mirrored
        outcomes.append(mirrored and not same)
    assert 0.3 < np.mean(outcomes) < 0.7


def test_a_flipped_frame_on_a_bin_edge_keeps_the_bin_of_its_value(index):
    """With an even number of bins 0 is an edge, and straight driving is exactly 0: a flipped 0 (-0.0) is in
    the same bin as 0, not the mirrored one."""
    ten = LabelOptions(n_bins=10, steer_limit=None)
    frames = label_dataset(index, ten)
    zero = np.flatnonzero(frames.steer == 0.0)
    assert len(zero)
    flipped = DrivingDataset(index, frames, PRE, ten.bins, AugmentConfig(1.0, 0.0, 0.0, 0.0))
    for i in zero[:5]:
        sample = flipped[(int(i), 0)]
        assert sample["bin"].item() == frames.classes[i] == ten.bins.index(0.0) == 5


def test_jitter_is_a_function_of_seed_epoch_and_frame(index, frames):
    aug = AugmentConfig(0.5, 0.3, 0.3, 0.3)
    data = DrivingDataset(index, frames, PRE, BINS, aug, seed=5)
    plain = DrivingDataset(index, frames, PRE, BINS)
    assert torch.equal(data[(4, 1)]["image"], data[(4, 1)]["image"])
    assert not torch.equal(data[(4, 1)]["image"], data[(4, 2)]["image"])
    other_seed = DrivingDataset(index, frames, PRE, BINS, aug, seed=6)
    assert not torch.equal(data[(4, 1)]["image"], other_seed[(4, 1)]["image"])
    assert not torch.equal(data[(4, 1)]["image"], plain[4]["image"])
    # the same batches whatever the number of worker processes
    keys_sampler = TrainSampler(frames.classes, seed=5)
    keys_sampler.set_epoch(2)
    in_main = list(make_loader(data, keys_sampler, 16, workers=0))
    in_workers = list(make_loader(data, keys_sampler, 16, workers=2, prefetch_factor=2))
    assert len(in_main) == len(in_workers) == -(-len(frames) // 16)
    for a, b in zip(in_main, in_workers, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("image", "steer", "bin", "frame"))


def test_train_sampler_is_seeded_sharded_and_balanced(frames):
    classes = frames.classes
    s = TrainSampler(classes, seed=3)
    s.set_epoch(1)
    first = list(s)
    assert sorted(i for i, _ in first) == list(range(len(classes))) and {e for _, e in first} == {1}
    assert list(s) == first  # a pure function of (seed, epoch)
    s.set_epoch(2)
    assert list(s) != first
    shards = [TrainSampler(classes, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for shard in shards:
        shard.set_epoch(1)
    a, b = ([i for i, _ in shard] for shard in shards)
    assert len(a) == len(b) == len(shards[0]) == -(-len(classes) // 2)
    assert set(a) | set(b) == set(range(len(classes)))
    assert len(set(a) & set(b)) == 2 * len(a) - len(classes)  # only the padding repeats
    balanced = TrainSampler(classes, seed=3, balanced=True)
    drawn = np.concatenate([classes[[i for i, _, _ in balanced]] for balanced.epoch in range(40)])
    counts = np.bincount(drawn, minlength=11)[np.unique(classes)]
    assert counts.max() / counts.min() < 1.3  # while the data is dominated by "straight"
    assert np.bincount(classes).max() / np.bincount(classes)[np.unique(classes)].min() > 5
    assert list(ShardSampler(7, 1, 3)) == [1, 4]


def test_a_frame_drawn_twice_in_an_epoch_is_augmented_anew(index, frames):
    """Balanced sampling draws rare frames several times an epoch: each draw gets its own flip and jitter,
    and the keys still depend only on (seed, epoch), not on ranks or workers."""
    balanced = TrainSampler(frames.classes, seed=3, balanced=True)
    keys = list(balanced)
    again = [k for k in keys if k[2] > 0]
    assert again and all(k[1] == 0 for k in keys)
    for rank in (0, 1):  # the shards hold exactly the single-process keys
        shard = TrainSampler(frames.classes, seed=3, balanced=True, rank=rank, world_size=2)
        assert list(shard) == keys[rank::2][:len(shard)]
    jitter = DrivingDataset(index, frames, PRE, BINS, AugmentConfig(0.5, 0.3, 0.3, 0.3))
    i = again[0][0]
    first, second = jitter[(i, 0, 0)], jitter[(i, 0, again[0][2])]
    assert not torch.equal(first["image"], second["image"])
    assert torch.equal(jitter[(i, 0)]["image"], first["image"])  # draw 0 is augmented as before


def test_empty_dataset_is_one_clear_error(tmp_path):
    job = CollectJob(CollectConfig(episodes=1, camera=CameraConfig(width=64, height=64)), tmp_path / "empty")
    job.prepare()  # config and an empty manifest, nothing recorded
    with pytest.raises(DatasetError, match="has no episodes; record some with: caril collect"):
        open_dataset(tmp_path / "empty", PRE)


def test_corrupt_episode_is_named(tmp_path, data_root):
    root = tmp_path / "corrupt"
    shutil.copytree(data_root, root)
    path = root / "episodes" / "episode_000001.h5"
    path.write_bytes(path.read_bytes()[:5000])  # truncated
    with pytest.raises(DatasetError, match=r"episode_000001.h5: cannot be read .*caril data check"):
        open_dataset(root, PRE)


def test_undecodable_frame_is_named_with_its_file_and_frame(tmp_path, data_root):
    root = tmp_path / "badframe"
    shutil.copytree(data_root, root)
    with h5py.File(root / "episodes" / "episode_000002.h5", "r+") as f:
        f[IMAGE_KEY][7] = np.zeros(len(f[IMAGE_KEY][7]), np.uint8)  # same length, not an image any more
        f[CRC_KEY][7] = frame_crc32(f[IMAGE_KEY][7])  # as if recorded so: the decoder is what fails
    index = open_dataset(root, PRE, check="none")
    frames = label_dataset(index, LabelOptions(steer_limit=None))
    data = DrivingDataset(index, frames, PRE, BINS)
    position = int(np.flatnonzero(frames.indices == index.starts[2] + 7)[0])
    with pytest.raises(DatasetError, match=r"episode_000002.h5 frame 7: .*does not decode"):
        data[position]


def test_mixed_camera_sizes_are_one_clear_error(tmp_path, data_root):
    root = tmp_path / "mixed"
    shutil.copytree(data_root, root)
    other = record(tmp_path / "other", episodes=1, width=48, height=64, frames=10)
    target = root / "episodes" / "episode_000003.h5"
    shutil.copy(other / "episodes" / "episode_000000.h5", target)
    manifest = read_manifest(root)
    manifest["episodes"].append({**entry_from_file(target), "index": 3, "file": "episodes/episode_000003.h5"})
    write_manifest(root, manifest)
    assert len(DatasetIndex(root)) == 190  # a readable dataset...
    with pytest.raises(DatasetError, match=r"mixes camera sizes \(64x64 in episode_000000.h5, episode_000001.h5, "
                                           r"episode_000002.h5; 48x64 in episode_000003.h5\)"):
        open_dataset(root, PRE)  # ...but not one network input


def test_augment_config_is_validated():
    with pytest.raises(ValueError, match=r"flip probability 1.5 must be in \[0, 1\]"):
        AugmentConfig(flip_prob=1.5)
    with pytest.raises(ValueError, match=r"brightness jitter 1.0 must be in \[0, 1\)"):
        AugmentConfig(brightness=1.0)
    assert json.loads(json.dumps(AugmentConfig().to_dict()))["flip_prob"] == 0.5
    with pytest.raises(ValueError, match=r"blur probability 2.0 must be in \[0, 1\]"):
        AugmentConfig(blur_prob=2.0)
    with pytest.raises(ValueError, match=r"haze jitter 1.0 must be in \[0, 1\)"):
        AugmentConfig(haze=1.0)
    with pytest.raises(ValueError, match=r"blur sigma 0.1 must be in \[0.3, 10\] pixels"):
        AugmentConfig(blur_sigma=0.1)
    old = {"flip_prob": 0.5, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2}  # a run before colour/haze/blur
    assert AugmentConfig(**old) == AugmentConfig() and not AugmentConfig(**old).colour


def test_photometric_augmentations_are_seeded_and_each_does_what_it_says():
    rng = np.random.default_rng(0)
    image = rng.integers(30, 220, size=(24, 32, 3), dtype=np.uint8)
    basic = AugmentConfig(brightness=0.3, contrast=0.3, saturation=0.3)
    # with the new ones off, exactly the old jitter and the same draws: runs from before reproduce
    assert np.array_equal(photometric(image, np.random.default_rng(4), basic),
                          color_jitter(image, np.random.default_rng(4), basic))
    full = AugmentConfig(brightness=0.3, contrast=0.3, saturation=0.3, colour=0.2, haze=0.5, blur_prob=1.0)
    a, b = (photometric(image, np.random.default_rng(9), full) for _ in range(2))
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape == image.shape
    assert not np.array_equal(a, photometric(image, np.random.default_rng(10), full))
    gains = np.random.default_rng(3).uniform(0.8, 1.2, size=3).astype(np.float32)
    cast = colour_cast(image, np.random.default_rng(3), 0.2)
    assert np.array_equal(cast, np.clip(np.rint(image.astype(np.float32) * gains), 0, 255).astype(np.uint8))
    flat = np.full((8, 8, 3), 40, np.uint8)
    hazy = add_haze(flat, np.random.default_rng(1), 0.9)
    r = np.random.default_rng(1)
    weight, level = r.uniform(0.0, 0.9), r.uniform(100.0, 200.0)
    assert np.all(hazy == round(40 * (1 - weight) + weight * level)) and hazy[0, 0, 0] > 40  # towards grey
    blurred = photometric(image, np.random.default_rng(2), AugmentConfig(0.0, 0.0, 0.0, 0.0, blur_prob=1.0))
    assert blurred.std() < image.std()  # a blur smooths the noise
    assert np.array_equal(photometric(image, np.random.default_rng(2), NO_AUGMENT), image)



def test_flip_mirrors_the_route_command_with_the_image(index, frames):
    commands = np.array([1, 2, 3, 4])[np.arange(len(frames)) % 4]  # LEFT, RIGHT, STRAIGHT, LANEFOLLOW in turn
    with_commands = LabeledFrames(frames.indices, frames.steer, frames.classes, commands)
    plain = DrivingDataset(index, with_commands, PRE, BINS, NO_AUGMENT)
    flipped = DrivingDataset(index, with_commands, PRE, BINS, AugmentConfig(1.0, 0.0, 0.0, 0.0))
    mirrored = {1: 2, 2: 1, 3: 3, 4: 4}
    for i in range(8):
        assert plain[i]["command"].item() == commands[i]
        assert flipped[(i, 0)]["command"].item() == mirrored[commands[i]]


def test_several_datasets_train_together(tmp_path, data_root, index):
    """``--data a,b``: b's episodes follow a's, named by folder; frames and columns are both datasets';
    the split of a's episodes is what it is alone; datasets recorded differently are refused."""
    other = record(tmp_path / "dagger", episodes=2, seed=5)
    both = open_dataset(f"{data_root},{other}", PRE)
    alone = DatasetIndex(other)
    assert len(both) == len(index) + len(alone) and len(both.entries) == 5
    assert [e["file"] for e in both.entries[3:]] == [f"{other.resolve()}/{e['file']}" for e in alone.entries]
    assert np.array_equal(both.column("action/expert"),
                          np.concatenate([index.column("action/expert"), alone.column("action/expert")]))
    assert np.array_equal(both.image(len(index)), alone.image(0))  # the first frame of the second dataset

    def key(seed, *parts):
        return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])

    frames_both = label_dataset(both, LabelOptions())
    first = [e["file"] for e in index.entries]
    for seed in range(6):  # each dataset splits on its own: the first exactly as alone, with the keys it had
        solo = split_by_episode(index, label_dataset(index, LabelOptions()), 0.4, seed)
        keys = {e["file"]: key(seed, e["index"]) for e in index.entries}
        assert list(solo.val_episodes) == sorted(keys, key=keys.get)[:1]
        split = split_by_episode(both, frames_both, 0.4, seed)
        assert [f for f in split.val_episodes if f in first] == list(solo.val_episodes)
        later = {e["file"]: key(seed, 1, e["index"]) for e in both.entries[3:]}  # 2 episodes: 1 held out
        assert [f for f in split.val_episodes if f not in first] == sorted(later, key=later.get)[:1]


def test_a_replayed_scenario_stays_on_its_twins_side(tmp_path, data_root, index):
    """A DAgger-style recording with the expert data's --seed replays its scenarios (route, weather, seed):
    each such episode goes to its twin's side, so no scenario is validated on and trained on."""
    twin = record(tmp_path / "twin", episodes=3, seed=1)  # the data_root fixture's plan
    both = open_dataset(f"{data_root},{twin}", PRE)
    frames = label_dataset(both, LabelOptions())
    scenario = [(e["route"], e["weather"], e["seed"]) for e in both.entries]
    assert scenario[:3] == scenario[3:]
    for seed in range(6):
        split = split_by_episode(both, frames, 0.4, seed)
        val = [e["file"] in split.val_episodes for e in both.entries]
        assert val[:3] == val[3:] and sum(val) == 2


@pytest.mark.parametrize(("data", "message"), [
    (",", "names no dataset folder"), (" , ", "names no dataset folder"),
    ("{a},{a}", "names the dataset {a} twice"), ("{a},{a}/../{name}", "twice"),
])
def test_data_names_each_dataset_once(data_root, data, message):
    a = str(data_root)
    data, message = (t.format(a=a, name=Path(a).name) for t in (data, message))
    with pytest.raises(UsageError, match=re.escape(message)):
        open_dataset(data, PRE)


def test_blanks_around_dataset_names_are_ignored(data_root, index):
    assert [e["file"] for e in open_dataset(f" {data_root} ", PRE).entries] == [e["file"] for e in index.entries]


def test_datasets_recorded_differently_are_refused(tmp_path, data_root):
    wide = record(tmp_path / "wide", episodes=1, width=48, height=64, frames=10)
    with pytest.raises(DatasetError, match="recorded with other features or another rate"):
        open_dataset(f"{data_root},{wide}", PRE)
