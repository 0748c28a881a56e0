"""Recording episodes into a dataset, with LeRobot's lifecycle, as a consumer of the rollout loop.

::

    rec = Recorder.create(root, fps=20, features=default_features(448, 448))   # or Recorder.open(root)
    rec.start_episode(index, attrs)        # route, weather, seed, camera, expert settings, ...
    run_episode(sim, policy, ..., consumers=(rec,))   # on_step -> add_frame(frame), validated
    rec.save_episode()                     # file renamed into place, manifest rewritten
    # or rec.discard_episode() after a failure
    rec.finalize()                         # discards an unfinished episode, writes the manifest

Frame ``t`` is the observation the policy acted on (kept from the previous tick) with the command given on
it: the clean expert command from the record (``training.noise.EXPERT_CONTROL_KEY``; the executed control
when absent), the executed control and the noise flag. The last observation of an episode, on which no
command was given, is not a frame.

Recorders without a manifest (``Recorder(root, ...)``) only write episode files and return their manifest
entries; parallel collection workers use them, and the parent lists the entries with :meth:`add_entry`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sim.errors import CarilError, UsageError
from sim.types import Control, Observation
from training.episode_file import (
    COMMAND_KEY,
    EPISODES_DIR,
    IMAGE_KEY,
    MANIFEST,
    EpisodeWriter,
    Feature,
    ImageCodec,
    episode_path,
    features_from_dict,
    manifest_entry,
    new_manifest,
    read_manifest,
    software_version,
    utc_now,
    write_manifest,
)
from training.noise import EXPERT_CONTROL_KEY, NOISE_ACTIVE_KEY

log = logging.getLogger(__name__)

_INT_KINDS, _FLOAT_KINDS = "iu", "fiu"


class FrameError(CarilError, ValueError):
    """A frame that does not match the dataset's feature spec."""


def validate_frame(frame: dict[str, Any], features: dict[str, Feature]) -> None:
    """Raise :class:`FrameError` unless ``frame`` has exactly the spec's keys with the right shapes and types."""
    if frame.keys() != features.keys():
        missing, extra = sorted(features.keys() - frame.keys()), sorted(frame.keys() - features.keys())
        raise FrameError(f"frame keys differ from the feature spec: missing {missing}, unexpected {extra}")
    for key, feat in features.items():
        value = frame[key]
        if feat.dtype == "image":
            if not (isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.shape == feat.shape):
                got = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
                raise FrameError(f"{key}: expected a uint8 RGB image of shape {feat.shape}, got {got}")
            continue
        if feat.dtype == "str":
            if not isinstance(value, str):
                raise FrameError(f"{key}: expected a str, got {type(value).__name__}")
            continue
        arr = np.asarray(value)
        if arr.shape != feat.shape:
            raise FrameError(f"{key}: expected shape {feat.shape}, got {arr.shape}")
        kind, want = arr.dtype.kind, np.dtype(feat.dtype).kind
        ok = kind == "b" if want == "b" else kind in (_INT_KINDS if want in _INT_KINDS else _FLOAT_KINDS)
        if not ok:
            raise FrameError(f"{key}: expected {feat.dtype}, got {arr.dtype}")
        if want == "f" and not np.all(np.isfinite(arr)):
            raise FrameError(f"{key}: {value!r} is not finite")


def driving_frame(obs: Observation, expert: Control, executed: Control, noise_active: bool,
                  frame_index: int) -> dict[str, Any]:
    """The frame of :func:`training.episode_file.default_features` for observation ``obs`` and the commands
    given on it."""
    lane, pose = obs.lane, obs.pose
    markings = sorted({m for ev in obs.lane_invasions for m in ev.markings})
    return {
        "frame_index": frame_index,
        "sim_frame": obs.frame,
        "sim_time_s": obs.sim_time_s,
        IMAGE_KEY: obs.image,
        "observation/speed_mps": obs.speed_mps,
        "observation/pose": (pose.x_m, pose.y_m, pose.yaw_deg),
        "observation/lateral_offset_m": lane.lateral_offset_m,
        "observation/heading_error_deg": lane.heading_error_deg,
        "observation/route_progress": lane.route_progress,
        "observation/distance_along_m": lane.distance_along_m,
        COMMAND_KEY: int(obs.command),
        "action/expert": (expert.steer, expert.throttle, expert.brake),
        "action/executed": (executed.steer, executed.throttle, executed.brake),
        "action/noise_active": bool(noise_active),
        "events/collisions": len(obs.collisions),
        "events/lane_invasions": len(obs.lane_invasions),
        "events/markings": ",".join(markings),
    }


class Recorder:
    """Writes episodes of ``features`` at ``fps`` into ``root`` (see the module docstring for the lifecycle).

    Args:
        root: the dataset folder.
        fps: frames per second of the recording (1 / dt); stored and checked when reading.
        features: the feature spec every frame is validated against.
        codec: how camera frames are encoded.
        manifest: the dataset manifest this recorder keeps up to date (None: episode files only).
        progress: called with the number of new frames every ``progress_every`` frames (progress bars).
    """

    def __init__(self, root: str | Path, fps: float, features: dict[str, Feature], codec: ImageCodec | None = None,
                 manifest: dict[str, Any] | None = None, progress: Callable[[int], None] | None = None,
                 progress_every: int = 50, flush_every: int = 128) -> None:
        if IMAGE_KEY not in features:
            raise ValueError(f"the feature spec needs {IMAGE_KEY!r}")
        self.root, self.fps, self.features = Path(root), float(fps), dict(features)
        self.codec = codec or ImageCodec()
        self.manifest = manifest
        self.progress, self.progress_every, self.flush_every = progress, progress_every, flush_every
        self._writer: EpisodeWriter | None = None
        self._index = -1
        self._attrs: dict[str, Any] = {}
        self._last_obs: Observation | None = None
        self._summary: dict[str, Any] = {}
        self._noise_frames = 0
        self._unreported = 0

    # -- dataset lifecycle ------------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, fps: float, features: dict[str, Feature], codec: ImageCodec | None = None,
               planned_episodes: int = 0, **kwargs: Any) -> Recorder:
        """Start a new dataset in ``root`` (created if needed); refuses a folder that already holds one."""
        root = Path(root)
        if (root / MANIFEST).exists() or any((root / EPISODES_DIR).glob("episode_*")):
            raise UsageError(f"{root} already holds a dataset; continue it with --resume or choose another --out")
        (root / EPISODES_DIR).mkdir(parents=True, exist_ok=True)
        manifest = new_manifest(features, fps, planned_episodes)
        write_manifest(root, manifest)
        return cls(root, fps, features, codec, manifest=manifest, **kwargs)

    @classmethod
    def open(cls, root: str | Path, codec: ImageCodec | None = None, **kwargs: Any) -> Recorder:
        """Continue the dataset in ``root`` with its stored feature spec and fps."""
        manifest = read_manifest(root)
        return cls(root, manifest["fps"], features_from_dict(manifest["features"]), codec, manifest=manifest,
                   **kwargs)

    def add_entry(self, entry: dict[str, Any]) -> None:
        """List an episode saved elsewhere (e.g. by a worker) in the manifest, replacing one of the same index."""
        if self.manifest is None:
            raise RuntimeError("this recorder keeps no manifest")
        episodes = [e for e in self.manifest["episodes"] if e["index"] != entry["index"]] + [entry]
        self.manifest["episodes"] = sorted(episodes, key=lambda e: e["index"])
        self.manifest["total_frames"] = int(sum(e["frames"] for e in episodes))
        write_manifest(self.root, self.manifest)

    def finalize(self) -> None:
        """Discard an unfinished episode and write the manifest; safe to call more than once."""
        if self._writer is not None:
            log.warning("episode %d was not saved: discarding it", self._index)
            self.discard_episode()
        if self.manifest is not None:
            write_manifest(self.root, self.manifest)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finalize()

    # -- episode lifecycle ------------------------------------------------------------------------------------
    def start_episode(self, index: int, attrs: dict[str, Any] | None = None) -> None:
        """Open episode ``index`` (its file is ``episodes/episode_<index>.h5``) with metadata ``attrs``."""
        if self._writer is not None:
            raise RuntimeError(f"episode {self._index} is still open: save or discard it first")
        attrs = {**(attrs or {}), "episode_index": index, "fps": self.fps, "image_codec": self.codec.to_dict(),
                 "image_format": self.codec.format, "software_version": software_version(),
                 "created_utc": utc_now()}
        attrs.setdefault("dt_s", 1.0 / self.fps)
        if not math.isclose(attrs["dt_s"] * self.fps, 1.0, rel_tol=1e-6):
            raise CarilError(f"episode dt_s={attrs['dt_s']} s does not match the dataset's {self.fps} fps")
        self._index, self._attrs = index, attrs
        self._writer = EpisodeWriter(episode_path(self.root, index), self.features, attrs, self.flush_every)
        self._summary, self._noise_frames, self._last_obs = {}, 0, None

    @property
    def num_frames(self) -> int:
        """Frames added to the open episode so far."""
        return self._writer.num_frames if self._writer is not None else 0

    def add_frame(self, frame: dict[str, Any]) -> None:
        """Validate ``frame`` against the feature spec, encode its image and append it to the open episode."""
        if self._writer is None:
            raise RuntimeError("call start_episode() before add_frame()")
        validate_frame(frame, self.features)
        self._writer.append(self.codec.encode(frame[IMAGE_KEY]), frame)
        self._noise_frames += bool(frame.get("action/noise_active", False))
        self._unreported += 1
        if self.progress is not None and self._unreported >= self.progress_every:
            self.progress(self._unreported)
            self._unreported = 0

    def save_episode(self, attrs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Finish the open episode: write its file under its final name; returns its manifest entry."""
        if self._writer is None:
            raise RuntimeError("no open episode to save")
        writer = self._writer
        summary = {k: v.item() if isinstance(v, np.generic) else v for k, v in self._summary.items()
                   if isinstance(v, (int, float, str, bool, np.generic))}
        extra = {"termination": summary.get("termination", ""), "summary": summary, "noise_frames": self._noise_frames,
                 **(attrs or {})}
        try:
            path = writer.commit(extra)
        except BaseException:
            writer.abort()
            raise
        finally:
            self._writer = None
        if self.progress is not None and self._unreported:
            self.progress(self._unreported)
        self._unreported = 0
        entry = manifest_entry(self._index, {**self._attrs, **extra}, writer.num_frames, path.stat().st_size)
        if self.manifest is not None:
            self.add_entry(entry)
        log.info("episode %d saved: %d frames -> %s", self._index, writer.num_frames, path)
        return entry

    def discard_episode(self) -> None:
        """Drop the open episode and its partial file (after a failure)."""
        if self._writer is not None:
            self._writer.abort()
        self._writer, self._last_obs, self._unreported = None, None, 0

    # -- rollout consumer -------------------------------------------------------------------------------------
    def on_reset(self, obs: Observation, info: dict[str, Any]) -> None:
        if self._writer is None:
            raise RuntimeError("call start_episode() before running an episode with the recorder")
        self._last_obs = obs

    def on_step(self, obs: Observation, control: Control, record: dict[str, Any]) -> None:
        expert = record.get(EXPERT_CONTROL_KEY, control)
        noisy = bool(record.get(NOISE_ACTIVE_KEY, False))
        self.add_frame(driving_frame(self._last_obs, expert, control, noisy, self.num_frames))
        self._last_obs = obs

    def on_end(self, summary: dict[str, Any]) -> None:
        self._summary = dict(summary)
