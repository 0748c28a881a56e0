"""The closed-loop agent: checkpoint -> preprocessing -> network -> correction -> control, never crashing."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from agent.bins import SteeringBins
from agent.caril_agent import SAFE_STOP, CarilAgent, CarilAgentConfig
from agent.checkpoint import load_checkpoint, save_checkpoint
from agent.correction import correct
from agent.draws import Draws
from agent.network import DualHeadNet, NetworkConfig
from agent.preprocess import PreprocessConfig
from sim.embedded import EmbeddedSimulator
from sim.errors import UnknownNameError
from sim.types import CameraConfig, Control, RoadOption


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    net_cfg = NetworkConfig(input_size=(32, 32))
    model = DualHeadNet(net_cfg).eval()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"), model, net_cfg, PreprocessConfig(height=32, width=32),
                           SteeringBins(), temperature=1.5)


@pytest.fixture(scope="module")
def observation():
    sim = EmbeddedSimulator(camera=CameraConfig(width=64, height=64))
    return sim.reset("one-turn", "ClearNoon", 0)


class FixedNet(torch.nn.Module):
    """Returns a chosen regression value and logits, to test the agent's arithmetic exactly."""

    def __init__(self, steer: float, logits: list[float]):
        super().__init__()
        self.steer, self.logits = steer, torch.tensor([logits])
        self.commands = []

    def forward(self, x, command=None):
        self.commands.append(None if command is None else command.tolist())
        return {"steer": torch.full((x.shape[0],), self.steer), "logits": self.logits.expand(x.shape[0], -1)}


def with_net(checkpoint, steer, logits, temperature=1.0):
    loaded = load_checkpoint(checkpoint)
    return dataclasses.replace(loaded, model=FixedNet(steer, logits), temperature=temperature)


def test_act_returns_a_valid_control_and_a_full_record(checkpoint, observation):
    agent = CarilAgent(checkpoint, CarilAgentConfig(correction="caril", device="cpu"))
    agent.reset()
    control, record = agent.act(observation)
    assert isinstance(control, Control)
    for key in ("steer_regression", "class_probs", "max_prob", "entropy", "rule", "steer", "correction",
                "preprocess_ms", "network_ms", "correction_ms"):
        assert key in record
    assert len(record["class_probs"]) == 11 and math.isclose(sum(record["class_probs"]), 1.0, abs_tol=1e-6)
    assert control.steer == pytest.approx(np.clip(record["steer"] / 4.0, -1, 1))
    assert record["steer_scale"] == 4.0  # the checkpoint's units, for displays and logs
    centres = np.linspace(-1, 1, 12)[:-1] + 1 / 11  # the paper's 11 bins over [-1, 1]
    assert record["steer_classification"] == pytest.approx(float(np.dot(record["class_probs"], centres)))


def test_calibrated_temperature_and_steer_scale_are_applied(checkpoint, observation):
    logits = [0.0] * 11
    logits[8] = 6.0
    loaded = with_net(checkpoint, steer=0.1, logits=logits, temperature=2.0)
    agent = CarilAgent(loaded, CarilAgentConfig(correction="clamp", device="cpu"))
    control, record = agent.act(observation)
    z = np.array(logits) / 2.0
    probs = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert record["class_probs"] == pytest.approx(probs.tolist())
    expected = correct("clamp", 0.1, probs, bins=SteeringBins())
    assert record["rule"] == expected.rule and record["steer"] == pytest.approx(expected.steer)
    assert control.steer == pytest.approx(expected.steer / 4.0)


def test_caril_rule_is_seeded_per_episode(checkpoint, observation):
    logits = [0.0] * 11
    logits[2] = 3.0  # max prob 0.67: neither confident nor uncertain, the Gaussian branch samples
    agent = CarilAgent(with_net(checkpoint, 0.0, logits), CarilAgentConfig(correction="caril", seed=3, device="cpu"))
    agent.reset()
    first = [agent.act(observation)[1]["steer"] for _ in range(3)]
    agent.reset()
    records = [agent.act(observation)[1] for _ in range(3)]
    again = [r["steer"] for r in records]
    assert first == again and len(set(first)) == 3



def test_caril_agent_takes_its_samples_in_blocks(checkpoint, observation):
    logits = [0.0] * 11
    logits[2] = 3.0  # the Gaussian branch on every tick: ten normals each
    agent = CarilAgent(with_net(checkpoint, 0.0, logits), CarilAgentConfig(correction="caril", seed=3, device="cpu"))
    agent.reset()
    records = [agent.act(observation)[1] for _ in range(103)]  # the 103rd tick's ten do not fit the first block
    blocked, direct = Draws(np.random.default_rng(3)), np.random.default_rng(3)
    probs = np.array(records[0]["class_probs"])
    assert [r["steer"] for r in records] == [correct("caril", 0.0, probs, blocked).steer for _ in records]
    unblocked = [correct("caril", 0.0, probs, direct).steer for _ in records]
    assert unblocked[:102] == [r["steer"] for r in records[:102]]  # the same normals, as long as the block lasts
    assert unblocked[102] != records[102]["steer"]  # then a new block: the rest of the first is skipped


@pytest.mark.parametrize("steer, reason", [(float("nan"), "not finite"), (float("inf"), "not finite"),
                                           (7.0, "beyond +-2.0")])
def test_bad_network_output_brakes_safely(checkpoint, observation, steer, reason):
    agent = CarilAgent(with_net(checkpoint, steer, [0.0] * 11), CarilAgentConfig(device="cpu"))
    control, record = agent.act(observation)
    assert control == SAFE_STOP
    assert record["rule"] == "fallback_safe_stop" and reason in record["fallback"]


def test_nan_probabilities_brake_safely(checkpoint, observation):
    agent = CarilAgent(with_net(checkpoint, 0.0, [float("nan")] * 11), CarilAgentConfig(device="cpu"))
    control, record = agent.act(observation)
    assert control == SAFE_STOP and record["fallback"]


@pytest.mark.parametrize("image", [np.zeros((64, 64, 4), np.uint8), np.zeros((64, 64, 3), np.float32),
                                   np.zeros((0, 0, 3), np.uint8)])
def test_bad_frames_brake_safely(checkpoint, observation, image):
    agent = CarilAgent(checkpoint, CarilAgentConfig(device="cpu"))
    control, record = agent.act(dataclasses.replace(observation, image=image))
    assert control == SAFE_STOP
    assert record["rule"] == "fallback_safe_stop" and "FrameError" in record["fallback"]


@pytest.mark.parametrize("speed", [float("nan"), float("inf"), None])
def test_bad_speed_reading_brakes_once_and_does_not_poison_later_ticks(checkpoint, observation, speed):
    agent = CarilAgent(checkpoint, CarilAgentConfig(device="cpu"))
    agent.reset()
    good = dataclasses.replace(observation, speed_mps=3.0)
    expected = [agent.act(good)[0] for _ in range(2)]
    agent.reset()
    control, record = agent.act(dataclasses.replace(observation, speed_mps=speed))
    assert control == SAFE_STOP and record["rule"] == "fallback_safe_stop"
    assert f"speed reading {speed!r} m/s is not a finite number" in record["fallback"]
    assert [agent.act(good)[0] for _ in range(2)] == expected  # the PI integral was left untouched


def test_speed_controller_brakes_on_a_non_finite_reading():
    from agent.control import SpeedController

    pid = SpeedController()
    assert pid(8.0, float("nan")) == (0.0, 1.0) and pid(float("inf"), 2.0) == (0.0, 1.0)
    assert pid.integral == 0.0
    throttle, brake = pid(8.0, 3.0)
    assert throttle > 0.0 and brake == 0.0 and pid.integral == pytest.approx(5.0 * 0.05)


def test_speed_eases_off_in_turns(checkpoint):
    agent = CarilAgent(checkpoint, CarilAgentConfig(device="cpu"))
    assert agent.target_speed(0.0) == 8.0
    assert agent.target_speed(-0.1) == pytest.approx(6.25)
    assert agent.target_speed(0.3) == 4.5


def test_unknown_correction_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid corrections: regression, classification"):
        CarilAgentConfig(correction="magic")


def test_the_observations_route_command_reaches_the_network(checkpoint, observation):
    loaded = with_net(checkpoint, steer=0.0, logits=[0.0] * 11)
    agent = CarilAgent(loaded, CarilAgentConfig(correction="regression", device="cpu"))
    agent.act(observation)
    agent.act(dataclasses.replace(observation, command=RoadOption.RIGHT))
    assert loaded.model.commands == [[int(RoadOption.LANEFOLLOW)], [int(RoadOption.RIGHT)]]
