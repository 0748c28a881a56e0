"""The live display: keys change its state, the HUD draws the CARIL agent's decision, R / V / F12 write files.

Runs with SDL's dummy video driver (no screen). ``FakeCarilPolicy`` stands in for the CARIL agent: it drives
with the expert and makes a record of the agent's shape (a drifting "regression", class probabilities peaked
on the expert's bin, and the real :func:`agent.correction.correct` on them).
"""

from __future__ import annotations

import json
import math
import os

os.environ["SDL_VIDEODRIVER"] = "dummy"  # before pygame's display starts

import cv2
import numpy as np
import pytest

from agent.bins import SteeringBins
from agent.correction import STRATEGIES, correct
from agent.expert import ExpertPolicy
from agent.manual import ManualConfig, ManualKeys, ManualPolicy
from agent.policy import Policy
from sim.embedded import EmbeddedSimulator
from sim.episode import EpisodeLimits
from sim.errors import CarilError, UsageError
from sim.types import CameraConfig, Control
from training.display import DisplayConfig, DriveDisplay, DriveSession, init_pygame, make_drive_policy
from training.display._pygame import pygame
from training.display.recording import DatasetRecording
from training.display.telemetry import History, caril_view
from training.episode_file import EpisodeReader

SIZE = (320, 180)
CAMERA = CameraConfig(width=64, height=48)


class FakeCarilPolicy(Policy):
    """The expert's driving with a CARIL-shaped record (see the module docstring); ``correction`` is settable.

    The "regression" is the expert's normalised steering plus a slow drift of ``drift`` amplitude; the class
    probabilities are a Gaussian around the expert's (smoothed) steering, integrated over the bins, whose width swings
    slowly between confident (sd 0.025) and unsure (sd 0.3), so every branch of the paper's rule fires.
    """

    name = "caril"

    def __init__(self, correction: str = "caril", drift: float = 0.3, seed: int = 0) -> None:
        self.expert = ExpertPolicy()
        self.correction = correction
        self.drift = drift
        self.bins = SteeringBins()
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._t, self._target = 0, 0.0

    def reset(self, route=None) -> None:
        self.expert.reset(route)
        self._rng, self._t, self._target = np.random.default_rng(self.seed), 0, 0.0

    def probs(self, target: float, sd: float) -> np.ndarray:
        cdf = np.array([0.5 * (1.0 + math.erf((e - target) / (sd * math.sqrt(2.0)))) for e in self.bins.edges])
        cdf[0], cdf[-1] = 0.0, 1.0  # the end bins take the tails
        return np.diff(cdf)

    def act(self, observation):
        control, _ = self.expert.act(observation)
        self._t += 1
        target = float(np.clip(4.0 * control.steer, -1.0, 1.0))
        self._target = 0.7 * self._target + 0.3 * target  # the "classifier" sees a smoothed steering
        regression = float(np.clip(target + self.drift * math.sin(self._t / 25.0) + self._rng.normal(0.0, 0.01),
                                   -1.0, 1.0))
        sd = 0.025 + 0.275 * (0.5 + 0.5 * math.sin(self._t / 40.0)) ** 2
        rec = correct(self.correction, regression, self.probs(self._target, sd), self._rng, bins=self.bins)
        record = {**rec.to_dict(), "correction": self.correction}
        return Control(rec.steer / 4.0, control.throttle, control.brake), record


def fake_record(rule: str = "confident_bin_sample", steer: float = 0.30, regression: float = -0.05) -> dict:
    probs = [0.0] * 11
    probs[7], probs[6], probs[8] = 0.93, 0.04, 0.03
    return {"steer_regression": regression, "class_probs": probs, "max_prob": 0.93, "entropy": 0.31,
            "rule": rule, "steer": steer, "correction": "caril"}


@pytest.fixture(scope="module", autouse=True)
def _pygame():
    init_pygame(headless=True)
    yield
    pygame.display.quit()


@pytest.fixture
def sim():
    return EmbeddedSimulator(camera=CAMERA)


def keydown(key: int, mod: int = 0) -> pygame.event.Event:
    return pygame.event.Event(pygame.KEYDOWN, key=key, mod=mod)


def keyup(key: int) -> pygame.event.Event:
    return pygame.event.Event(pygame.KEYUP, key=key, mod=0)


def make_display(tmp_path, policy=None, recording=None, **config) -> DriveDisplay:
    return DriveDisplay(DisplayConfig(size=SIZE, out_dir=str(tmp_path / "out"), **config), policy=policy,
                        recording=recording)


# -- keys ---------------------------------------------------------------------------------------------------------
def test_keys_toggle_pause_hud_help_manual_and_quit(tmp_path):
    d = make_display(tmp_path, policy=ExpertPolicy())
    assert (d.running, d.paused, d.hud_visible, d.help_visible, d.manual) == (True, False, True, False, False)
    for key in (pygame.K_p, pygame.K_F1, pygame.K_h, pygame.K_m):
        d.process_event(keydown(key))
    assert (d.paused, d.hud_visible, d.help_visible, d.manual) == (True, False, True, True)
    for key in (pygame.K_p, pygame.K_F1, pygame.K_h, pygame.K_m):
        d.process_event(keydown(key))
    assert (d.paused, d.hud_visible, d.help_visible, d.manual) == (False, True, False, False)
    d.process_event(keydown(pygame.K_ESCAPE))
    assert d.running is False


def test_window_close_and_ctrl_q_quit(tmp_path):
    d = make_display(tmp_path)
    d.process_event(pygame.event.Event(pygame.QUIT))
    assert d.running is False
    d = make_display(tmp_path)
    d.process_event(keydown(pygame.K_q))
    assert d.running is True
    d.process_event(keydown(pygame.K_q, pygame.KMOD_LCTRL))
    assert d.running is False


def test_wasd_and_arrows_are_held_until_released(tmp_path):
    d = make_display(tmp_path)
    d.process_event(keydown(pygame.K_w))
    d.process_event(keydown(pygame.K_LEFT))
    assert d.manual_keys() == ManualKeys(throttle=True, left=True)
    d.process_event(keyup(pygame.K_w))
    d.process_event(keydown(pygame.K_DOWN))
    d.process_event(keydown(pygame.K_d))
    assert d.manual_keys() == ManualKeys(brake=True, left=True, right=True)
    for key in (pygame.K_LEFT, pygame.K_DOWN, pygame.K_d):
        d.process_event(keyup(key))
    assert d.manual_keys() == ManualKeys()


def test_m_cannot_leave_manual_with_the_manual_policy(tmp_path):
    d = make_display(tmp_path, policy=ManualPolicy())
    assert d.manual is True
    d.process_event(keydown(pygame.K_m))
    assert d.manual is True
    assert "always driving" in d.notice


def test_c_cycles_the_correction_strategies_in_order(tmp_path):
    policy = FakeCarilPolicy(correction="caril")
    d = make_display(tmp_path, policy=policy)
    names = list(STRATEGIES)
    seen = []
    for _ in range(len(names)):
        d.process_event(keydown(pygame.K_c))
        seen.append(policy.correction)
    start = names.index("caril")
    assert seen == [names[(start + k) % len(names)] for k in range(1, len(names) + 1)]
    assert d.correction_index == start and d.notice == "correction: caril"


def test_c_with_a_policy_without_correction_only_shows_a_note(tmp_path):
    policy = ExpertPolicy()
    d = make_display(tmp_path, policy=policy)
    d.process_event(keydown(pygame.K_c))
    assert d.correction is None and not hasattr(policy, "correction")
    assert "expert policy has no correction" in d.notice


# -- HUD ----------------------------------------------------------------------------------------------------------
def test_caril_view_reads_the_record_and_flags_corrections():
    view = caril_view(fake_record())
    assert (view.predicted_bin, view.regression_bin, view.rule) == (7, 5, "confident_bin_sample")
    assert view.corrected is True
    assert caril_view(fake_record(rule="keep_regression_agree", steer=-0.05)).corrected is False
    assert caril_view(fake_record(rule="fallback_invalid", steer=0.0, regression=math.nan)).corrected is True
    assert caril_view({"target_speed_mps": 8.0}) is None
    assert caril_view({}) is None


def test_history_keeps_the_last_span_of_simulated_time():
    h = History(span_s=10.0)
    for k in range(301):
        h.add(k * 0.05, 0.1, caril_view(fake_record()) if k % 2 else None)
    assert h.time_s[0] == pytest.approx(5.0) and h.time_s[-1] == pytest.approx(15.0)
    assert len(h) == 201
    assert sum(h.corrected) == 100 and math.isnan(h.max_prob[0]) and h.max_prob[1] == 0.93


def test_hud_draws_the_caril_fields_and_the_rule(tmp_path, sim):
    policy = FakeCarilPolicy()
    d = DriveDisplay(DisplayConfig(size=(1280, 720), out_dir=str(tmp_path)), policy=policy)
    obs = sim.reset("one-turn", "ClearNoon", 0)
    d.set_route(sim.route)
    d.on_reset(obs, {"route": "one-turn", "weather": "ClearNoon", "seed": 0})
    obs = sim.step(Control(0.0, 0.5, 0.0))
    d.on_step(obs, Control(0.075, 0.5, 0.0), fake_record())
    surface = pygame.Surface((1280, 720))
    d.render(surface)
    drawn = d._text.texts()
    assert {"CONFIDENCE CORRECTION", "confident_bin_sample", "caril", "+0.300  \u0394+0.350", "0.930"} <= drawn
    assert (d.corrections, d.caril_ticks) == (1, 1)
    # the most probable bin's bar (0.93 of a ~96 px chart, ~20 px wide) is drawn in the accent colour
    right = pygame.surfarray.array3d(surface)[1000:, :, :]
    assert np.count_nonzero(np.all(right == (255, 196, 60), axis=-1)) > 1000


def test_hud_shows_na_for_a_policy_without_classification_head(tmp_path, sim):
    policy = ExpertPolicy()
    d = DriveDisplay(DisplayConfig(size=(1280, 720), out_dir=str(tmp_path)), policy=policy)
    obs = sim.reset("one-turn", "ClearNoon", 0)
    policy.reset(sim.route)
    d.on_reset(obs, {"route": "one-turn", "weather": "ClearNoon", "seed": 0})
    control, record = policy.act(obs)
    d.on_step(sim.step(control), control, record)
    d.render(pygame.Surface((1280, 720)))
    drawn = d._text.texts()
    assert "POLICY OUTPUT" in drawn and "and correction: n/a" in drawn and "target_speed_mps" in drawn
    assert "CONFIDENCE CORRECTION" not in drawn


def test_render_refuses_a_surface_of_another_size(tmp_path):
    d = make_display(tmp_path)
    with pytest.raises(ValueError, match="differs from the display size"):
        d.render(pygame.Surface((100, 100)))


# -- manual driving -----------------------------------------------------------------------------------------------
def test_manual_policy_ramps_like_manual_control():
    p = ManualPolicy(dt_s=0.05)
    p.set_keys(ManualKeys(throttle=True, right=True))
    controls = [p.act(None)[0] for _ in range(3)]
    assert [c.throttle for c in controls] == pytest.approx([0.03, 0.06, 0.09])
    assert [c.steer for c in controls] == pytest.approx([0.025, 0.05, 0.075])
    for _ in range(100):
        control, record = p.act(None)
    assert (control.throttle, control.steer, record) == (pytest.approx(0.85), pytest.approx(0.7), {"manual": True})
    p.set_keys(ManualKeys(brake=True, left=True))
    first, second = p.act(None)[0], p.act(None)[0]
    assert (first.steer, first.throttle, first.brake) == (0.0, 0.0, pytest.approx(0.6))  # reversing snaps to 0
    assert (second.steer, second.brake) == (pytest.approx(-0.025), 1.0)
    p.set_keys(ManualKeys())
    assert p.act(None)[0] == Control()


def test_manual_config_is_validated():
    with pytest.raises(UsageError, match="max_steer must be in"):
        ManualConfig(max_steer=1.5)
    with pytest.raises(UsageError, match="positive number per second"):
        ManualConfig(throttle_rate_per_s=0.0)


def test_m_hands_the_control_to_the_keys_while_the_policy_shadows(tmp_path, sim):
    d = make_display(tmp_path, policy=ExpertPolicy())
    session = DriveSession(sim, d.policy, d, "one-turn", "ClearNoon")
    obs = session.reset()
    d.process_event(keydown(pygame.K_m))
    d.process_event(keydown(pygame.K_w))
    control, record = session.control(obs)
    assert (control.steer, control.throttle, control.brake) == (0.0, pytest.approx(0.03), 0.0)
    assert record["manual"] is True and "target_speed_mps" in record  # the expert's opinion is kept for the HUD


def test_make_drive_policy_builds_each_driver_and_names_a_missing_checkpoint(tmp_path):
    assert isinstance(make_drive_policy("manual"), ManualPolicy)
    assert isinstance(make_drive_policy("expert"), ExpertPolicy)
    with pytest.raises(CarilError, match="no checkpoint in"):
        make_drive_policy("caril", checkpoint=str(tmp_path / "missing"))
    with pytest.raises(CarilError, match="unknown policy 'robot'"):
        make_drive_policy("robot")


# -- the loop and the files it writes ------------------------------------------------------------------------------
def recording_expert(tmp_path, sim):
    """The expert driving one-turn (seed 3) with R pressed at the first observation: (display, session, obs)."""
    recording = DatasetRecording(tmp_path / "data", (CAMERA.width, CAMERA.height), 20.0)
    d = make_display(tmp_path, policy=ExpertPolicy(), recording=recording)
    session = DriveSession(sim, d.policy, d, "one-turn", "ClearNoon", seed=3)
    obs = session.reset()
    d.process_event(keydown(pygame.K_r))
    return d, session, obs


def test_r_records_what_is_driven_into_a_dataset_episode(tmp_path, sim):
    d, session, obs = recording_expert(tmp_path, sim)
    assert d.recording_on
    controls = []
    for _ in range(5):
        obs, _ = session.tick(obs)
        controls.append(d.control)
    d.process_event(keydown(pygame.K_r))
    assert not d.recording_on
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert [(e["index"], e["frames"], e["route"], e["seed"]) for e in manifest["episodes"]] == [(0, 5, "one-turn", 3)]
    reader = EpisodeReader(tmp_path / "data" / manifest["episodes"][0]["file"])
    executed = reader.column("action/executed")
    np.testing.assert_allclose(executed, [c.to_array() for c in controls], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(reader.column("action/expert"), executed)
    assert reader.attrs["driver"] == "expert" and reader.attrs["recorded_with"] == "caril drive"
    assert reader.image(0).shape == (48, 64, 3)


def test_a_recorded_episode_names_everyone_who_drove_it(tmp_path, sim):
    """M during a recording hands the car to the keys: the episode's driver says so (it said the driver at R)."""
    d, session, obs = recording_expert(tmp_path, sim)
    for k in range(6):
        if k == 3:
            d.process_event(keydown(pygame.K_m))
        obs, _ = session.tick(obs)
    d.close()  # quitting while recording saves the episode with the same attribute
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    reader = EpisodeReader(tmp_path / "data" / manifest["episodes"][0]["file"])
    assert reader.attrs["driver"] == "expert+manual" and len(reader) == 6


def test_recording_continues_into_the_next_episode_and_skips_empty_ones(tmp_path, sim):
    recording = DatasetRecording(tmp_path / "data", (CAMERA.width, CAMERA.height), 20.0)
    d = make_display(tmp_path, policy=ExpertPolicy(), recording=recording)
    limits = EpisodeLimits(min_average_speed_mps=1e9, time_slack_s=0.18)  # every episode ends after 4 steps
    session = DriveSession(sim, d.policy, d, "straight", "ClearNoon", frames=10, limits=limits)
    d.toggle_recording()  # before the first observation: starts with it
    result = session.run(pygame.Surface(SIZE), present=False)
    d.close()
    assert result.terminations == ["time_limit", "time_limit"] and result.episodes == 3
    assert [e["frames"] for e in recording.saved] == [4, 4, 2]
    assert [e["termination"] for e in recording.saved] == ["time_limit", "time_limit", "stopped"]
    d2 = make_display(tmp_path, recording=DatasetRecording(tmp_path / "d2", (64, 48), 20.0))
    d2.on_reset(sim.reset("straight"), {"route": "straight"})
    d2.toggle_recording()
    d2.toggle_recording()
    assert "no frames, nothing saved" in d2.notice
    assert list((tmp_path / "d2" / "episodes").glob("*.h5")) == []


def test_recording_refuses_a_dataset_of_another_camera(tmp_path, sim):
    DatasetRecording(tmp_path / "data", (64, 48), 20.0).open()
    d = make_display(tmp_path, recording=DatasetRecording(tmp_path / "data", (96, 96), 20.0))
    d.on_reset(sim.reset("straight"), {"route": "straight"})
    d.toggle_recording()
    assert not d.recording_on and "another camera size" in d.notice
    with pytest.raises(CarilError, match="another camera size or rate"):
        d.toggle_recording(strict=True)


def test_v_writes_one_video_frame_per_step_and_f12_a_screenshot(tmp_path, sim):
    d = make_display(tmp_path, policy=FakeCarilPolicy())
    session = DriveSession(sim, d.policy, d, "one-turn", "ClearNoon")
    surface = pygame.Surface(SIZE)
    obs = session.reset()
    d.process_event(keydown(pygame.K_v))
    for k in range(7):
        obs, _ = session.tick(obs)
        d.render(surface)
        if k == 3:
            d.render(surface)  # a second render of the same step (paused) adds no video frame
            d.process_event(keydown(pygame.K_F12))
    d.process_event(keydown(pygame.K_v))
    assert d.video is None
    path = d.videos[0].path
    assert path == tmp_path / "out" / "video_001.mp4"
    cap = cv2.VideoCapture(str(path))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert (frames, cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (7, 320, 180)
    assert d.screenshots == [tmp_path / "out" / "screenshot_001.png"]
    assert cv2.imread(str(d.screenshots[0])).shape == (180, 320, 3)
    d.process_event(keydown(pygame.K_F12))  # F12 and ESC in the same frame: the last frame is saved on close
    d.close()
    assert d.screenshots[1:] == [tmp_path / "out" / "screenshot_002.png"] and d.screenshots[1].is_file()


def test_paused_session_renders_without_stepping(tmp_path, sim):
    d = make_display(tmp_path, policy=ExpertPolicy())
    session = DriveSession(sim, d.policy, d, "one-turn", "ClearNoon", frames=3)
    d.process_event(keydown(pygame.K_p))
    pygame.event.post(keydown(pygame.K_p))  # resumes on the loop's first pass: it then steps 3 times
    result = session.run(pygame.Surface(SIZE), present=False)
    assert (result.steps, result.frames, d.paused) == (3, 3, False)
    assert d.obs.frame == 3


# -- the real CARIL agent (a tiny untrained network: only the plumbing is tested) ---------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from agent.checkpoint import save_checkpoint
    from agent.network import DualHeadNet, NetworkConfig
    from agent.preprocess import PreprocessConfig

    torch.manual_seed(0)
    net_cfg = NetworkConfig(input_size=(32, 32))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"), DualHeadNet(net_cfg).eval(), net_cfg,
                           PreprocessConfig(height=32, width=32), SteeringBins())


def test_the_caril_agent_drives_the_display_and_c_switches_its_correction(tmp_path, sim, checkpoint):
    agent = make_drive_policy("caril", checkpoint=str(checkpoint), correction="clamp")
    d = DriveDisplay(DisplayConfig(size=(1280, 720), out_dir=str(tmp_path)), policy=agent)
    session = DriveSession(sim, agent, d, "one-turn", "ClearNoon")
    obs = session.reset()
    obs, _ = session.tick(obs)
    d.render(pygame.Surface((1280, 720)))
    assert d.caril is not None and d.caril.correction == "clamp" and d.caril.rule.startswith("clamp_")
    assert d.caril.rule in d._text.texts()
    d.process_event(keydown(pygame.K_c))
    assert agent.correction == "blend"
    session.tick(obs)
    assert d.caril.correction == "blend" and d.caril.rule.startswith("blend_")


@pytest.mark.parametrize("size", [(100, 1920), (40, 2000), (1280, 720)])
def test_panel_layout_keeps_room_inside_any_window(size):
    """A window over 18 times taller than wide used to give panels a negative inner width (pygame refused)."""
    from training.display.panels import Layout

    layout = Layout.for_window(size, (448, 448))
    assert layout.right.w - 2 * layout.margin >= 1 and layout.margin >= 1
