"""A small randomly initialised checkpoint for tests that need a CARIL agent but not a trained one."""

import torch

from agent.bins import SteeringBins
from agent.checkpoint import save_checkpoint
from agent.network import DualHeadNet, NetworkConfig
from agent.preprocess import PreprocessConfig


def save_tiny_checkpoint(folder, command_branches=False, seed=0, **checkpoint_options):
    """A 32x32-input default network (weights from ``seed``) saved in ``folder``; returns its path.
    ``checkpoint_options`` go to ``save_checkpoint`` (e.g. ``temperature``, ``steer_scale``)."""
    torch.manual_seed(seed)
    cfg = NetworkConfig(input_size=(32, 32), command_branches=command_branches)
    return save_checkpoint(folder, DualHeadNet(cfg).eval(), cfg, PreprocessConfig(height=32, width=32),
                           SteeringBins(), **checkpoint_options)
