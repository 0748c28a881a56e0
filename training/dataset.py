"""Recorded episodes -> (image, steering, bin) training samples: split by episode, augmentation, loaders.

::

    index = open_dataset("data/demo", preprocess)          # checks files, image sizes; DatasetError if unusable
    split = split_by_episode(index, label_dataset(index, LabelOptions()), val_fraction=0.2, seed=0)
    train_set = DrivingDataset(index, split.train, preprocess, bins, AugmentConfig(), seed=0)
    loader = make_loader(train_set, TrainSampler(split.train.classes, seed=0), batch_size=64, workers=2)

The split is by EPISODE: neighbouring frames of one drive are nearly identical, so a frame split (the
reference's ``train_test_split``) leaks them across it (``imitation-learning.md`` 1.7, 1.11). Episodes are
ordered by a key drawn from (seed, episode index) and the first ``val_fraction`` of them validate, so the
split depends on the seed and the episodes, not on their order in the manifest.

A sample is decoded and cropped/resized by the agent's own :func:`agent.preprocess.crop_and_resize` inside the
DataLoader worker, then augmented on the small uint8 image: a horizontal flip negates the steering AND
mirrors the class (``bins.mirror``; the reference forgot the class, pitfall 1), colour jitter scales
brightness, contrast and saturation. The main process only stacks uint8 tensors and normalises on the
device (:func:`agent.preprocess.to_tensor_normalised`). Randomness comes from ``(seed, epoch, frame)``, so a
sample's augmentation is the same whatever worker draws it, with any number of workers, and after a resume.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler

from agent.bins import SteeringBins
from agent.preprocess import FrameError, PreprocessConfig, crop_and_resize
from sim.errors import UsageError
from sim.types import RoadOption
from training.data_options import LabeledFrames
from training.episode_file import IMAGE_KEY, DatasetError, DatasetIndex, FrameChecksumError, check_dataset, decode_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation, drawn per sample; evaluation never augments.

    ``flip_prob``: chance of a horizontal flip (steer negated, class and command mirrored). Photometric, each
    off at 0: ``brightness``, ``contrast``, ``saturation``: a factor drawn uniformly in [1 - s, 1 + s];
    ``colour``: a gain per RGB channel in [1 - c, 1 + c] (a warm or cold cast, as a low sun gives); ``haze``:
    the image blended towards a uniform grey by a weight in [0, h] (fog, rain); ``blur_prob``: chance of a
    Gaussian blur whose sigma is drawn in [0.3, ``blur_sigma``] pixels of the network input (rain, defocus).
    """

    flip_prob: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    colour: float = 0.0
    haze: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: float = 1.5

    def __post_init__(self) -> None:
        for name in ("flip_prob", "blur_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"{name.replace('_prob', '')} probability {getattr(self, name)} must be in [0, 1] "
                                 "(0.5 augments half the samples)")
        for name in ("brightness", "contrast", "saturation", "colour", "haze"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise UsageError(f"{name} jitter {value} must be in [0, 1) (a factor in [1 - s, 1 + s]), e.g. 0.2")
        if not 0.3 <= self.blur_sigma <= 10.0:
            raise UsageError(f"blur sigma {self.blur_sigma} must be in [0.3, 10] pixels, e.g. 1.5")

    @property
    def jitter(self) -> bool:
        """Whether brightness, contrast or saturation are jittered."""
        return bool(self.brightness or self.contrast or self.saturation)

    @property
    def photometric(self) -> bool:
        """Whether any photometric augmentation is on."""
        return self.jitter or bool(self.colour or self.haze or self.blur_prob)

    def to_dict(self) -> dict:
        return asdict(self)


NO_AUGMENT = AugmentConfig(flip_prob=0.0, brightness=0.0, contrast=0.0, saturation=0.0)
_GREY = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 luma weights, RGB


def color_jitter(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Brightness, contrast and saturation factors from ``rng`` applied to an (h, w, 3) uint8 RGB image."""
    b, c, s = (rng.uniform(1.0 - v, 1.0 + v) for v in (cfg.brightness, cfg.contrast, cfg.saturation))
    x = image.astype(np.float32) * np.float32(b)  # (h, w, 3)
    grey = x @ _GREY  # (h, w)
    x = (x - grey.mean()) * np.float32(c) + grey.mean()  # contrast around the mean grey level
    grey = x @ _GREY
    x = (x - grey[..., None]) * np.float32(s) + grey[..., None]  # saturation: away from / towards grey
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def colour_cast(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A gain per RGB channel, each uniform in [1 - strength, 1 + strength], on an (h, w, 3) uint8 image."""
    gains = rng.uniform(1.0 - strength, 1.0 + strength, size=3).astype(np.float32)
    return np.clip(np.rint(image.astype(np.float32) * gains), 0, 255).astype(np.uint8)


def add_haze(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Blend towards a uniform grey (level uniform in [100, 200] of 255) by a weight uniform in [0, strength]."""
    weight, level = rng.uniform(0.0, strength), rng.uniform(100.0, 200.0)
    x = image.astype(np.float32) * np.float32(1.0 - weight) + np.float32(weight * level)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def photometric(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Every photometric augmentation of ``cfg`` on an (h, w, 3) uint8 image, in a fixed order with draws from
    ``rng`` only for those that are on (so a config without the later ones draws as before they existed)."""
    if cfg.jitter:
        image = color_jitter(image, rng, cfg)
    if cfg.colour:
        image = colour_cast(image, rng, cfg.colour)
    if cfg.haze:
        image = add_haze(image, rng, cfg.haze)
    if cfg.blur_prob and rng.random() < cfg.blur_prob:
        sigma = rng.uniform(0.3, cfg.blur_sigma)
        image = cv2.GaussianBlur(np.ascontiguousarray(image), (0, 0), sigmaX=sigma, sigmaY=sigma)
    return image


# --- opening and splitting ----------------------------------------------------------------------------------


def open_dataset(root: str | Path, preprocess: PreprocessConfig, check: str = "sample") -> DatasetIndex:
    """Open a recorded dataset for training, failing early with one :class:`DatasetError` that says what is wrong.

    ``root`` may name several folders separated by commas (``data/expert,data/dagger``): their episodes are
    trained on together (:meth:`DatasetIndex.concat`). ``check`` is
    :func:`~training.episode_file.check_dataset`'s decode mode (``all``, ``sample``, ``none``): corrupt or
    truncated episodes are named. Every episode must have the same camera size (one network input per
    dataset), and the preprocessing crop must fit it.
    """
    roots = data_roots(root)
    for folder in roots:
        report = check_dataset(folder, decode=check, sample=2)
        if not report.ok:
            name, problems = next(iter(report.problems.items()))
            more = f" (and {len(report.problems) - 1} more files)" if len(report.problems) > 1 else ""
            raise DatasetError(f"{folder / name}: {problems[0]}{more}; 'caril data check {folder}' lists every "
                               "problem (re-record or delete the bad episodes, 'caril collect --resume' repairs "
                               "the manifest)")
    root = roots[0] if len(roots) == 1 else root
    try:
        index = DatasetIndex.concat(roots)
    except (OSError, KeyError) as e:
        raise DatasetError(f"{root}: cannot be read ({e}); run 'caril data check {root}'") from None
    if not index.entries:
        raise DatasetError(f"dataset {root} has no episodes; record some with: caril collect --out {root}")
    shapes = {}
    for reader in index.readers:
        shapes.setdefault(tuple(reader.features[IMAGE_KEY].shape), []).append(reader.path.name)
    if len(shapes) > 1:
        sizes = "; ".join(f"{w}x{h} in {', '.join(files[:3])}{' ...' if len(files) > 3 else ''}"
                          for (h, w, _), files in shapes.items())
        raise DatasetError(f"dataset {root} mixes camera sizes ({sizes}); train on episodes of one camera size "
                           "(record them into separate datasets)")
    height, width, _ = next(iter(shapes))
    try:
        preprocess.crop_box(height, width)
    except FrameError as e:
        raise DatasetError(f"dataset {root} has {width}x{height} frames: {e}") from None
    return index


def data_roots(data: str | Path) -> list[Path]:
    """The dataset folders ``data`` names (comma-separated, blanks around names ignored); a folder named twice,
    however spelled, is an error (its episodes would be trained on twice, and validated on as well)."""
    roots = [Path(r.strip()) for r in str(data).split(",") if r.strip()]
    if not roots:
        raise UsageError(f"--data {str(data)!r} names no dataset folder; give one, or several separated by commas")
    seen: dict[Path, Path] = {}
    for folder in roots:
        if folder.resolve() in seen:
            raise UsageError(f"--data names the dataset {seen[folder.resolve()]} twice (also as {folder}); "
                             "give each dataset once")
        seen[folder.resolve()] = folder
    return roots


@dataclass(frozen=True)
class Split:
    """Training and validation frames, and the episode files on each side (never the same file on both)."""

    train: LabeledFrames
    val: LabeledFrames
    train_episodes: tuple[str, ...]
    val_episodes: tuple[str, ...]


def split_by_episode(index: DatasetIndex, frames: LabeledFrames, val_fraction: float, seed: int) -> Split:
    """Hold out ``max(1, round(val_fraction * episodes))`` whole episodes for validation, chosen by ``seed``.

    Several datasets (``--data a,b``) are split one by one, so the first splits exactly as alone; an episode
    of a later dataset that replays a scenario (route, weather, seed) of an earlier one, as a DAgger
    recording with the same ``--seed`` does, goes to that episode's side, so no scenario is on both sides.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"validation fraction {val_fraction} must be in (0, 1), e.g. 0.2")
    n = len(index.entries)
    if n < 2:
        raise DatasetError(f"dataset {index.root} has {n} episode(s); a train/validation split by episode needs "
                           "at least 2: record more with caril collect --resume --episodes N")
    is_val = np.zeros(n, bool)
    held_out: dict[tuple, bool] = {}  # scenario -> on the validation side, from the datasets split so far
    for source in dict.fromkeys(e.get("source", 0) for e in index.entries):
        members = [i for i, e in enumerate(index.entries) if e.get("source", 0) == source]
        is_val[members] = _held_out(index.entries, members, val_fraction, seed)
        for i in members:
            is_val[i] = held_out.get(_scenario(index.entries[i]), is_val[i])
        held_out.update((_scenario(index.entries[i]), bool(is_val[i])) for i in members
                        if None not in _scenario(index.entries[i]))
    if not is_val.any():
        raise DatasetError(f"no episode of {index.root} is left for validation: each dataset needs 2 episodes "
                           "or more; record more with caril collect --resume --episodes N")
    frame_is_val = is_val[index.episode_ids()[frames.indices]] if len(frames) else np.zeros(0, bool)
    train, val = frames.subset(~frame_is_val), frames.subset(frame_is_val)
    files = [e["file"] for e in index.entries]
    split = Split(train, val, tuple(f for f, v in zip(files, is_val, strict=True) if not v),
                  tuple(f for f, v in zip(files, is_val, strict=True) if v))
    for side, part in (("training", train), ("validation", val)):
        if len(part) == 0:
            raise DatasetError(f"the {side} episodes of {index.root} have no frames left after the label options "
                               f"({len(frames)} frames kept of {len(index)}); record more episodes or relax "
                               "--steer-limit")
    return split


def _held_out(entries: list[dict], members: list[int], val_fraction: float, seed: int) -> np.ndarray:
    """Which of one dataset's episodes ``members`` are held out: the first ``max(1, round(val_fraction * n))``
    (at most n - 1) in the order of their seeded keys (a lone episode trains)."""
    keys = [int(np.random.SeedSequence([seed, *([entries[i]["source"]] if entries[i].get("source") else []),
                                        int(entries[i]["index"])]).generate_state(1)[0]) for i in members]
    order = np.argsort(np.asarray(keys, np.uint64), kind="stable")
    out = np.zeros(len(members), bool)
    out[order[:min(len(members) - 1, max(1, round(val_fraction * len(members))))]] = True
    return out


def _scenario(entry: dict) -> tuple:
    """What an episode replays: its route, weather and seed (None where the manifest does not say; such
    episodes are never matched)."""
    return entry.get("route"), entry.get("weather"), entry.get("seed")


# --- the dataset --------------------------------------------------------------------------------------------


class DrivingDataset(Dataset):
    """Labelled frames of a :class:`DatasetIndex` as training samples.

    ``dataset[key]`` with ``key = i`` or ``(i, epoch)`` returns ``{"image": (h, w, 3) uint8 tensor,
    "steer": float32 scaled steering, "bin": int64 class, "command": int64 RoadOption value, "frame": int64
    global frame index}``. With ``augment``, the flip and jitter are drawn from ``default_rng([seed, epoch,
    frame])``; a flip mirrors the steering, its class and the command (left <-> right).
    """

    def __init__(self, index: DatasetIndex, frames: LabeledFrames, preprocess: PreprocessConfig,
                 bins: SteeringBins, augment: AugmentConfig | None = None, seed: int = 0) -> None:
        if augment is not None and augment.flip_prob > 0 and not bins.is_symmetric:
            raise UsageError("flip augmentation needs symmetric steering bins (low == -high)")
        self.index, self.frames, self.preprocess, self.bins = index, frames, preprocess, bins
        self.augment = augment if augment is not None and (augment.flip_prob > 0 or augment.photometric) else None
        self.seed = seed
        self.frame_shape = tuple(index.features[IMAGE_KEY].shape)

    def __len__(self) -> int:
        return len(self.frames)

    def load_image(self, frame: int) -> np.ndarray:
        """Decode global ``frame`` and crop/resize it as the agent does: (h, w, 3) uint8. Errors name the file."""
        ep, j = self.index.locate(frame)
        path = self.index.readers[ep].path
        try:
            image = decode_image(self.index.encoded(frame))
        except (DatasetError, OSError, ValueError, KeyError) as e:
            where = "" if isinstance(e, FrameChecksumError) else f"{path} frame {j}: "  # it names them itself
            raise DatasetError(f"{where}{str(e).splitlines()[0]}; run 'caril data check "
                               f"{self.index.root}' (re-record or delete the episode)") from None
        if image.shape != self.frame_shape:
            raise DatasetError(f"{path} frame {j} is {image.shape[1]}x{image.shape[0]}, the dataset's camera is "
                               f"{self.frame_shape[1]}x{self.frame_shape[0]}; re-record the episode")
        return crop_and_resize(image, self.preprocess)

    def __getitem__(self, key: int | tuple[int, ...]) -> dict[str, torch.Tensor]:
        i, epoch, repeat = (key, 0, 0) if isinstance(key, (int, np.integer)) else (*key, 0)[:3]
        frame = int(self.frames.indices[i])
        image = self.load_image(frame)  # (h, w, 3) uint8
        steer = float(self.frames.steer[i])
        label = int(self.frames.classes[i])
        command = RoadOption(int(self.frames.commands[i]))
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, int(epoch), frame, *([int(repeat)] if repeat else [])])
            if rng.random() < self.augment.flip_prob:
                image = image[:, ::-1]
                steer, command = -steer, command.mirrored
                label = int(self.bins.index(steer))  # not mirror(label): a value on a bin edge (0 with an even
                # number of bins) belongs to the bin above it on both sides
            image = photometric(image, rng, self.augment)
        return {"image": torch.from_numpy(np.ascontiguousarray(image)),
                "steer": torch.tensor(steer, dtype=torch.float32), "bin": torch.tensor(label, dtype=torch.int64),
                "command": torch.tensor(int(command), dtype=torch.int64),
                "frame": torch.tensor(frame, dtype=torch.int64)}


# --- sampling and loading -------------------------------------------------------------------------------------


def class_weights(classes: np.ndarray, n_bins: int) -> np.ndarray:
    """Per-sample weights ``1 / count(class)``: every class present is drawn equally often (float64)."""
    counts = np.bincount(classes, minlength=n_bins).astype(np.float64)
    return 1.0 / counts[classes]


class TrainSampler(Sampler):
    """Keys ``(i, epoch)`` for :class:`DrivingDataset` (with ``balanced``, ``(i, epoch, repeat)``: the how-many-th
    draw of that frame in the epoch), a pure function of ``(seed, epoch)``, sharded by rank.

    Each epoch draws an order with a generator seeded ``seed + epoch``: a permutation (``torch.randperm``,
    as ``DistributedSampler``) or, with ``balanced``, ``len(classes)`` draws with replacement and weights
    ``1 / count(class)`` (``WeightedRandomSampler``). Under DDP the order is padded to a multiple of
    ``world_size`` and rank ``r`` takes every ``world_size``-th key from ``r``: the ranks see disjoint shards
    of equal length. Call :meth:`set_epoch` before each epoch; resuming at epoch ``k`` reproduces its order.
    """

    def __init__(self, classes: np.ndarray, n_bins: int = 11, seed: int = 0, shuffle: bool = True,
                 balanced: bool = False, rank: int = 0, world_size: int = 1) -> None:
        self.n = len(classes)
        self.weights = torch.from_numpy(class_weights(np.asarray(classes), n_bins)) if balanced else None
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        self.epoch = 0
        self.per_rank = -(-self.n // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        """This epoch's sample order over all ranks (before sharding)."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is not None:
            order = list(WeightedRandomSampler(self.weights, self.n, replacement=True, generator=g))
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        return (order * -(-total // max(self.n, 1)))[:total]  # padded by repeating the start, as DistributedSampler

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        order = self.order()
        if self.weights is None:
            for i in order[self.rank::self.world_size]:
                yield (int(i), self.epoch)
            return
        seen: dict[int, int] = {}  # draws of each frame so far in this epoch's order (over all ranks)
        keys = []
        for i in map(int, order):
            keys.append((i, self.epoch, seen.get(i, 0)))  # a frame drawn again gets its own flip and jitter
            seen[i] = seen.get(i, 0) + 1
        yield from keys[self.rank::self.world_size]

    def __len__(self) -> int:
        return self.per_rank


class ShardSampler(Sampler):
    """Every ``world_size``-th index from ``rank``, in order, no padding (validation: each frame once)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def worker_context() -> mp.context.BaseContext:
    """How DataLoader workers start: ``forkserver`` (``spawn`` where unavailable), never a plain ``fork``.

    Forking a process whose other threads hold locks (OpenCV's thread pool after a recording or a resize in
    the main process, TensorBoard's writer, torch's intra-op pool) deadlocks the child, e.g. inside
    ``cv2.setNumThreads``. The fork server is a fresh single-threaded process that has imported this module
    once (torch, OpenCV, h5py), so workers still start in milliseconds.
    """
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return mp.get_context("spawn")


def _worker_init(_: int) -> None:
    cv2.setNumThreads(1)  # one decode per worker process; OpenCV's own threads would oversubscribe the cores
    torch.set_num_threads(1)


def make_loader(dataset: DrivingDataset, sampler: Sampler, batch_size: int, workers: int = 2,
                prefetch_factor: int = 4, pin_memory: bool = False, drop_last: bool = False,
                seed: int = 0) -> DataLoader:
    """A DataLoader whose ``workers`` processes decode, crop/resize and augment; the main process only stacks.

    Workers start from a fork server (:func:`worker_context`) and persist across epochs (open HDF5 handles
    kept); an explicit generator keeps the
    loader from drawing on the global torch RNG, so training randomness stays reproducible on resume.
    """
    extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor, "worker_init_fn": _worker_init,
             "multiprocessing_context": worker_context()} if workers > 0 else {}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      drop_last=drop_last, generator=torch.Generator().manual_seed(seed), **extra)
