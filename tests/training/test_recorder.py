"""The recorder's lifecycle and frame validation, its pairing of observations with commands, and the noise."""

import json

import numpy as np
import pytest

from agent.expert import ExpertPolicy
from sim.embedded import EmbeddedSimulator
from sim.episode import EpisodeLimits
from sim.errors import CarilError
from sim.routes import get_route
from sim.types import CameraConfig, Control
from sim.weather import get_weather
from training.collect import FrameCappedLimits
from training.episode_file import IMAGE_KEY, EpisodeReader, ImageCodec, default_features, read_manifest
from training.noise import (
    EXPERT_CONTROL_KEY,
    NOISE_ACTIVE_KEY,
    NoiseConfig,
    NoisyPolicy,
    SteeringNoise,
)
from training.recorder import FrameError, Recorder, driving_frame, validate_frame
from training.rollout import run_episode

H, W = 24, 32


@pytest.fixture(scope="module")
def sim_and_obs():
    sim = EmbeddedSimulator(camera=CameraConfig(width=W, height=H))
    return sim, sim.reset("straight", "ClearNoon", 0)


def a_frame(obs, i=0):
    return driving_frame(obs, Control(0.1, 0.5, 0.0), Control(0.2, 0.5, 0.0), True, i)


def test_create_refuses_a_folder_that_holds_a_dataset(tmp_path):
    Recorder.create(tmp_path / "d", 20.0, default_features(H, W)).finalize()
    with pytest.raises(CarilError, match="already holds a dataset; continue it with --resume"):
        Recorder.create(tmp_path / "d", 20.0, default_features(H, W))
    assert read_manifest(tmp_path / "d")["episodes"] == []


@pytest.mark.parametrize("change, message", [
    (lambda f: f.pop("observation/speed_mps"), "missing ['observation/speed_mps'], unexpected []"),
    (lambda f: f.update(extra=1), "missing [], unexpected ['extra']"),
    (lambda f: f.update({IMAGE_KEY: np.zeros((H, W + 1, 3), np.uint8)}),
     f"observation/image: expected a uint8 RGB image of shape ({H}, {W}, 3), got uint8 ({H}, {W + 1}, 3)"),
    (lambda f: f.update({IMAGE_KEY: np.zeros((H, W, 3), np.float32)}), "expected a uint8 RGB image"),
    (lambda f: f.update({"action/expert": (0.1, 0.2)}), "action/expert: expected shape (3,), got (2,)"),
    (lambda f: f.update({"action/noise_active": 1}), "action/noise_active: expected bool, got int64"),
    (lambda f: f.update({"frame_index": 1.5}), "frame_index: expected int32, got float64"),
    (lambda f: f.update({"observation/speed_mps": float("nan")}), "observation/speed_mps: nan is not finite"),
    (lambda f: f.update({"events/markings": None}), "events/markings: expected a str, got NoneType"),
])
def test_frames_are_validated_against_the_feature_spec(sim_and_obs, change, message):
    _, obs = sim_and_obs
    frame = a_frame(obs)
    validate_frame(frame, default_features(H, W))
    change(frame)
    with pytest.raises(FrameError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        validate_frame(frame, default_features(H, W))


def test_episode_lifecycle_save_discard_finalize(tmp_path, sim_and_obs):
    _, obs = sim_and_obs
    root = tmp_path / "d"
    rec = Recorder.create(root, 20.0, default_features(H, W), ImageCodec("png"), planned_episodes=3)
    with pytest.raises(RuntimeError, match="call start_episode"):
        rec.add_frame(a_frame(obs))
    rec.start_episode(0, {"route": "straight", "weather": "ClearNoon", "seed": 5})
    for i in range(3):
        rec.add_frame(a_frame(obs, i))
    entry = rec.save_episode({"termination": "goal"})
    assert entry == {"index": 0, "file": "episodes/episode_000000.h5", "route": "straight", "weather": "ClearNoon",
                     "seed": 5, "frames": 3, "noise_frames": 3, "termination": "goal", "sim_time_s": 0.15,
                     "bytes": (root / "episodes" / "episode_000000.h5").stat().st_size, "status": "complete"}
    rec.start_episode(1)
    rec.add_frame(a_frame(obs))
    rec.discard_episode()
    rec.start_episode(2)
    rec.add_frame(a_frame(obs))
    rec.finalize()  # an unsaved episode is dropped, never half-written
    assert sorted(p.name for p in (root / "episodes").iterdir()) == ["episode_000000.h5"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert [e["index"] for e in manifest["episodes"]] == [0] and manifest["total_frames"] == 3
    reader = EpisodeReader(root / "episodes" / "episode_000000.h5")
    assert np.array_equal(reader.image(2), obs.image) and reader.attrs["seed"] == 5
    assert reader.column("action/expert")[0].tolist() == pytest.approx([0.1, 0.5, 0.0])
    assert reader.column("action/executed")[0].tolist() == pytest.approx([0.2, 0.5, 0.0])
    with pytest.raises(CarilError, match="does not match the dataset's 20.0 fps"):
        Recorder.open(root).start_episode(3, {"dt_s": 0.1})


class Tape:
    """Keeps every observation and control of an episode."""

    def on_reset(self, obs, info):
        self.obs, self.controls = [obs], []

    def on_step(self, obs, control, record):
        self.obs.append(obs)
        self.controls.append(control)

    def on_end(self, summary):
        pass


def test_frame_t_pairs_the_observation_acted_on_with_the_command_given(tmp_path):
    sim = EmbeddedSimulator(camera=CameraConfig(width=W, height=H))
    rec = Recorder.create(tmp_path / "d", 1 / sim.dt_s, default_features(H, W), ImageCodec("png"))
    tape = Tape()
    rec.start_episode(0, {"route": "one-turn", "weather": "WetNoon", "seed": 3, "dt_s": sim.dt_s})
    limits = FrameCappedLimits(**EpisodeLimits().to_dict(), max_time_s=11.5 * sim.dt_s)
    summary, _ = run_episode(sim, ExpertPolicy(dt_s=sim.dt_s), get_route("one-turn"), get_weather("WetNoon"), 3,
                             limits, consumers=(rec, tape))
    rec.save_episode()
    reader = EpisodeReader(tmp_path / "d" / "episodes" / "episode_000000.h5")
    assert summary["termination"] == "time_limit" and len(reader) == 12 == len(tape.controls)
    for t in range(12):
        assert np.array_equal(reader.image(t), tape.obs[t].image)
    assert reader.column("sim_frame").tolist() == list(range(12))
    assert np.array_equal(reader.column("action/expert"), np.float32([c.to_array() for c in tape.controls]))
    assert np.array_equal(reader.column("action/executed"), reader.column("action/expert"))
    assert not reader.column("action/noise_active").any()
    assert reader.attrs["summary"]["termination"] == "time_limit"


# -- noise --------------------------------------------------------------------------------------------------
def run_noise(config, seed, steps):
    noise = SteeringNoise(config, 0.05, seed)
    values, active = [], []
    for _ in range(steps):
        values.append(noise.step())
        active.append(noise.active)
    return np.array(values), np.array(active)


@pytest.mark.parametrize("kind", ["triangle", "ou"])
def test_noise_is_seeded_correlated_and_active_for_the_configured_fraction(kind):
    config = NoiseConfig(kind=kind, active_fraction=0.25, amplitude=0.2)
    values, active = run_noise(config, 7, 20000)
    again, _ = run_noise(config, 7, 20000)
    other, _ = run_noise(config, 8, 20000)
    assert np.array_equal(values, again) and not np.array_equal(values, other)
    assert 0.21 < active.mean() < 0.29
    assert np.all(values[~active] == 0.0) and np.all(values[active] != 0.0)
    edges = np.diff(np.concatenate([[0], active.astype(int), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    lengths = ends - starts  # runs of noisy steps: one event of 0.5..1.5 s (10..30 steps), or events back to back
    assert lengths.min() >= 10 and 10 <= np.median(lengths) <= 30
    if kind == "triangle":
        assert np.abs(values).max() <= 0.2
        event = values[starts[0]:ends[0]]
        peak = int(np.argmax(np.abs(event)))
        rise, fall = np.diff(np.abs(event[:peak + 1])), np.diff(np.abs(event[peak:]))
        assert np.all(rise > 0) and np.all(fall <= 0) and np.all(fall[1:] < 0)  # a triangle (flat top of 2)
        assert np.abs(event[0]) < np.abs(event).max() / 3  # ramps up: no step change in steering


def test_disabled_noise_never_fires():
    values, active = run_noise(NoiseConfig(enabled=False), 1, 2000)
    assert not active.any() and not values.any()
    with pytest.raises(CarilError, match=r"noise active fraction 1.0 is outside \[0, 1\)"):
        NoiseConfig(active_fraction=1.0)
    with pytest.raises(CarilError, match="noise kind 'pink' is not one of triangle, ou"):
        NoiseConfig(kind="pink")


class ConstantPolicy(ExpertPolicy):
    def __init__(self, steer):
        super().__init__()
        self.steer = steer

    def act(self, observation):
        return Control(self.steer, 0.4, 0.1), {"why": "constant"}


def test_noisy_policy_executes_expert_plus_noise_and_records_the_clean_command(sim_and_obs):
    _, obs = sim_and_obs
    noise = SteeringNoise(NoiseConfig(active_fraction=0.5, amplitude=0.5), 0.05, 2)
    policy = NoisyPolicy(ConstantPolicy(0.9), noise)
    reference = SteeringNoise(NoiseConfig(active_fraction=0.5, amplitude=0.5), 0.05, 2)
    flags = []
    for _ in range(400):
        executed, record = policy.act(obs)
        n = reference.step()
        assert record[EXPERT_CONTROL_KEY] == Control(0.9, 0.4, 0.1) and record["why"] == "constant"
        assert record[NOISE_ACTIVE_KEY] == reference.active
        assert executed.steer == min(1.0, 0.9 + n) and (executed.throttle, executed.brake) == (0.4, 0.1)
        flags.append(record[NOISE_ACTIVE_KEY])
    assert any(flags) and not all(flags)
    executed, record = NoisyPolicy(ConstantPolicy(-0.3)).act(obs)
    assert executed == record[EXPERT_CONTROL_KEY] == Control(-0.3, 0.4, 0.1) and not record[NOISE_ACTIVE_KEY]
