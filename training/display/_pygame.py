"""pygame, imported once for the display package: no support banner, and only the subsystems it needs.

The display calls ``pygame.display.init()`` and ``pygame.font.init()``, never ``pygame.init()`` (which would
also open the audio device, and fails or hangs on servers without one). ``headless=True`` selects SDL's
``dummy`` video driver, so windows are in-memory surfaces: tests, servers and documentation renders.
"""

from __future__ import annotations

import os

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # before the import, which prints the banner

import pygame

__all__ = ["init_pygame", "pygame"]


def init_pygame(headless: bool = False) -> None:
    """Start pygame's video and font subsystems; ``headless`` renders off screen (``SDL_VIDEODRIVER=dummy``)."""
    if headless:
        os.environ["SDL_VIDEODRIVER"] = "dummy"
    pygame.display.init()
    pygame.font.init()
