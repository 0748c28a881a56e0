"""The minimap: the route from above (north up: world x to the right, world y down, as CARLA's top view),
the trajectory driven so far and the car.

The route is drawn once per route into a surface; each tick adds one trajectory segment to a copy of it, so
a frame costs one blit and the car's triangle whatever the route's length.
"""

from __future__ import annotations

import math

import numpy as np

from sim.routes import Route
from training.display._pygame import pygame
from training.display.draw import APPLIED, BAR_BG, CORRECTION, FRAME, KEPT, PANEL_BG, TEXT

ROUTE_COLOUR = (120, 128, 145)
TRAIL_COLOUR = APPLIED


class Minimap:
    """A ``size`` (pixels) top view of one route; :meth:`add` trajectory points, :meth:`draw` with the car."""

    def __init__(self, size: tuple[int, int], margin_px: int = 10) -> None:
        self.size = (max(int(size[0]), 8), max(int(size[1]), 8))
        self.margin_px = margin_px
        self.route: Route | None = None
        self._base: pygame.Surface | None = None
        self._trail: pygame.Surface | None = None
        self._last: tuple[int, int] | None = None
        self._origin = (0.0, 0.0)
        self._scale = 1.0

    def set_route(self, route: Route | None) -> None:
        """Draw ``route`` into the background (only when it changed) and clear the trajectory."""
        if route is not self.route or self._base is None:
            self.route = route
            self._base = self._draw_route(route)
        self.clear()

    def clear(self) -> None:
        self._trail = self._base.copy() if self._base is not None else None
        self._last = None

    def to_px(self, x_m: float, y_m: float) -> tuple[int, int]:
        """Map a world point (metres) to minimap pixels."""
        return (round(self.margin_px + (x_m - self._origin[0]) * self._scale),
                round(self.margin_px + (y_m - self._origin[1]) * self._scale))

    def add(self, x_m: float, y_m: float) -> None:
        """Extend the driven trajectory to this point."""
        if self._trail is None:
            return
        p = self.to_px(x_m, y_m)
        if self._last is not None and p != self._last:
            pygame.draw.line(self._trail, TRAIL_COLOUR, self._last, p, 2)
        self._last = p

    def draw(self, target: pygame.Surface, pos: tuple[int, int], car: tuple[float, float, float] | None) -> None:
        """Blit the map at ``pos`` with the car at (x_m, y_m, yaw_deg)."""
        if self._trail is None:
            return
        target.blit(self._trail, pos)
        if car is None:
            return
        cx, cy = self.to_px(car[0], car[1])
        yaw = math.radians(car[2])
        r = max(4, self.size[0] // 30)
        pts = [(cx + pos[0] + r * math.cos(yaw + a) * k, cy + pos[1] + r * math.sin(yaw + a) * k)
               for a, k in ((0.0, 1.6), (2.5, 1.0), (-2.5, 1.0))]
        pygame.draw.polygon(target, TEXT, pts)
        pygame.draw.polygon(target, (0, 0, 0), pts, 1)

    def _draw_route(self, route: Route | None) -> pygame.Surface:
        w, h = self.size
        surf = pygame.Surface((w, h))
        surf.fill(PANEL_BG)
        if route is None or len(route.x) < 2:
            return surf
        x, y = np.asarray(route.x), np.asarray(route.y)
        span_x, span_y = max(float(np.ptp(x)), 1.0), max(float(np.ptp(y)), 1.0)
        inner_w, inner_h = w - 2 * self.margin_px, h - 2 * self.margin_px
        self._scale = min(inner_w / span_x, inner_h / span_y)
        # centre the route in the box
        self._origin = (float(x.min()) - (inner_w / self._scale - span_x) / 2,
                        float(y.min()) - (inner_h / self._scale - span_y) / 2)
        step = max(1, len(x) // 600)  # a few hundred vertices are plenty at minimap scale
        pts = [self.to_px(px, py) for px, py in zip(x[::step], y[::step], strict=True)]
        pts.append(self.to_px(x[-1], y[-1]))
        width = max(3, round(min(w, h) / 45))
        pygame.draw.lines(surf, BAR_BG, False, pts, width + 4)
        pygame.draw.lines(surf, ROUTE_COLOUR, False, pts, width)
        pygame.draw.circle(surf, KEPT, pts[0], width + 2)
        pygame.draw.circle(surf, CORRECTION, pts[-1], width + 2)
        pygame.draw.rect(surf, FRAME, surf.get_rect(), 1)
        return surf
