"""Recording what is driven in the window into a dataset, in the format of ``caril collect``.

Each stretch of recording (R on ... R off, or the end of an episode) becomes one episode file, written by
:class:`training.recorder.Recorder`; the folder's manifest lists it. The label (``action/expert``) is the
command that was executed (the policy's, or the person's while driving by hand), as no separate expert
runs alongside. A folder that already holds a dataset is continued when its camera and rate match.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sim.errors import CarilError
from sim.types import Control, Observation
from training.episode_file import MANIFEST, default_features, features_to_dict, read_manifest
from training.recorder import Recorder

log = logging.getLogger(__name__)


class DatasetRecording:
    """Episodes of ``camera_size`` (width, height) frames at ``fps`` into the dataset folder ``root``."""

    def __init__(self, root: str | Path, camera_size: tuple[int, int], fps: float) -> None:
        self.root = Path(root)
        self.features = default_features(camera_size[1], camera_size[0])
        self.fps = float(fps)
        self.recorder: Recorder | None = None
        self.episode: int | None = None
        self.saved: list[dict[str, Any]] = []

    @property
    def active(self) -> bool:
        return self.episode is not None

    @property
    def frames(self) -> int:
        """Frames in the episode being recorded."""
        return self.recorder.num_frames if self.recorder is not None and self.active else 0

    def open(self) -> Recorder:
        """Create the dataset, or continue the one in ``root`` (checked to match); idempotent."""
        if self.recorder is not None:
            return self.recorder
        if (self.root / MANIFEST).exists():
            manifest = read_manifest(self.root)
            if manifest["features"] != features_to_dict(self.features) or float(manifest["fps"]) != self.fps:
                raise CarilError(f"{self.root} holds a dataset of another camera size or rate; record into "
                                 "another folder with --record DIR")
            self.recorder = Recorder.open(self.root)
        else:
            self.recorder = Recorder.create(self.root, self.fps, self.features)
        return self.recorder

    def start(self, obs: Observation, attrs: dict[str, Any]) -> int:
        """Open a new episode whose first frame is ``obs``; returns its index."""
        if self.active:
            return self.episode
        recorder = self.open()
        index = max((e["index"] for e in recorder.manifest["episodes"]), default=-1) + 1
        recorder.start_episode(index, {**attrs, "recorded_with": "caril drive"})
        recorder.on_reset(obs, {})
        self.episode = index
        return index

    def on_step(self, obs: Observation, control: Control, record: dict[str, Any]) -> None:
        if self.active:
            self.recorder.on_step(obs, control, record)

    def stop(self, termination: str, attrs: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Close the episode: saved with its manifest entry returned, or dropped (None) when it has no frames."""
        if not self.active:
            return None
        recorder, self.episode = self.recorder, None
        if recorder.num_frames == 0:
            recorder.discard_episode()
            return None
        recorder.on_end({"termination": termination})
        entry = recorder.save_episode(attrs)
        self.saved.append(entry)
        return entry

    def close(self) -> None:
        """Save an open episode (termination ``stopped``) and write the manifest; safe to call twice."""
        self.stop("stopped")
        if self.recorder is not None:
            self.recorder.finalize()
