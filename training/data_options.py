"""The paper's label options, applied when a dataset is READ for training (frames are never rewritten).

CARIL (``Data Collection/preprocess_data.py``) keeps frames with ``|steer| <= 0.25``, multiplies the steering
by 4 (clipped to [-1, 1]) so the network works in "x4" units, labels 11 equal-width classes over that range,
and caps how many frames each steering bin contributes. Here the same steps are options of a view over the
recorded columns: :func:`label_frames` selects frame indices and computes the targets; the dataset stays
as recorded, so changing an option needs no new recording.

Order: (optionally drop noisy frames) -> filter ``|steer| <= steer_limit`` -> scale by ``steer_scale``
and clip -> balance at most ``max_per_bin`` frames per bin and route command (a seeded random subset, so the
view is reproducible; per command, so capping the straight-ahead bin of lane following does not also
take away the few junction frames the command branches learn from). The reference balanced 20 raw bins
before filtering; balancing the kept frames in the classification bins caps exactly the classes the network
sees.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from agent.bins import SteeringBins
from sim.errors import UsageError
from sim.types import RoadOption
from training.episode_file import COMMAND_KEY, DatasetIndex

LABEL_KEY = "action/expert"  # the clean expert command: (steer, throttle, brake)
NOISE_KEY = "action/noise_active"


@dataclass(frozen=True)
class LabelOptions:
    """How recorded steering becomes training targets. ``None`` disables the filter or the balancing."""

    steer_limit: float | None = 0.25
    steer_scale: float = 4.0
    max_per_bin: int | None = None
    n_bins: int = 11
    drop_noisy: bool = False
    seed: int = 42

    def __post_init__(self) -> None:
        if self.steer_limit is not None and not 0.0 < self.steer_limit <= 1.0:
            raise UsageError(f"steer limit {self.steer_limit} is outside (0, 1]; the paper keeps |steer| <= 0.25")
        if not (math.isfinite(self.steer_scale) and self.steer_scale > 0.0):
            raise UsageError(f"steer scale {self.steer_scale} must be a positive number; the paper multiplies by 4")
        if self.max_per_bin is not None and self.max_per_bin < 1:
            raise UsageError(f"max frames per bin {self.max_per_bin} must be at least 1 (or None: no cap)")

    @property
    def bins(self) -> SteeringBins:
        """The classification bins over scaled steering [-1, 1]."""
        return SteeringBins(n_bins=self.n_bins, low=-1.0, high=1.0)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LabeledFrames:
    """A training view: which global frames to use and their targets, aligned.

    ``indices`` are global frame indices of the :class:`~training.episode_file.DatasetIndex` (increasing),
    ``steer`` the scaled steering targets (float32, [-1, 1]), ``classes`` their bins (int64) and ``commands``
    the route command of each frame (int64 :class:`~sim.types.RoadOption` values; ``LANEFOLLOW`` where the
    recording has none).
    """

    indices: np.ndarray
    steer: np.ndarray
    classes: np.ndarray
    commands: np.ndarray

    def subset(self, keep: np.ndarray) -> LabeledFrames:
        """The frames selected by a boolean mask or index array."""
        return LabeledFrames(self.indices[keep], self.steer[keep], self.classes[keep], self.commands[keep])

    def __len__(self) -> int:
        return len(self.indices)


def scale_steer(steer: np.ndarray, options: LabelOptions) -> np.ndarray:
    """CARLA steering -> the network's units: times ``steer_scale``, clipped to [-1, 1] (float32)."""
    return np.clip(np.asarray(steer, np.float64) * options.steer_scale, -1.0, 1.0).astype(np.float32)


def label_frames(steer: np.ndarray, options: LabelOptions, noise_active: np.ndarray | None = None,
                 commands: np.ndarray | None = None) -> LabeledFrames:
    """Select and label frames from the expert steering column (CARLA units) of a whole dataset and its
    route commands (``None``: all ``LANEFOLLOW``)."""
    steer = np.asarray(steer, np.float64).reshape(-1)
    if commands is None:
        commands = np.full(len(steer), int(RoadOption.LANEFOLLOW), np.int64)
    keep = np.isfinite(steer)
    if options.drop_noisy and noise_active is not None:
        keep &= ~np.asarray(noise_active, bool).reshape(-1)
    if options.steer_limit is not None:
        keep &= np.abs(steer) <= options.steer_limit
    indices = np.flatnonzero(keep)
    scaled = scale_steer(steer[indices], options)
    classes = options.bins.index(scaled).astype(np.int64)
    labeled = LabeledFrames(indices.astype(np.int64), scaled, classes, np.asarray(commands, np.int64)[indices])
    if options.max_per_bin is not None:
        rng = np.random.default_rng(options.seed)
        chosen = []
        for command in np.unique(labeled.commands):  # per command, so the rare junction commands keep theirs
            for b in range(options.n_bins):
                members = np.flatnonzero((classes == b) & (labeled.commands == command))
                if len(members) > options.max_per_bin:
                    members = rng.choice(members, options.max_per_bin, replace=False)
                chosen.append(members)
        pick = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
        labeled = labeled.subset(pick)
    return labeled


def label_dataset(index: DatasetIndex, options: LabelOptions | None = None) -> LabeledFrames:
    """:func:`label_frames` over a recorded dataset's clean expert steering."""
    options = options or LabelOptions()
    commands = index.column(COMMAND_KEY) if COMMAND_KEY in index.features else None
    return label_frames(index.column(LABEL_KEY)[:, 0], options, index.column(NOISE_KEY), commands)


def steering_histogram(steer: np.ndarray, options: LabelOptions | None = None) -> dict:
    """Frames per classification bin after the filter and scaling (no balancing), plus how many the filter
    drops; ``edges`` are in scaled units."""
    options = options or LabelOptions()
    unbalanced = LabelOptions(**{**options.to_dict(), "max_per_bin": None, "drop_noisy": False})
    labeled = label_frames(steer, unbalanced)
    counts = np.bincount(labeled.classes, minlength=options.n_bins)
    return {"edges": options.bins.edges.tolist(), "counts": counts.tolist(),
            "filtered_out": int(len(np.asarray(steer).reshape(-1)) - len(labeled)),
            "steer_limit": options.steer_limit, "steer_scale": options.steer_scale}
