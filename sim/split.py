"""The train/test split of the world: which maps and weathers training data may come from.

A driving agent has to drive roads and light it has never seen, so the evaluation conditions are kept out of
every recording by rule, not by habit:

- **Maps.** Training data comes only from generated maps ``random:<seed>`` with ``seed >=``
  :data:`TRAIN_MAP_SEED_MIN`. The paper's routes, every named route and every generated map with a smaller
  seed are held out; :data:`HELDOUT_SUITE` (``--routes heldout``) names the generated ones evaluations use.
- **Weathers.** :data:`TRAIN_WEATHERS` may be recorded; :data:`HELDOUT_WEATHERS` never: the low sun in view
  (``ClearSunset``, ``WetSunset``: dark, warm, a glare at the horizon) and hard rain (``HardRainNoon``,
  ``HardRainSunset``: fog, streaks, a grey sky).

``caril collect`` refuses a held-out map or weather (:func:`check_training_conditions`) unless told
``--allow-heldout``; a dataset recorded with it says so in its ``config.json``.
"""

from __future__ import annotations

from sim.errors import UsageError
from sim.weather import WEATHERS

TRAIN_MAP_SEED_MIN = 100_000  # generated maps from this seed up are for training; below it, for evaluation

HELDOUT_WEATHERS: tuple[str, ...] = ("ClearSunset", "WetSunset", "HardRainNoon", "HardRainSunset")
TRAIN_WEATHERS: tuple[str, ...] = tuple(name for name in WEATHERS if name not in HELDOUT_WEATHERS)

# Held-out generated maps for evaluation: together every junction movement and curves of both signs, 511-737 m
HELDOUT_SUITE: tuple[str, ...] = ("random:2", "random:6", "random:15", "random:14", "random:10", "random:3")
HELDOUT_MINI_SUITE: tuple[str, ...] = HELDOUT_SUITE[:2]  # 1024 m: left, right and straight, curves both ways


def map_seed(route: str) -> int | None:
    """The seed of a generated map ``random:<seed>``, or None for a named route (or a malformed name)."""
    if not route.startswith("random:"):
        return None
    try:
        return int(route.split(":", 1)[1])
    except ValueError:
        return None


def is_training_map(route: str) -> bool:
    """Whether training data may be recorded on ``route``: only generated maps with a seed >= 100000."""
    seed = map_seed(route)
    return seed is not None and seed >= TRAIN_MAP_SEED_MIN


def is_training_route(route: str, backend: str = "embedded") -> bool:
    """Whether training data may be recorded on ``route`` of ``backend``: on the embedded simulator a generated
    map with a seed >= 100000; on CARLA a ``start:end`` pair of spawn points, never a named (paper) route."""
    if backend == "carla":
        return ":" in route and not route.startswith("random:")
    return is_training_map(route)


def heldout_conditions(routes: tuple[str, ...] | list[str], weathers: tuple[str, ...] | list[str],
                       backend: str = "embedded") -> list[str]:
    """The held-out maps and weathers among ``routes`` and ``weathers`` (empty when all may be trained on)."""
    return ([r for r in routes if not is_training_route(r, backend)]
            + [w for w in weathers if w in HELDOUT_WEATHERS])


def check_training_conditions(routes: tuple[str, ...] | list[str], weathers: tuple[str, ...] | list[str],
                              allow_heldout: bool = False, backend: str = "embedded") -> None:
    """Refuse, in one :class:`UsageError`, to record training data on held-out maps or weathers."""
    held = heldout_conditions(routes, weathers, backend)
    if held and not allow_heldout:
        shown = ", ".join(held[:6]) + (f" and {len(held) - 6} more" if len(held) > 6 else "")
        raise UsageError(
            f"{shown} {'is' if len(held) == 1 else 'are'} held out for evaluation: training data comes from "
            f"random:<seed> maps with seed >= {TRAIN_MAP_SEED_MIN} (e.g. --routes random:{TRAIN_MAP_SEED_MIN}-"
            f"{TRAIN_MAP_SEED_MIN + 99}) and the weathers {', '.join(TRAIN_WEATHERS)}; pass --allow-heldout to "
            "record there anyway (the dataset then says so)")
