"""The HUD's two panels, laid out like CARLA's manual_control: vehicle and run facts on the left, the CARIL
agent's decision on the right (class probabilities, confidence, the rule that fired, recent history).

With the paper's square 448x448 camera in a 16:9 window, the camera fills the middle and the panels fill the
side bands; with a wide camera they lie over it, translucent. Everything scales with the window height
(design size: 720 pixels high).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.bins import SteeringBins
from sim.routes import Route
from sim.types import Control
from training.display._pygame import pygame
from training.display.draw import (
    ACCENT,
    APPLIED,
    BAR_BG,
    CORRECTION,
    FRAME,
    GRID,
    KEPT,
    MUTED,
    PROB_BAR,
    REGRESSION,
    TEXT,
    THRESHOLD,
    TITLE,
    Fonts,
    TextCache,
    dashed_hline,
    elide,
    hbar,
    panel_surface,
)
from training.display.minimap import Minimap
from training.display.telemetry import CarilView, History


@dataclass(frozen=True)
class Layout:
    """Pixel geometry of a window of ``size`` showing a camera of ``camera_size`` (both width, height)."""

    size: tuple[int, int]
    scale: float
    margin: int
    panel_w: int
    camera_rect: pygame.Rect
    left: pygame.Rect
    right: pygame.Rect

    @classmethod
    def for_window(cls, size: tuple[int, int], camera_size: tuple[int, int]) -> Layout:
        w, h = size
        scale = h / 720.0
        panel_w = min(round(280 * scale), w // 2)
        cw, ch = camera_size if min(camera_size) > 0 else size
        fit = min(w / cw, h / ch)
        cam = pygame.Rect(0, 0, max(1, round(cw * fit)), max(1, round(ch * fit)))
        cam.center = (w // 2, h // 2)
        margin = max(1, min(max(2, round(10 * scale)), panel_w // 4))  # a tall, narrow window keeps room inside
        return cls(size, scale, margin, panel_w, cam,
                   pygame.Rect(0, 0, panel_w, h), pygame.Rect(w - panel_w, 0, panel_w, h))

    def px(self, design_px: float) -> int:
        return max(1, round(design_px * self.scale))


@dataclass
class HudView:
    """One frame's facts for the panels (speeds km/h, distances m, angles degrees, steering as named)."""

    policy: str
    backend: str
    route: str
    weather: str
    seed: int
    episode: int
    sim_rate_hz: float
    display_fps: float
    frame_cost_ms: float
    sim_time_s: float
    speed_kmh: float
    progress: float
    distance_along_m: float
    route_length_m: float
    command: str  # the route's navigation command (RoadOption name)
    lateral_offset_m: float
    heading_error_deg: float
    control: Control
    collisions: int
    lane_invasions: int
    manual: bool
    caril: CarilView | None
    correction_name: str
    corrections: int
    caril_ticks: int
    applied_norm: float  # the applied steering in normalised units (x steer_scale)
    steer_scale: float  # the network's steering units: CARLA steer x this
    record: dict


class _Panel:
    def __init__(self, layout: Layout, fonts: Fonts, text: TextCache) -> None:
        self.layout, self.fonts, self.text = layout, fonts, text
        self.label_w = fonts.body.size("M" * 11)[0]

    def title(self, target: pygame.Surface, x: int, y: int, w: int, title: str) -> int:
        rect = self.text.draw(target, title, self.fonts.title, TITLE, (x, y))
        pygame.draw.line(target, ACCENT, (x, rect.bottom + 2), (x + w, rect.bottom + 2), 1)
        return rect.bottom + self.layout.px(8)

    def row(self, target: pygame.Surface, x: int, y: int, label: str, value: str, colour=TEXT) -> int:
        self.text.draw(target, label, self.fonts.body, MUTED, (x, y))
        self.text.draw(target, value, self.fonts.body, colour, (x + self.label_w, y))
        return y + self.fonts.line_h

    def subtitle(self, target: pygame.Surface, x: int, y: int, w: int, left: str,
                 legend: tuple[tuple[str, tuple[int, int, int]], ...] = ()) -> int:
        """A small caption, with a legend of coloured words right-aligned."""
        right = x + w
        for word, colour in reversed(legend):
            right = self.text.draw(target, word, self.fonts.small, colour, (right, y), "topright").left
            right -= self.fonts.small.size(" ")[0]
        self.text.draw(target, elide(self.fonts.small, left, right - x), self.fonts.small, MUTED, (x, y))
        return y + self.fonts.small.get_linesize() + self.layout.px(2)


class LeftPanel(_Panel):
    """Run and vehicle facts, the control bars, event counters and the minimap."""

    def __init__(self, layout: Layout, fonts: Fonts, text: TextCache) -> None:
        super().__init__(layout, fonts, text)
        self.bg = panel_surface(layout.left.size)
        self.minimap: Minimap | None = None
        self._inner_w = layout.left.w - 2 * layout.margin
        self._trail_key: tuple | None = None
        self._trail_drawn = 0

    def draw(self, target: pygame.Surface, v: HudView, route: Route | None, trail: list[tuple[float, float]],
             car: tuple[float, float, float] | None) -> None:
        """Draw the panel; ``trail`` holds this episode's driven (x_m, y_m) points, ``car`` is (x_m, y_m, yaw_deg)."""
        lay, m = self.layout, self.layout.margin
        target.blit(self.bg, lay.left.topleft)
        x, w = lay.left.x + m, self._inner_w
        y = self.title(target, x, lay.left.y + m, w, "CARIL drive")
        driver = f"{v.policy} + MANUAL" if v.manual and v.policy != "manual" else v.policy
        y = self.row(target, x, y, "Policy", driver, APPLIED if v.manual else TEXT)
        y = self.row(target, x, y, "Backend", v.backend)
        y = self.row(target, x, y, "Sim", f"{v.sim_rate_hz:5.1f} steps/s")
        y = self.row(target, x, y, "Display", f"{v.display_fps:5.1f} FPS")
        y = self.row(target, x, y, "Frame cost", f"{v.frame_cost_ms:5.1f} ms")
        minutes, seconds = divmod(v.sim_time_s, 60.0)
        y = self.row(target, x, y, "Sim time", f"{int(minutes)}:{seconds:05.2f}") + lay.px(6)
        y = self.row(target, x, y, "Speed", f"{v.speed_kmh:5.1f} km/h")
        y = self.row(target, x, y, "Route", v.route)
        y = self.row(target, x, y, "Command", v.command, TEXT if v.command == "LANEFOLLOW" else ACCENT)
        y = self.row(target, x, y, "Progress", f"{100 * v.progress:5.1f} % {v.distance_along_m:4.0f}/"
                                               f"{v.route_length_m:.0f} m")
        y = self.row(target, x, y, "Lateral", f"{v.lateral_offset_m:+5.2f} m")
        y = self.row(target, x, y, "Heading", f"{v.heading_error_deg:+5.1f} deg")
        y = self.row(target, x, y, "Weather", v.weather) + lay.px(6)
        y = self._bars(target, x, y, w, v.control) + lay.px(6)
        y = self.row(target, x, y, "Collisions", str(v.collisions), CORRECTION if v.collisions else TEXT)
        y = self.row(target, x, y, "Lane inv.", str(v.lane_invasions), THRESHOLD if v.lane_invasions else TEXT)
        y = self.row(target, x, y, "Episode", f"{v.episode}  seed {v.seed}") + lay.px(8)
        self._draw_minimap(target, x, y, (v.episode, id(route)), route, trail, car)

    def _bars(self, target: pygame.Surface, x: int, y: int, w: int, c: Control) -> int:
        bar_h = max(4, self.fonts.line_h - self.layout.px(6))
        bar_x = x + self.label_w
        for label, value, centred, colour in (("Throttle", c.throttle, False, KEPT),
                                              ("Steer", c.steer, True, APPLIED),
                                              ("Brake", c.brake, False, CORRECTION)):
            self.text.draw(target, label, self.fonts.body, MUTED, (x, y))
            rect = pygame.Rect(bar_x, y + (self.fonts.line_h - bar_h) // 2, x + w - bar_x, bar_h)
            hbar(target, rect, value, colour, centred)
            y += self.fonts.line_h
        return y

    def _draw_minimap(self, target: pygame.Surface, x: int, y: int, key: tuple, route: Route | None,
                      trail: list[tuple[float, float]], car: tuple[float, float, float] | None) -> None:
        h = self.layout.left.bottom - self.layout.margin - y
        if h < 24:
            return
        if self.minimap is None or self.minimap.size != (self._inner_w, h):
            self.minimap, self._trail_key = Minimap((self._inner_w, h)), None
        if key != self._trail_key or len(trail) < self._trail_drawn:
            self.minimap.set_route(route)
            self._trail_key, self._trail_drawn = key, 0
        for px, py in trail[self._trail_drawn:]:
            self.minimap.add(px, py)
        self._trail_drawn = len(trail)
        self.minimap.draw(target, (x, y), car)


class RightPanel(_Panel):
    """The CARIL agent's decision: steering gauge, class probabilities, confidence and steering history."""

    def __init__(self, layout: Layout, fonts: Fonts, text: TextCache, bins: SteeringBins) -> None:
        super().__init__(layout, fonts, text)
        self.bins = bins
        self.bg = panel_surface(layout.right.size)
        self.w = layout.right.w - 2 * layout.margin
        self._plot_bg: dict[tuple, pygame.Surface] = {}

    def draw(self, target: pygame.Surface, v: HudView, history: History) -> None:
        lay = self.layout
        target.blit(self.bg, lay.right.topleft)
        x, y, w = lay.right.x + lay.margin, lay.right.y + lay.margin, self.w
        if v.caril is None:
            self._draw_plain(target, x, y, w, v, history)
            return
        c = v.caril
        y = self.title(target, x, y, w, "CONFIDENCE CORRECTION")
        y = self.row(target, x, y, "Strategy", elide(self.fonts.body, v.correction_name or c.correction or "?",
                                                     w - self.label_w - self.fonts.small.size("C: next")[0]))
        self.text.draw(target, "C: next", self.fonts.small, MUTED, (x + w, y - self.fonts.line_h + 2), "topright")
        self.text.draw(target, "Rule", self.fonts.body, MUTED, (x, y))
        rule_colour = CORRECTION if c.corrected else KEPT
        self.text.draw(target, "corrected" if c.corrected else "kept", self.fonts.small, rule_colour, (x + w, y + 2),
                       "topright")
        y += self.fonts.line_h
        y = self.text.draw(target, elide(self.fonts.title, c.rule, w), self.fonts.title, rule_colour, (x, y)).bottom
        y = self.row(target, x, y + lay.px(4), "Regression", f"{c.steer_regression:+.3f}", REGRESSION)
        y = self.row(target, x, y, "Applied", f"{c.steer:+.3f}  \u0394{c.steer - c.steer_regression:+.3f}", APPLIED)
        if v.manual:
            y = self.subtitle(target, x, y, w, "MANUAL: agent shadowing, not applied")
        elif c.reason:
            y = self.subtitle(target, x, y, w, elide(self.fonts.small, c.reason, w))
        y = self._gauge(target, x, y + lay.px(6), w, c.steer_regression, c.steer, c.corrected) + lay.px(8)
        y = self.subtitle(target, x, y, w, "Class probs", (("most likely", ACCENT), ("\u25b2 regr.", REGRESSION)))
        y = self._probs(target, x, y, w, c) + lay.px(4)
        y = self.row(target, x, y, "Max prob", f"{c.max_prob:.3f}", ACCENT)
        y = self.row(target, x, y, "Entropy", f"{c.entropy:.2f} nats") + lay.px(8)
        span = f"{history.span_s:.0f} s"
        y = self.subtitle(target, x, y, w, f"Confidence, {span}", (("max prob", TEXT), ("| corr.", CORRECTION)))
        y = self._plot(target, pygame.Rect(x, y, w, lay.px(100)), history, "confidence") + lay.px(8)
        y = self.subtitle(target, x, y, w, f"Steering x{v.steer_scale:g}, {span}",
                          (("regr.", REGRESSION), ("applied", APPLIED)))
        y = self._plot(target, pygame.Rect(x, y, w, lay.px(100)), history, "steering") + lay.px(8)
        share = 100.0 * v.corrections / v.caril_ticks if v.caril_ticks else 0.0
        y = self.row(target, x, y, "Corrected", f"{v.corrections}/{v.caril_ticks} ({share:.0f} %)")
        timings = [v.record.get(k) for k in ("preprocess_ms", "network_ms", "correction_ms")]
        if all(isinstance(t, (int, float)) for t in timings):
            self.row(target, x, y, "Agent", f"{sum(timings):5.1f} ms/step")

    def _draw_plain(self, target: pygame.Surface, x: int, y: int, w: int, v: HudView, history: History) -> None:
        """For a policy without a classification head: its steering, its record's numbers and a note."""
        lay = self.layout
        y = self.title(target, x, y, w, "POLICY OUTPUT")
        y = self.row(target, x, y, "Policy", v.policy)
        y = self.row(target, x, y, "Steer", f"{v.control.steer:+.3f}", APPLIED)
        y = self.row(target, x, y, f"Steer x{v.steer_scale:g}", f"{v.applied_norm:+.3f}", APPLIED)
        y = self._gauge(target, x, y + lay.px(6), w, math.nan, v.applied_norm, False) + lay.px(8)
        y = self.subtitle(target, x, y, w, f"Steering x{v.steer_scale:g}, {history.span_s:.0f} s",
                          (("applied", APPLIED),))
        y = self._plot(target, pygame.Rect(x, y, w, lay.px(90)), history, "steering") + lay.px(12)
        numbers = [(k, float(val)) for k, val in v.record.items()
                   if isinstance(val, (int, float)) and not isinstance(val, bool)][:8]
        if numbers:
            y = self.subtitle(target, x, y, w, "Policy record")
            for key, value in numbers:
                self.text.draw(target, key, self.fonts.small, MUTED, (x, y))
                self.text.draw(target, f"{value:+.3f}", self.fonts.small, TEXT, (x + w, y), "topright")
                y += self.fonts.small.get_linesize()
            y += lay.px(12)
        for line in ("Class probabilities, confidence", "and correction: n/a", f"(the {v.policy} policy has no",
                     "classification head; see them", "with --policy caril)"):
            y = self.subtitle(target, x, y, w, line)

    # -- widgets ----------------------------------------------------------------------------------------------
    def _gauge(self, target: pygame.Surface, x: int, y: int, w: int, regression: float, applied: float,
               corrected: bool) -> int:
        """A steering axis from -1 (left) to +1 (right) with the bin edges; regression above, applied below."""
        lay = self.layout
        h = lay.px(34)
        mid_y = y + lay.px(14)
        pygame.draw.line(target, FRAME, (x, mid_y), (x + w, mid_y), 1)
        span = self.bins.high - self.bins.low
        for edge in self.bins.edges:
            ex = x + round((edge - self.bins.low) / span * w)
            pygame.draw.line(target, GRID, (ex, mid_y - lay.px(4)), (ex, mid_y + lay.px(4)), 1)

        def to_x(s: float) -> int:
            return x + round((max(self.bins.low, min(self.bins.high, s)) - self.bins.low) / span * w)

        r = lay.px(6)
        if math.isfinite(regression) and math.isfinite(applied) and corrected:
            pygame.draw.line(target, CORRECTION, (to_x(regression), mid_y), (to_x(applied), mid_y), lay.px(3))
        if math.isfinite(regression):
            rx = to_x(regression)
            pygame.draw.polygon(target, REGRESSION, [(rx - r, mid_y - 2 * r), (rx + r, mid_y - 2 * r), (rx, mid_y)])
        if math.isfinite(applied):
            ax = to_x(applied)
            pygame.draw.polygon(target, APPLIED, [(ax - r, mid_y + 2 * r), (ax + r, mid_y + 2 * r), (ax, mid_y)])
        self.text.draw(target, "left", self.fonts.small, MUTED, (x, mid_y + lay.px(3)), "topleft")
        self.text.draw(target, "right", self.fonts.small, MUTED, (x + w, mid_y + lay.px(3)), "topright")
        return y + h

    def _probs(self, target: pygame.Surface, x: int, y: int, w: int, c: CarilView) -> int:
        """One bar per steering bin (left to right); the most probable is highlighted, the regression's marked."""
        lay = self.layout
        h = lay.px(110)
        n = len(c.class_probs) or self.bins.n_bins
        pygame.draw.rect(target, BAR_BG, (x, y, w, h))
        gap = 2 if w / n > 8 else 0
        for i, p in enumerate(c.class_probs):
            x0, x1 = x + round(i * w / n), x + round((i + 1) * w / n)
            ph = round((p if math.isfinite(p) else 0.0) * (h - 2))
            colour = ACCENT if i == c.predicted_bin else PROB_BAR
            pygame.draw.rect(target, colour, (x0 + gap // 2, y + h - 1 - ph, max(x1 - x0 - gap, 1), ph))
        thr = y + h - 1 - round(0.9 * (h - 2))
        dashed_hline(target, THRESHOLD, x, x + w, thr)
        pygame.draw.rect(target, FRAME, (x, y, w, h), 1)
        marker_y = y + h + lay.px(2)
        if 0 <= c.regression_bin < n:
            cx = x + round((c.regression_bin + 0.5) * w / n)
            r = lay.px(5)
            pygame.draw.polygon(target, REGRESSION, [(cx, marker_y), (cx - r, marker_y + r + 2), (cx + r, marker_y
                                                                                                 + r + 2)])
        self.text.draw(target, "0.9", self.fonts.small, THRESHOLD, (x + 3, thr - 1), "bottomleft")
        for label, lx, anchor in (("-1", x, "topleft"), ("+1", x + w, "topright")):
            self.text.draw(target, label, self.fonts.small, MUTED, (lx, marker_y), anchor)
        return marker_y + max(lay.px(9), self.fonts.small.get_linesize())

    def _plot_background(self, size: tuple[int, int], kind: str) -> pygame.Surface:
        key = (size, kind)
        if key not in self._plot_bg:
            surf = pygame.Surface(size)
            surf.fill(BAR_BG)
            w, h = size
            if kind == "confidence":
                for level, colour in ((0.9, THRESHOLD), (0.5, MUTED)):
                    dashed_hline(surf, colour, 0, w, h - 1 - round(level * (h - 2)))
            else:
                pygame.draw.line(surf, GRID, (0, h // 2), (w, h // 2), 1)
            for k in range(1, 5):
                gx = round(k * w / 5)
                pygame.draw.line(surf, GRID, (gx, 0), (gx, h), 1)
            pygame.draw.rect(surf, FRAME, surf.get_rect(), 1)
            self._plot_bg[key] = surf
        return self._plot_bg[key]

    def _plot(self, target: pygame.Surface, rect: pygame.Rect, history: History, kind: str) -> int:
        """Scrolling history: confidence (max prob in [0, 1]) or steering (x4 in [-1, 1]); red ticks where the
        correction changed the command."""
        target.blit(self._plot_background(rect.size, kind), rect.topleft)
        if len(history) < 2:
            return rect.bottom
        t_now, span = history.time_s[-1], history.span_s
        xs = [rect.right - 1 - round((t_now - t) / span * (rect.w - 2)) for t in history.time_s]

        def ys(values, lo: float, hi: float) -> list[float]:
            return [rect.bottom - 2 - (min(max(v, lo), hi) - lo) / (hi - lo) * (rect.h - 4) for v in values]

        if kind == "confidence":
            tall = self.layout.px(22)
            for xi, change in zip(xs, history.change, strict=True):
                if change > 0:  # a tick from the bottom, as tall as the change (full height at 0.5, x4 units)
                    top = rect.bottom - 2 - max(1, round(min(change / 0.5, 1.0) * tall))
                    pygame.draw.line(target, CORRECTION, (xi, rect.bottom - 2), (xi, top), 1)
            series = [(ys(history.max_prob, 0.0, 1.0), TEXT, 2)]
        else:
            # the regression on top, thinner: where the correction acts, the applied line leaves it
            series = [(ys(history.steer, -1.0, 1.0), APPLIED, 2),
                      (ys(history.steer_regression, -1.0, 1.0), REGRESSION, 1)]
        for values, colour, width in series:
            _polyline(target, colour, xs, values, width)
        return rect.bottom


def _polyline(target: pygame.Surface, colour, xs: list[int], ys: list[float], width: int) -> None:
    """Lines through the finite points; NaN values break the line."""
    run: list[tuple[int, float]] = []
    for x, y in zip(xs, ys, strict=True):
        if math.isfinite(y):
            run.append((x, y))
            continue
        if len(run) > 1:
            pygame.draw.lines(target, colour, False, run, width)
        run = []
    if len(run) > 1:
        pygame.draw.lines(target, colour, False, run, width)
