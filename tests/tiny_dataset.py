"""A tiny recorded dataset for training tests: curvy routes with strong steering noise, so several steering
classes occur (the frames stop before the first junction, so every command is LANEFOLLOW)."""

from sim.types import CameraConfig
from training.collect import CollectConfig, CollectJob
from training.noise import NoiseConfig


def record(root, episodes=3, width=64, height=64, frames=60, seed=1):
    """Record ``episodes`` expert episodes of at most ``frames`` frames into ``root``; returns ``root``."""
    noise = NoiseConfig(active_fraction=0.5, amplitude=0.3, min_duration_s=0.3, max_duration_s=0.8)
    config = CollectConfig(routes=("curves", "s-curve", "two-turn"), episodes=episodes, seed=seed, allow_heldout=True,
                           camera=CameraConfig(width=width, height=height), max_frames=frames, noise=noise)
    job = CollectJob(config, root)
    job.run(job.prepare())
    return root
