"""Watch a policy drive in a pygame window, take over by hand, record datasets, videos and screenshots.

    caril drive --policy expert --route one-turn
    caril drive --policy caril --checkpoint runs/caril --correction caril --route two-turn --weather WetNoon
    caril drive --policy manual --route curves --record data/by_hand
    caril drive --policy expert --headless --frames 200 --screenshot drive.png --video drive.mp4

Keys: ESC quit, P pause, C next correction strategy (caril), M manual control, WASD / arrows drive,
R record a dataset episode on/off, V video on/off, F1 HUD, H help, F12 screenshot (into --out).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.correction import STRATEGIES
from agent.factory import NEEDS_CHECKPOINT
from scripts.args import arg, env_default
from sim.backends import BACKENDS, make_simulator
from sim.errors import CarilError, UsageError
from sim.routes import get_route
from sim.types import DEFAULT_DT_S, CameraConfig, parse_resolution
from sim.weather import get_weather
from training.display import (
    DRIVE_POLICIES,
    DisplayConfig,
    DriveDisplay,
    DriveSession,
    init_pygame,
    make_drive_policy,
    policy_bins,
)
from training.display._pygame import pygame
from training.display.recording import DatasetRecording

DESCRIPTION = "Live pygame display of a policy (expert, caril) or manual driving; recording, video, screenshots."


@dataclass
class Args:
    policy: str = arg("expert", help="who drives: the expert, the CARIL agent (needs --checkpoint) or you",
                      choices=DRIVE_POLICIES)
    checkpoint: str = arg("", help="checkpoint folder of a trained run (--policy caril)")
    correction: str = arg("caril", help="the CARIL agent's correction strategy (C cycles them live)",
                          choices=tuple(STRATEGIES))
    cuda_graphs: bool = arg(False, help="on a GPU, replay the agent's preprocessing and network as one CUDA graph")
    route: str = arg("one-turn", help="route name or random:<seed>")
    weather: str = arg("ClearNoon", help="weather preset")
    seed: int = arg(0, help="episode seed; each restart after an episode ends uses the next one")
    backend: str = arg("embedded", help="simulator backend", choices=BACKENDS)
    host: str = arg(env_default("CARLA_HOST", "127.0.0.1"), help="CARLA server host (--backend carla; env CARLA_HOST)")
    port: int = arg(env_default("CARLA_PORT", 2000), help="CARLA server RPC port (env CARLA_PORT)")
    tm_port: int = arg(env_default("CARLA_TM_PORT", 8000), help="CARLA Traffic Manager port (env CARLA_TM_PORT)")
    timeout: float = arg(10.0, help="CARLA client timeout, seconds")
    town: str = arg("Town04", help="CARLA map to load ('' keeps the loaded one; caril serve's maps are its routes)")
    res: str = arg("1280x720", help="window size WIDTHxHEIGHT")
    camera_res: str = arg("448x448", help="camera resolution WIDTHxHEIGHT (what the policy sees, scaled to fit)")
    fov: float = arg(110.0, help="camera horizontal field of view, degrees")
    fps: float = arg(0.0, help="frame rate limit; 0: the simulator's rate (real time) in a window, none headless")
    headless: bool = arg(False, help="no window (SDL dummy video driver), for servers, tests and docs; needs --frames")
    frames: int = arg(0, help="stop after this many simulation steps (0: run until ESC)")
    screenshot: str = arg("", help="save the last frame to this PNG")
    video: str = arg("", help="record the window from the first frame into this .mp4 (mp4v) or .avi (MJPG)")
    record: str = arg("", help="dataset folder R records into, in the format of caril collect (empty: OUT/dataset)")
    record_now: bool = arg(False, help="record from the first frame (R still toggles it)")
    threads: int = arg(1, help="CPU threads of the CARIL network (1 is fastest for one frame at a time and keeps "
                               "a core for the simulator and the window; 0: torch's default)")
    out: str = arg("drive_out", help="folder of F12 screenshots, V videos and the default dataset")
    hud: bool = arg(True, help="show the HUD at start (F1 toggles it)")

    def __post_init__(self) -> None:
        if self.policy == "caril" and not self.checkpoint:
            raise UsageError(NEEDS_CHECKPOINT)
        if self.checkpoint and self.policy != "caril":
            raise UsageError("--checkpoint is only used with --policy caril")
        if self.frames < 0 or self.fps < 0 or self.threads < 0:
            raise UsageError("--frames, --fps and --threads must be 0 (no limit / default) or positive")
        if self.headless and self.frames == 0:
            raise UsageError("--headless needs --frames N (there is no window to press ESC in)")
        if self.screenshot and Path(self.screenshot).suffix.lower() != ".png":
            raise UsageError(f"--screenshot {self.screenshot} must be a .png file")
        if self.video and Path(self.video).suffix.lower() not in (".mp4", ".avi"):
            raise UsageError(f"--video {self.video} must end in .mp4 or .avi")
        self.window_size = parse_resolution(self.res)
        width, height = parse_resolution(self.camera_res)
        self.camera_config = CameraConfig(width=width, height=height, fov_deg=self.fov)
        self.display_config = DisplayConfig(size=self.window_size, video_fps=1.0 / DEFAULT_DT_S, out_dir=self.out,
                                            hud=self.hud)
        if self.backend == "embedded":
            get_route(self.route)
        get_weather(self.weather)


def run(args: Args) -> int:
    if args.policy == "caril" and args.threads:
        import torch  # only the CARIL agent needs it

        # batch-1 inference gains little from more threads, and on a busy CPU OpenMP's spinning threads
        # made it 5x slower (measured: 11 ms per frame with 1 thread, 59 ms with 2, under load)
        torch.set_num_threads(args.threads)
    policy = make_drive_policy(args.policy, dt_s=DEFAULT_DT_S, checkpoint=args.checkpoint, correction=args.correction,
                                cuda_graphs=args.cuda_graphs)
    init_pygame(headless=args.headless)
    settings = {"host": args.host, "port": args.port, "tm_port": args.tm_port, "timeout_s": args.timeout,
                "town": args.town or None} if args.backend == "carla" else {}
    sim = make_simulator(args.backend, camera=args.camera_config, **settings)
    recording = DatasetRecording(args.record or Path(args.out) / "dataset",
                                 (args.camera_config.width, args.camera_config.height), 1.0 / sim.dt_s)
    display = DriveDisplay(args.display_config, policy=policy, backend=args.backend, recording=recording,
                           bins=policy_bins(policy))
    try:
        try:
            screen = pygame.display.set_mode(args.window_size)
        except pygame.error as e:
            raise CarilError(f"cannot open a window ({e}); run with --headless --frames N, or start a display "
                             "(e.g. xvfb-run caril drive ...)") from None
        pygame.display.set_caption(f"caril drive: {args.policy} on {args.route}")
        if args.video:
            display.toggle_video(args.video, strict=True)
        if args.record_now:
            recording.open()  # a folder holding another dataset fails here, before driving
            display.toggle_recording(strict=True)
        session = DriveSession(sim, policy, display, args.route, args.weather, args.seed, frames=args.frames,
                               max_fps=args.fps or (0.0 if args.headless else 1.0 / sim.dt_s))
        result = session.run(screen, present=not args.headless)
        if args.screenshot:
            display.save_screenshot(screen, args.screenshot)
    finally:
        display.close()
        sim.close()
        pygame.display.quit()
    ended = ", ".join(result.terminations) or "none finished"
    print(f"{result.steps} steps, {result.frames} frames in {result.wall_s:.1f} s ({result.frames_per_s:.1f} "
          f"frames/s); episodes: {result.episodes} ({ended})")
    for video in display.videos:
        print(f"video: {video.path} ({video.frames} frames)")
    for path in display.screenshots:
        print(f"screenshot: {path}")
    for entry in recording.saved:
        print(f"dataset episode {entry['index']}: {entry['frames']} frames in {recording.root}")
    return 0
