"""``DriveDisplay``: the state and drawing of the ``caril drive`` window, a consumer of the rollout.

It is fed in two ways, so tests can drive it without a screen or a person:

* rollout hooks ``on_reset(obs, info)``, ``on_step(obs, control, record)``, ``on_end(summary)``
  (:mod:`training.rollout`), which keep the last observation, the policy's record, histories and counters;
* ``process_event(event)`` with pygame events: the keys of :data:`KEYS` change :attr:`running`, :attr:`paused`,
  :attr:`manual`, :attr:`hud_visible`, :attr:`help_visible`, the correction strategy, recording and video.

``render(surface)`` draws the camera scaled to the window, the HUD panels, status badges, a fading notice and
the help overlay onto any pygame surface (the window, or an off-screen one), then saves requested
screenshots and appends a video frame when the simulation advanced.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bins import SteeringBins
from agent.correction import STRATEGIES
from agent.manual import ManualKeys
from agent.policy import Policy
from sim.errors import CarilError, UsageError
from sim.metrics import route_completion
from sim.routes import Route, get_route
from sim.types import Control, Observation, RoadOption
from training.display._pygame import pygame
from training.display.draw import APPLIED, CORRECTION, Fonts, TextCache
from training.display.overlays import CameraView, draw_badges, draw_notice, help_panel
from training.display.panels import HudView, Layout, LeftPanel, RightPanel
from training.display.recording import DatasetRecording
from training.display.telemetry import DEFAULT_STEER_SCALE, History, RateMeter, caril_view
from training.display.video import VideoOutput

log = logging.getLogger(__name__)

KEYS = (
    ("ESC", "quit"),
    ("P", "pause / resume"),
    ("C", "next correction strategy (caril policy)"),
    ("M", "manual control on / off"),
    ("W / Up", "throttle"),
    ("S / Down", "brake"),
    ("A D / Left Right", "steer"),
    ("R", "record a dataset episode on / off"),
    ("V", "video on / off"),
    ("F1", "HUD on / off"),
    ("H", "this help"),
    ("F12", "screenshot (PNG)"),
)
"""The key map shown by the help overlay (H)."""

THROTTLE_KEYS = (pygame.K_w, pygame.K_UP)
BRAKE_KEYS = (pygame.K_s, pygame.K_DOWN)
LEFT_KEYS = (pygame.K_a, pygame.K_LEFT)
RIGHT_KEYS = (pygame.K_d, pygame.K_RIGHT)


@dataclass(frozen=True)
class DisplayConfig:
    """Window ``size`` (width, height) in pixels, ``history_s`` of the scrolling plots, ``video_fps`` (the
    simulator's rate, so videos play in real time), ``out_dir`` for F12 screenshots and V videos, ``notice_s``
    how long a notice stays up, ``hud`` whether the HUD starts visible."""

    size: tuple[int, int] = (1280, 720)
    history_s: float = 10.0
    video_fps: float = 20.0
    out_dir: str = "drive_out"
    notice_s: float = 3.0
    hud: bool = True

    def __post_init__(self) -> None:
        w, h = self.size
        if not (64 <= w <= 7680 and 64 <= h <= 4320):
            raise UsageError(f"window size {w}x{h} is outside 64x64..7680x4320 pixels; use e.g. --res 1280x720")
        if not (self.history_s > 0 and self.video_fps > 0):
            raise UsageError("history_s and video_fps must be positive")


class DriveDisplay:
    """The window's state and drawing (see the module docstring).

    Args:
        config: window settings.
        policy: the driving policy; C sets its ``correction`` attribute when it has one (the CARIL agent).
        policy_name: shown in the HUD (default: ``policy.name``); ``"manual"`` means always driven by hand.
        backend: the simulator backend's name, shown in the HUD.
        recording: where R records datasets (None: R only shows a notice).
        bins: the steering bins of the CARIL agent's classification head (default: the paper's 11).
    """

    def __init__(self, config: DisplayConfig | None = None, *, policy: Policy | None = None,
                 policy_name: str | None = None, backend: str = "embedded",
                 recording: DatasetRecording | None = None, bins: SteeringBins | None = None) -> None:
        self.config = config or DisplayConfig()
        self.size = tuple(self.config.size)
        self.policy = policy
        self.policy_name = policy_name or getattr(policy, "name", "policy")
        self.backend = backend
        self.recording = recording
        self.bins = bins or SteeringBins()
        self.out_dir = Path(self.config.out_dir)
        # -- state changed by keys
        self.running, self.paused = True, False
        self.manual = self.policy_name == "manual"
        self.hud_visible, self.help_visible = self.config.hud, False
        self.pressed: set[int] = set()
        names = list(STRATEGIES)
        current = getattr(policy, "correction", None)
        self.correction_index = names.index(current) if current in names else 0
        self.video: VideoOutput | None = None
        self.videos: list[VideoOutput] = []
        self.screenshots: list[Path] = []
        self._screenshot_requests: list[Path] = []
        self._drivers: list[str] = []  # who drove the steps of the episode being recorded
        self._last_surface: pygame.Surface | None = None  # the last frame drawn (for screenshots asked at quit)
        self._keep_recording = False
        self.attrs_provider: Callable[[], dict[str, Any]] | None = None  # metadata of recorded episodes
        self.notice, self._notice_until = "", 0.0
        # -- what the rollout showed
        self.obs: Observation | None = None
        self.control, self.record, self.caril = Control(), {}, None
        self.route: Route | None = None
        self.info: dict[str, Any] = {}
        self.history = History(self.config.history_s)
        self.trail: list[tuple[float, float]] = []
        self.episode = 0
        self.collisions = self.lane_invasions = self.corrections = self.caril_ticks = 0
        self.frame_cost_ms = 0.0
        self.sim_rate, self.display_rate = RateMeter(), RateMeter()
        self._new_step = False
        self._last_collision = False
        # -- drawing resources, made on the first render (they need pygame's font module)
        self._layout: Layout | None = None
        self._layout_camera: tuple[int, int] | None = None
        self._camera = CameraView()
        self._help: pygame.Surface | None = None

    # -- state ------------------------------------------------------------------------------------------------
    @property
    def recording_on(self) -> bool:
        return self.recording is not None and self.recording.active

    @property
    def video_on(self) -> bool:
        return self.video is not None

    @property
    def correction(self) -> str | None:
        """The policy's correction strategy, or None for a policy without one."""
        return getattr(self.policy, "correction", None)

    def notify(self, text: str) -> None:
        """Show ``text`` at the bottom of the window for ``notice_s`` seconds (and log it)."""
        self.notice, self._notice_until = text, time.monotonic() + self.config.notice_s
        log.info("%s", text)

    def manual_keys(self) -> ManualKeys:
        """The driving keys held now (from the KEYDOWN / KEYUP events seen)."""
        held = self.pressed
        return ManualKeys(throttle=any(k in held for k in THROTTLE_KEYS), brake=any(k in held for k in BRAKE_KEYS),
                          left=any(k in held for k in LEFT_KEYS), right=any(k in held for k in RIGHT_KEYS))

    # -- input ------------------------------------------------------------------------------------------------
    def process_event(self, event: pygame.event.Event) -> None:
        """Apply one pygame event (QUIT, KEYDOWN, KEYUP); other events are ignored."""
        if event.type == pygame.QUIT:
            self.running = False
        elif event.type == pygame.KEYDOWN:
            self.pressed.add(event.key)
            self._on_key(event.key, getattr(event, "mod", 0))
        elif event.type == pygame.KEYUP:
            self.pressed.discard(event.key)

    def _on_key(self, key: int, mod: int) -> None:
        actions = {
            pygame.K_ESCAPE: self.quit,
            pygame.K_p: self.toggle_pause,
            pygame.K_c: self.cycle_correction,
            pygame.K_m: self.toggle_manual,
            pygame.K_r: self.toggle_recording,
            pygame.K_v: self.toggle_video,
            pygame.K_F1: self.toggle_hud,
            pygame.K_h: self.toggle_help,
            pygame.K_QUESTION: self.toggle_help,
            pygame.K_F12: self.request_screenshot,
        }
        if key == pygame.K_q and mod & pygame.KMOD_CTRL:
            self.quit()
        elif key == pygame.K_SLASH and mod & pygame.KMOD_SHIFT:
            self.toggle_help()
        elif key in actions:
            actions[key]()

    def quit(self) -> None:
        self.running = False

    def toggle_pause(self) -> None:
        self.paused = not self.paused
        self.notify("paused (P resumes)" if self.paused else "resumed")

    def toggle_hud(self) -> None:
        self.hud_visible = not self.hud_visible

    def toggle_help(self) -> None:
        self.help_visible = not self.help_visible

    def toggle_manual(self) -> None:
        if self.policy_name == "manual":
            self.notify("--policy manual: you are always driving (WASD / arrows)")
            return
        self.manual = not self.manual
        self.notify("manual control: WASD / arrows drive" if self.manual else f"{self.policy_name} drives again")

    def cycle_correction(self) -> None:
        """Switch the CARIL agent to the next strategy of :data:`agent.correction.STRATEGIES`."""
        if self.correction is None:
            self.notify(f"C: the {self.policy_name} policy has no correction to cycle (--policy caril has)")
            return
        names = list(STRATEGIES)
        self.correction_index = (names.index(self.correction) + 1) % len(names) if self.correction in names else 0
        self.policy.correction = names[self.correction_index]
        self.notify(f"correction: {names[self.correction_index]}")

    def toggle_recording(self, strict: bool = False) -> None:
        """Start or stop recording into the dataset; errors become a notice (raised when ``strict``)."""
        if self.recording is None:
            self.notify("R: no dataset folder to record into (caril drive --record DIR)")
            return
        if self.recording.active:
            self._keep_recording = False
            self._stop_recording("stopped")
            return
        if self.obs is None:
            self._keep_recording = True  # starts with the first observation
            return
        try:
            attrs = self.attrs_provider() if self.attrs_provider is not None else {}
            index = self.recording.start(self.obs, attrs)
        except CarilError as e:
            if strict:
                raise
            self.notify(f"cannot record: {e}")
            return
        self._keep_recording = True
        self.notify(f"recording episode {index} into {self.recording.root}")

    def _stop_recording(self, termination: str) -> None:
        entry = self.recording.stop(termination, {"driver": "+".join(self._drivers)} if self._drivers else None)
        self._drivers = []
        if entry is None:
            self.notify("recording stopped: no frames, nothing saved")
        else:
            self.notify(f"saved episode {entry['index']} ({entry['frames']} frames) in {self.recording.root}")

    def toggle_video(self, path: str | Path | None = None, strict: bool = False) -> None:
        """Start a video (to ``path``, else ``OUT/video_NNN.mp4``) or finish the current one."""
        if self.video is not None:
            video, self.video = self.video, None
            video.close()
            self.notify(f"video saved: {video.path} ({video.frames} frames)")
            return
        path = Path(path) if path else self._next_path("video", ".mp4")
        try:
            self.video = VideoOutput(path, self.size, self.config.video_fps)
        except CarilError as e:
            if strict:
                raise
            self.notify(str(e))
            return
        self.videos.append(self.video)
        self.notify(f"video: recording to {self.video.path}")

    def request_screenshot(self, path: str | Path | None = None) -> Path:
        """Save the next rendered frame as a PNG (to ``path``, else ``OUT/screenshot_NNN.png``)."""
        target = Path(path) if path else self._next_path("screenshot", ".png")
        self._screenshot_requests.append(target)
        return target

    def _next_path(self, stem: str, suffix: str) -> Path:
        taken = set(self.screenshots) | {v.path for v in self.videos} | set(self._screenshot_requests)
        for k in itertools.count(1):
            path = self.out_dir / f"{stem}_{k:03d}{suffix}"
            if path not in taken and not path.exists():
                return path
        raise AssertionError("unreachable")

    # -- rollout consumer -------------------------------------------------------------------------------------
    def set_route(self, route: Route | None) -> None:
        """The route drawn by the minimap (the simulator's, which ``on_reset``'s info names but cannot carry)."""
        self.route = route

    def on_reset(self, obs: Observation, info: dict[str, Any]) -> None:
        name = info.get("route")
        if name and (self.route is None or self.route.name != name):
            try:
                self.route = get_route(name)
            except CarilError:
                self.route = None
        self.obs, self.info, self.control, self.record, self.caril = obs, dict(info), Control(), {}, None
        self.episode += 1
        self.history.clear()
        self.trail = [(obs.pose.x_m, obs.pose.y_m)]
        self.collisions = self.lane_invasions = self.corrections = self.caril_ticks = 0
        self._last_collision = False
        if self._keep_recording and self.recording is not None and not self.recording.active:
            self.toggle_recording()
            self._keep_recording = True

    def on_step(self, obs: Observation, control: Control, record: dict[str, Any]) -> None:
        self.obs, self.control, self.record = obs, control, record
        self.caril = caril_view(record, self.bins)
        if self.caril is not None:
            self.caril_ticks += 1
            self.corrections += self.caril.corrected
        if obs.collisions and not self._last_collision:  # a contact over several ticks is one collision
            self.collisions += 1
        self._last_collision = bool(obs.collisions)
        self.lane_invasions += len(obs.lane_invasions)
        self.history.add(obs.sim_time_s, self._applied_norm(), self.caril)
        self.trail.append((obs.pose.x_m, obs.pose.y_m))
        self.sim_rate.tick()
        self._new_step = True
        if self.recording is not None:
            if self.recording.active:
                self._note_driver()
            self.recording.on_step(obs, control, record)

    def _note_driver(self) -> None:
        """Who drove this recorded step (the episode's ``driver`` attribute lists each, in order)."""
        name = "manual" if self.manual else str(getattr(self.policy, "name", "policy"))
        if name not in self._drivers:
            self._drivers.append(name)

    def on_end(self, summary: dict[str, Any]) -> None:
        termination = summary.get("termination", "ended")
        completion = summary.get("route_completion")
        if completion is None and self.obs is not None and self.route is not None:
            completion = route_completion(self.obs.lane.distance_along_m, self.route.length_m, termination)
        done = f", {100 * completion:.0f} % of the route" if completion is not None else ""
        self.notify(f"episode {self.episode} ended: {termination}{done}")
        if self.recording_on:
            keep = self._keep_recording
            self._stop_recording(termination)
            self._keep_recording = keep

    def close(self) -> None:
        """Save screenshots asked for since the last frame (F12 with ESC in one frame) from that frame, finish
        the video and the recording (saving an open episode); safe to call twice."""
        for path in self._screenshot_requests if self._last_surface is not None else []:
            self.save_screenshot(self._last_surface, path)
        self._screenshot_requests = []
        if self.video is not None:
            self.video.close()
            self.video = None
        if self.recording is not None:
            if self.recording.active:
                self._stop_recording("stopped")
            self.recording.close()

    # -- drawing ----------------------------------------------------------------------------------------------
    def _steer_scale(self) -> float:
        """The policy's normalised steering units (CARLA steer x this): its record's, else the paper's 4."""
        return float(self.record.get("steer_scale", DEFAULT_STEER_SCALE)) if self.record else DEFAULT_STEER_SCALE

    def _applied_norm(self) -> float:
        """The applied steering in normalised units: the CARIL record's, else the control's x steer_scale."""
        scale = self._steer_scale()
        if self.caril is not None and not self.manual and math.isfinite(self.caril.steer):
            return self.caril.steer
        return max(-1.0, min(1.0, self.control.steer * scale))

    def hud_view(self) -> HudView:
        """The facts the panels draw for the current frame."""
        obs, lane = self.obs, self.obs.lane
        length = self.route.length_m if self.route is not None else lane.distance_along_m + lane.distance_to_goal_m
        return HudView(
            policy=self.policy_name, backend=self.backend, route=str(self.info.get("route", "?")),
            weather=str(self.info.get("weather", "?")), seed=int(self.info.get("seed", 0)), episode=self.episode,
            sim_rate_hz=self.sim_rate.rate_hz, display_fps=self.display_rate.rate_hz,
            frame_cost_ms=self.frame_cost_ms, sim_time_s=obs.sim_time_s, speed_kmh=obs.speed_kmh,
            progress=lane.route_progress, distance_along_m=lane.distance_along_m, route_length_m=length,
            command=RoadOption(obs.command).name,
            lateral_offset_m=lane.lateral_offset_m, heading_error_deg=lane.heading_error_deg,
            control=self.control, collisions=self.collisions, lane_invasions=self.lane_invasions,
            manual=self.manual, caril=self.caril, correction_name=self.correction or "",
            corrections=self.corrections, caril_ticks=self.caril_ticks, applied_norm=self._applied_norm(),
            steer_scale=self._steer_scale(),
            record=self.record)

    def render(self, surface: pygame.Surface) -> None:
        """Draw the frame onto ``surface``, then save requested screenshots and the video frame."""
        if surface.get_size() != self.size:
            raise ValueError(f"surface {surface.get_size()} differs from the display size {self.size}")
        camera_size = self._camera_size()
        if self._layout is None or self._layout_camera != camera_size:
            self._build(camera_size)
        layout, fonts, text = self._layout, self._fonts, self._text
        if layout.camera_rect.size != self.size:
            surface.fill((0, 0, 0))
        image = self.obs.image if self.obs is not None else None
        self._camera.draw(surface, layout.camera_rect, image, self.obs.frame if self.obs else -1, fonts, text)
        if self.hud_visible and self.obs is not None:
            view = self.hud_view()
            pose = self.obs.pose
            self._left.draw(surface, view, self.route, self.trail, (pose.x_m, pose.y_m, pose.yaw_deg))
            self._right.draw(surface, view, self.history)
        draw_badges(surface, layout, fonts, text, self._badges(), self.paused)
        draw_notice(surface, layout, fonts, text, self.notice, self._notice_until - time.monotonic())
        if self.help_visible:
            self._help = self._help or help_panel(layout, fonts, KEYS)
            surface.blit(self._help, self._help.get_rect(center=(self.size[0] // 2, self.size[1] // 2)))
        self.display_rate.tick()
        self._capture(surface)

    def _capture(self, surface: pygame.Surface) -> None:
        self._last_surface = surface
        for path in self._screenshot_requests:
            self.save_screenshot(surface, path)
            self.notify(f"screenshot: {path}")
        self._screenshot_requests = []
        if self.video is not None and self._new_step:
            self.video.write(surface)
        self._new_step = False

    def save_screenshot(self, surface: pygame.Surface, path: str | Path) -> Path:
        """Write ``surface`` as a PNG at ``path`` (folders created)."""
        path = Path(path)
        if path.suffix.lower() != ".png":
            raise UsageError(f"screenshot {path} must be a .png file")
        path.parent.mkdir(parents=True, exist_ok=True)
        pygame.image.save(surface, str(path))
        self.screenshots.append(path)
        return path

    def _camera_size(self) -> tuple[int, int]:
        if self.obs is None or self.obs.image.size == 0:
            return self.size
        h, w = self.obs.image.shape[:2]
        return w, h

    def _build(self, camera_size: tuple[int, int]) -> None:
        self._layout = layout = Layout.for_window(self.size, camera_size)
        self._layout_camera = camera_size
        self._fonts, self._text = Fonts(layout.scale), TextCache()
        self._left = LeftPanel(layout, self._fonts, self._text)
        self._right = RightPanel(layout, self._fonts, self._text, self.bins)
        self._help = None
        self._camera = CameraView()

    def _badges(self) -> list[tuple[str, tuple[int, int, int]]]:
        badges = []
        if self.manual:
            badges.append(("MANUAL", APPLIED))
        if self.recording_on:
            badges.append((f"\u25cf REC ep {self.recording.episode}  {self.recording.frames} frames", CORRECTION))
        if self.video is not None:
            badges.append((f"\u25cf VIDEO {self.video.frames} frames", CORRECTION))
        return badges
