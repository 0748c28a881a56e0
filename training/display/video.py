"""Video files of the window: one frame per simulation step, so playback at the simulator's rate is real time.

``.mp4`` is written with OpenCV's ``mp4v`` codec; where that encoder is missing (some OpenCV builds) the file
becomes ``.avi`` with Motion-JPEG, which every OpenCV build writes. The frame size is the window's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from sim.errors import CarilError, UsageError
from training.display._pygame import pygame

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi")


def surface_rgb(surface: pygame.Surface) -> np.ndarray:
    """The surface's pixels as an (height, width, 3) uint8 RGB array (a copy)."""
    w, h = surface.get_size()
    return np.frombuffer(pygame.image.tobytes(surface, "RGB"), np.uint8).reshape(h, w, 3)


class VideoOutput:
    """An open video file of ``size`` (width, height) pixels at ``fps``; :meth:`write` frames, then :meth:`close`."""

    def __init__(self, path: str | Path, size: tuple[int, int], fps: float) -> None:
        path = Path(path)
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise UsageError(f"video file {path} must end in .mp4 (mp4v) or .avi (MJPG)")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.size, self.fps, self.frames = (int(size[0]), int(size[1])), float(fps), 0
        self.path, self._writer = self._open(path)

    def _open(self, path: Path) -> tuple[Path, cv2.VideoWriter]:
        tries = [(path, "mp4v"), (path.with_suffix(".avi"), "MJPG")] if path.suffix.lower() == ".mp4" \
            else [(path, "MJPG")]
        for candidate, codec in tries:
            writer = cv2.VideoWriter(str(candidate), cv2.VideoWriter_fourcc(*codec), self.fps, self.size)
            if writer.isOpened():
                if candidate != path:
                    log.warning("no mp4v encoder in this OpenCV build: writing %s (MJPG) instead", candidate)
                return candidate, writer
            writer.release()
        raise CarilError(f"OpenCV cannot write the video {path} (no mp4v or MJPG encoder); "
                         "install opencv-python-headless from PyPI")

    def write(self, surface: pygame.Surface) -> None:
        """Append the surface (of this video's size) as the next frame."""
        if surface.get_size() != self.size:
            raise ValueError(f"frame size {surface.get_size()} differs from the video's {self.size}")
        self._writer.write(cv2.cvtColor(surface_rgb(surface), cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        """Finish the file; safe to call twice."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
