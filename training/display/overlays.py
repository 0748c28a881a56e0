"""What the window draws besides the panels: the camera scaled into its rectangle, status badges (MANUAL, REC,
VIDEO, PAUSED), a fading notice line and the help overlay."""

from __future__ import annotations

import cv2
import numpy as np

from training.display._pygame import pygame
from training.display.draw import ACCENT, MUTED, PANEL_BG, TEXT, Colour, Fonts, TextCache
from training.display.panels import Layout


class CameraView:
    """Blits camera frames scaled to a rectangle; a frame already scaled (paused window) is reused."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._surface: pygame.Surface | None = None
        self._pixels: np.ndarray | None = None  # frombuffer shares this array's memory: it must outlive the blit

    def draw(self, surface: pygame.Surface, rect: pygame.Rect, image: np.ndarray | None, frame: int,
             fonts: Fonts, text: TextCache) -> None:
        """Draw ``image`` (HxWx3 uint8 RGB, simulator ``frame``) into ``rect``; a note when there is none."""
        if image is None or image.size == 0:
            surface.fill(PANEL_BG, rect)
            text.draw(surface, "no camera image", fonts.title, MUTED, rect.center, "center")
            return
        key = (id(image), frame, rect.size)
        if key != self._key:
            if image.shape[1::-1] != rect.size:
                interp = cv2.INTER_AREA if rect.w < image.shape[1] else cv2.INTER_LINEAR
                image = cv2.resize(image, rect.size, interpolation=interp)
            self._pixels = np.ascontiguousarray(image)
            self._surface = pygame.image.frombuffer(self._pixels, rect.size, "RGB")
            self._key = key
        surface.blit(self._surface, rect)


def draw_badges(surface: pygame.Surface, layout: Layout, fonts: Fonts, text: TextCache,
                badges: list[tuple[str, Colour]], paused: bool) -> None:
    """Framed labels stacked at the top centre of the camera, and PAUSED across its middle."""
    x, y = layout.camera_rect.centerx, layout.px(10)
    for label, colour in badges:
        surf = text.get(label, fonts.title, colour)
        box = surf.get_rect(midtop=(x, y)).inflate(layout.px(16), layout.px(8))
        pygame.draw.rect(surface, PANEL_BG, box, border_radius=layout.px(6))
        pygame.draw.rect(surface, colour, box, 1, border_radius=layout.px(6))
        surface.blit(surf, surf.get_rect(center=box.center))
        y = box.bottom + layout.px(6)
    if paused:
        text.draw(surface, "PAUSED", fonts.big, ACCENT, layout.camera_rect.center, "center")


def draw_notice(surface: pygame.Surface, layout: Layout, fonts: Fonts, text: TextCache, notice: str,
                seconds_left: float) -> None:
    """``notice`` in a box at the bottom centre, fading out over its last second."""
    if not notice or seconds_left <= 0:
        return
    surf = text.get(notice, fonts.body, TEXT)
    box = surf.get_rect(midbottom=(layout.camera_rect.centerx, layout.size[1] - layout.px(14)))
    box = box.inflate(layout.px(20), layout.px(10))
    panel = pygame.Surface(box.size, pygame.SRCALPHA)
    panel.fill((*PANEL_BG, 220))
    panel.blit(surf, surf.get_rect(center=panel.get_rect().center))
    panel.set_alpha(round(255 * min(1.0, seconds_left)))
    surface.blit(panel, box)


def help_panel(layout: Layout, fonts: Fonts, keys: tuple[tuple[str, str], ...]) -> pygame.Surface:
    """The key map as a framed panel (drawn once, blitted while H is on)."""
    key_w = fonts.body.size("M" * 17)[0]
    pad_x, pad_y = layout.px(20), layout.px(16)
    width = max(key_w + fonts.body.size(action)[0] for _, action in keys) + 2 * pad_x
    height = (len(keys) + 2) * fonts.line_h + 2 * pad_y
    panel = pygame.Surface((width, height), pygame.SRCALPHA)
    panel.fill((*PANEL_BG, 235))
    pygame.draw.rect(panel, ACCENT, panel.get_rect(), 1)
    panel.blit(fonts.title.render("KEYS", True, ACCENT), (pad_x, pad_y))
    y = pad_y + 2 * fonts.line_h
    for key, action in keys:
        panel.blit(fonts.body.render(key, True, ACCENT), (pad_x, y))
        panel.blit(fonts.body.render(action, True, TEXT), (pad_x + key_w, y))
        y += fonts.line_h
    return panel
