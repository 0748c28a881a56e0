"""The GPU fast path's static-buffer forward, run eagerly on the CPU: the same outputs as the network on
``preprocess_batch``, close to the agent's cv2 path, the command reaching the branches, and a failed capture
that leaves the agent driving."""

import dataclasses
import logging

import numpy as np
import pytest
import torch

import agent.caril_agent as caril_agent
from agent.caril_agent import SAFE_STOP, CarilAgent, CarilAgentConfig
from agent.graphed import GraphedForward
from agent.preprocess import preprocess_batch
from sim.embedded import EmbeddedSimulator
from sim.types import CameraConfig, Control
from tests.tiny_checkpoint import save_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), command_branches=True, temperature=1.3)


@pytest.fixture(scope="module")
def observations():
    sim = EmbeddedSimulator(camera=CameraConfig(width=64, height=64))
    obs = [sim.reset("one-turn", "ClearNoon", 0)]
    for k in range(5):
        obs.append(sim.step(Control(steer=0.1 * k, throttle=0.7)))
    return obs


@torch.inference_mode()
def test_static_buffers_give_the_networks_outputs(checkpoint, observations):
    agent = CarilAgent(checkpoint, CarilAgentConfig(device="cpu"))
    model, pre = agent.model, agent.ckpt.preprocess
    forward = GraphedForward(model, pre, observations[0].image.shape, torch.device("cpu"), capture=False)
    for obs, command in zip(observations, (1, 2, 3, 4, 4, 1), strict=True):
        steer, logits = forward(obs.image, command)
        x = preprocess_batch(torch.from_numpy(obs.image)[None], pre)
        want = model(x, command=torch.tensor([command]))
        assert steer == pytest.approx(float(want["steer"][0]), abs=1e-5)
        np.testing.assert_allclose(logits, want["logits"][0].numpy(), atol=1e-5)


def test_the_fast_path_drives_like_the_eager_agent(checkpoint, observations):
    eager = CarilAgent(checkpoint, CarilAgentConfig(device="cpu", correction="regression"))
    fast = CarilAgent(checkpoint, CarilAgentConfig(device="cpu", correction="regression"))
    fast._use_graphs = True  # what cuda_graphs=True does on a GPU; on the CPU the same path runs uncaptured
    for obs in observations:
        _, want = eager.act(obs)
        _, got = fast.act(obs)
        assert got["fallback"] == "" and got["steer_regression"] == pytest.approx(want["steer_regression"], abs=2e-3)
        np.testing.assert_allclose(got["class_probs"], want["class_probs"], atol=2e-3)  # resize within 1/255
    assert list(fast._graphed) == [observations[0].image.shape]  # one instance per frame shape


def test_cuda_graphs_are_off_on_the_cpu(checkpoint):
    assert not CarilAgent(checkpoint, CarilAgentConfig(device="cpu", cuda_graphs=True)).uses_cuda_graphs


def test_a_failed_capture_keeps_the_agent_driving(checkpoint, observations, monkeypatch, caplog):
    def fail(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(caril_agent, "GraphedForward", fail)
    agent = CarilAgent(checkpoint, CarilAgentConfig(device="cpu", correction="regression"))
    agent._use_graphs = True
    with caplog.at_level(logging.WARNING, logger="agent.caril_agent"):
        control, record = agent.act(observations[0])
    assert record["fallback"] == "" and control.brake == 0.0
    assert not agent.uses_cuda_graphs and "CUDA graph capture failed (RuntimeError" in caplog.text
    _, again = agent.act(observations[1])  # eager from now on, no second attempt
    assert again["fallback"] == "" and caplog.text.count("capture failed") == 1


def test_a_bad_frame_on_the_fast_path_is_a_safe_stop(checkpoint, observations):
    agent = CarilAgent(checkpoint, CarilAgentConfig(device="cpu"))
    agent._use_graphs = True
    control, record = agent.act(dataclasses.replace(observations[0], image=observations[0].image[..., :2]))
    assert control == SAFE_STOP and "FrameError" in record["fallback"]
