"""``caril bench sim``: simulator speed against Gymnasium's CarRacing-v3.

    caril bench sim --json bench_sim.json

Steps per second of ``caril/Embedded-v0`` at a 160x160 and at the paper's 448x448 camera against
Gymnasium's ``CarRacing-v3`` (96x96 pixels) in the same process and run, with the same protocol: seeded
random actions from the action space, reset on episode end, warm-up steps excluded.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from scripts.args import arg
from sim.errors import CarilError, UsageError

DESCRIPTION = "Steps per second of the embedded simulator (160x160 and 448x448) against CarRacing-v3."


@dataclass
class Args:
    json: str | None = arg(None, help="also write the JSON to this path")
    steps: int = arg(3000, help="timed steps per embedded case")
    baseline_steps: int = arg(600, help="timed steps of the CarRacing-v3 baseline")
    warmup: int = arg(50, help="untimed warm-up steps per case")
    seed: int = arg(0, help="seed of environments and random actions")
    route: str = arg("mixed", help="route driven by the embedded cases")

    def __post_init__(self) -> None:
        if min(self.steps, self.baseline_steps) < 1 or self.warmup < 0:
            raise UsageError("--steps and --baseline-steps must be positive and --warmup not negative")


def _time_env(env, steps: int, warmup: int, seed: int) -> dict:
    """Steps per second of ``env`` under seeded random actions, resetting when an episode ends."""
    env.action_space.seed(seed)
    env.reset(seed=seed)
    resets = 0
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
            resets += i >= warmup
    elapsed = time.perf_counter() - t0
    env.close()
    return {"steps": steps, "seconds": round(elapsed, 4), "steps_per_s": round(steps / elapsed, 2),
            "ms_per_step": round(1000 * elapsed / steps, 4), "resets": resets}


def bench(args: Args) -> dict:
    import gymnasium as gym

    import sim  # noqa: F401  (registers caril/Embedded-v0)

    try:
        import Box2D  # noqa: F401
    except ImportError:
        raise CarilError("the CarRacing-v3 baseline needs Box2D: pip install -e '.[dev]'") from None
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    base = _time_env(gym.make("CarRacing-v3"), args.baseline_steps, args.warmup, args.seed)
    cases = {"carracing_96": {"env": "CarRacing-v3", "image": [96, 96, 3], **base}}
    for size in (160, 448):
        env = gym.make("caril/Embedded-v0", route=args.route, width=size, height=size)
        result = _time_env(env, args.steps, args.warmup, args.seed)
        result["ratio_vs_carracing"] = round(result["steps_per_s"] / base["steps_per_s"], 2)
        cases[f"embedded_{size}"] = {"env": "caril/Embedded-v0", "image": [size, size, 3], "route": args.route,
                                     **result}
    return {"protocol": "seeded random actions, reset on episode end, single process", "cases": cases}
