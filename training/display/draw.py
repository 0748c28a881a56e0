"""Drawing helpers shared by the HUD panels: colours, fonts, a text-surface cache, bars and dashed lines.

Text is the expensive part of a HUD in pygame (a ``Font.render`` per string), so :class:`TextCache` keeps
recently drawn strings: labels never change and most values repeat from frame to frame.
"""

from __future__ import annotations

from collections import OrderedDict

from training.display._pygame import pygame

Colour = tuple[int, int, int]

PANEL_BG = (14, 17, 24)
PANEL_ALPHA = 215
FRAME = (70, 78, 96)
TEXT = (235, 238, 245)
MUTED = (150, 158, 175)
TITLE = (255, 255, 255)
ACCENT = (255, 196, 60)  # the most probable bin, titles' underline
REGRESSION = (80, 200, 255)  # what the regression head wanted
APPLIED = (255, 150, 40)  # what was applied
CORRECTION = (255, 75, 85)  # correction events, recording badges
KEPT = (95, 215, 125)  # the regression was kept
THRESHOLD = (230, 210, 80)
GRID = (55, 62, 78)
BAR_BG = (40, 45, 58)
PROB_BAR = (110, 135, 185)

MONO_FONTS = "dejavusansmono,ubuntumono,liberationmono,menlo,consolas,couriernew,mono"
SANS_BOLD_FONTS = "dejavusans,ubuntu,liberationsans,arial,helvetica"


def _font(names: str, size: int, bold: bool = False) -> pygame.font.Font:
    """A system font of ``names`` (comma-separated, first found), else pygame's bundled font."""
    path = pygame.font.match_font(names, bold=bold)
    try:
        font = pygame.font.Font(path, size)
    except (OSError, FileNotFoundError):
        font = pygame.font.Font(None, round(size * 1.3))  # the bundled font is smaller at the same size
    if bold and path is None:
        font.set_bold(True)
    return font


class Fonts:
    """The HUD's fonts at a scale (1.0 for a 720-pixel-high window)."""

    def __init__(self, scale: float) -> None:
        self.body = _font(MONO_FONTS, max(8, round(14 * scale)))
        self.small = _font(MONO_FONTS, max(7, round(12 * scale)))
        self.title = _font(SANS_BOLD_FONTS, max(8, round(15 * scale)), bold=True)
        self.big = _font(SANS_BOLD_FONTS, max(10, round(34 * scale)), bold=True)
        self.line_h = self.body.get_linesize()


class TextCache:
    """Rendered text surfaces by (text, font, colour), least recently used dropped beyond ``capacity``."""

    def __init__(self, capacity: int = 768) -> None:
        self.capacity = capacity
        self._cache: OrderedDict[tuple, pygame.Surface] = OrderedDict()

    def get(self, text: str, font: pygame.font.Font, colour: Colour) -> pygame.Surface:
        key = (text, id(font), colour)
        surf = self._cache.get(key)
        if surf is None:
            surf = font.render(text, True, colour)
            self._cache[key] = surf
            if len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return surf

    def texts(self) -> set[str]:
        """The strings drawn recently (what the HUD shows; used by tests)."""
        return {key[0] for key in self._cache}

    def draw(self, target: pygame.Surface, text: str, font: pygame.font.Font, colour: Colour,
             pos: tuple[int, int], anchor: str = "topleft") -> pygame.Rect:
        """Blit ``text`` with its ``anchor`` (a pygame.Rect attribute name) at ``pos``; returns its rect."""
        surf = self.get(text, font, colour)
        rect = surf.get_rect(**{anchor: pos})
        target.blit(surf, rect)
        return rect


def elide(font: pygame.font.Font, text: str, width: int) -> str:
    """``text``, shortened with an ellipsis until it fits in ``width`` pixels."""
    if font.size(text)[0] <= width:
        return text
    while text and font.size(text + "\u2026")[0] > width:
        text = text[:-1]
    return text + "\u2026"


def panel_surface(size: tuple[int, int], alpha: int = PANEL_ALPHA) -> pygame.Surface:
    """A translucent dark panel with a thin frame (pre-rendered once per layout)."""
    surf = pygame.Surface(size, pygame.SRCALPHA)
    surf.fill((*PANEL_BG, alpha))
    pygame.draw.rect(surf, (*FRAME, 255), surf.get_rect(), 1)
    return surf


def hbar(target: pygame.Surface, rect: pygame.Rect, value: float, colour: Colour, centred: bool = False) -> None:
    """A horizontal bar: ``value`` in [0, 1] from the left, or in [-1, 1] from the centre when ``centred``."""
    pygame.draw.rect(target, BAR_BG, rect)
    value = max(-1.0, min(1.0, value)) if centred else max(0.0, min(1.0, value))
    if centred:
        mid = rect.x + rect.w // 2
        end = mid + round(value * rect.w / 2)
        lo, hi = min(mid, end), max(mid, end)
        pygame.draw.rect(target, colour, (lo, rect.y, max(hi - lo, 2), rect.h))
        pygame.draw.line(target, TEXT, (mid, rect.y - 1), (mid, rect.bottom), 1)
    elif value > 0:
        pygame.draw.rect(target, colour, (rect.x, rect.y, max(round(value * rect.w), 1), rect.h))
    pygame.draw.rect(target, FRAME, rect, 1)


def dashed_hline(target: pygame.Surface, colour: Colour, x0: int, x1: int, y: int, dash: int = 6) -> None:
    for x in range(x0, x1, 2 * dash):
        pygame.draw.line(target, colour, (x, y), (min(x + dash, x1), y), 1)
