"""Build a policy from its command-line name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.expert import ExpertPolicy
from agent.policy import Policy
from sim.errors import CarilError, UsageError, unknown_name

POLICIES = ("expert", "caril")


NEEDS_CHECKPOINT = "--policy caril needs --checkpoint RUN (a folder written by caril train, or policies/caril_small)"


def make_policy(name: str, checkpoint: str | None = None, correction: str = "caril", **kwargs: Any) -> Policy:
    """``expert`` (privileged route follower) or ``caril`` (the learned agent from ``checkpoint``, a run
    folder or its ``best``/``last`` checkpoint folder, with the named ``correction``)."""
    if name == "expert":
        return ExpertPolicy(**kwargs)
    if name == "caril":
        from agent.caril_agent import CarilAgent, CarilAgentConfig

        if not checkpoint:
            raise UsageError(NEEDS_CHECKPOINT)
        return CarilAgent(resolve_checkpoint(checkpoint), CarilAgentConfig(correction=correction, **kwargs))
    raise unknown_name("policy", name, POLICIES)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder: ``path`` itself if it holds a checkpoint (``config.json`` and
    ``model.safetensors``), else ``path/best`` or ``path/last`` (a ``caril train`` run folder)."""
    p = Path(path)
    candidates = (p, p / "best", p / "last")
    for candidate in candidates:
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    for candidate in candidates:  # half a checkpoint: name the file that is missing
        have = [name for name in ("config.json", "model.safetensors") if (candidate / name).is_file()]
        if len(have) == 1:
            missing = "model.safetensors" if have == ["config.json"] else "config.json"
            raise CarilError(f"{candidate / missing} is missing: a checkpoint folder holds config.json and "
                             "model.safetensors (written by caril train); re-copy or re-save the checkpoint")
    raise CarilError(f"no checkpoint in {p}: expected config.json and model.safetensors there or in {p}/best or "
                     f"{p}/last (train one with caril train, or use the shipped policy in policies/)")
