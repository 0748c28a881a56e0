"""The main job end to end on the embedded simulator.

    caril demo --out runs/demo                 # the shipped policy: regression vs corrections, report, table
    caril demo --from-scratch --out runs/demo  # record, train and then evaluate (says how long first)

The shipped policy (``policies/caril_small/``, reproduced by ``policies/caril_small/README.md``) drives two
held-out generated maps (``heldout-mini``: never in any training data) with each correction on the same seeded
episodes (spawn offsets drawn from each trial's seed), in a training weather and in a held-out one; the
expert's drive is the reference. Prints the
comparison table and writes the report (``OUT/eval/report.md``, plots, ``results.csv``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from scripts import collect, evaluate, train
from scripts.args import arg, parse
from sim.errors import CarilError

DESCRIPTION = "Run the main job end to end on the embedded simulator and print the comparison table."
SHIPPED = Path(__file__).resolve().parents[1] / "policies" / "caril_small"
# the shipped policy's recipe (policies/caril_small/README.md), which --from-scratch runs
RECIPE_COLLECT = ("--routes", "random:100000-100119", "--weathers", "train", "--schedule", "interleave",
                  "--episodes", "120", "--seed", "7")
RECIPE_TRAIN = ("--epochs", "6", "--max-per-bin", "4000", "--steer-limit", "0.4", "--steer-scale", "2.5", "--flip", "0",
                "--jitter", "0.3", "--brightness", "0.4", "--colour", "0.1", "--haze", "0.4", "--blur", "0.3",
                "--seed", "0")
TABLE_METRICS = (("frechet_m", "Fréchet m"), ("lateral_offset_mean_m", "lane dev m"),
                 ("route_completion", "completion"), ("collisions", "collisions"))


@dataclass
class Args:
    out: str = arg("runs/demo", help="output folder")
    checkpoint: str = arg(str(SHIPPED), help="policy to evaluate (default: the shipped one)")
    corrections: str = arg("regression,caril,clamp,blend", help="corrections compared (regression first)")
    routes: str = arg("heldout-mini", help="routes: held-out generated maps (never in training data)")
    weathers: str = arg("ClearNoon,HardRainNoon", help="weathers: a training one and a held-out one")
    trials: int = arg(4, help="episodes per route, weather and correction")
    spawn_noise: float = arg(0.3, help="std of the lateral spawn offset of each trial, metres")
    workers: int = arg(2, help="parallel episode processes")
    seed: int = arg(0, help="base seed of the trials")
    from_scratch: bool = arg(False, help="record demonstrations and train a policy first (slow on a CPU)")


def run(args: Args) -> int:
    out = Path(args.out)
    checkpoint = Path(args.checkpoint)
    if args.from_scratch:
        checkpoint = from_scratch(out, args)
    elif not (checkpoint / "model.safetensors").exists():
        raise CarilError(f"no policy at {checkpoint}: run from the repository checkout (the shipped policy is "
                         "policies/caril_small/), pass --checkpoint RUN, or use --from-scratch")
    eval_dir = out / "eval"
    eval_args = parse(evaluate.Args, [
        "--out", str(eval_dir), "--policy", "caril", "--checkpoint", str(checkpoint), "--corrections",
        args.corrections, "--routes", args.routes, "--weathers", args.weathers, "--trials", str(args.trials),
        "--spawn-noise", str(args.spawn_noise), "--workers", str(args.workers), "--seed", str(args.seed),
        "--resume"], "caril evaluate", evaluate.DESCRIPTION)
    if why := evaluate.resume_mismatch(eval_args, trust_legacy=False):  # e.g. another shipped policy
        print(f"{eval_dir}: {why}; evaluating afresh", flush=True)
        eval_args.resume, eval_args.overwrite = False, True
    evaluate.run(eval_args)
    print_table(json.loads((eval_dir / "summary.json").read_text()))
    print(f"\nreport: {eval_dir / 'report.md'}  plots: {eval_dir / 'plots'}  episodes: {eval_dir / 'results.csv'}")
    return 0


def from_scratch(out: Path, args: Args) -> Path:
    """The shipped policy's recipe: record 120 generated training maps, each in one of the seven training
    weathers, with noise injection, then train the default network with photometric augmentation."""
    print("from scratch, the shipped policy's recipe: recording 120 episodes on training maps (~269k frames, "
          "4.4 GB, about 5 minutes on 2 cores), then training the default network for 6 epochs (about 50 "
          "minutes on a 2-core CPU, a few minutes on a GPU), then the evaluation (about 4 minutes).", flush=True)
    t0 = time.perf_counter()
    data, run_dir = out / "data", out / "train"
    collect.run(parse(collect.Args, [*RECIPE_COLLECT, "--workers", str(args.workers), "--out", str(data),
                                     "--resume"], "caril collect", collect.DESCRIPTION))
    train.run(parse(train.Args, ["--data", str(data), "--out", str(run_dir), *RECIPE_TRAIN, "--workers",
                                 str(args.workers)] + (["--resume"] if (run_dir / "last").exists() else []),
                    "caril train", train.DESCRIPTION))
    print(f"recorded and trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return run_dir / "best"


def print_table(summary: dict) -> None:
    """The overall comparison: mean [95% CI] per correction, and the change against the reference."""
    ref = summary["reference_correction"]
    groups = summary["groups"]
    for group in summary["groups"]:  # overall, each route, each weather
        print(f"\n{group}: mean [95% BCa bootstrap CI], change vs {ref}")
        print(f"  {'policy':12s}" + "".join(f"{title:>30s}" for _, title in TABLE_METRICS))
        for label in summary["labels"]:
            entry = groups[group].get(label)
            if entry is None:
                continue
            cells = []
            for key, _ in TABLE_METRICS:
                m = entry["metrics"].get(key) or {}
                if m.get("mean") is None:
                    cells.append("n/a")
                    continue
                change = m.get("relative_change")
                tail = f" {100 * change:+.0f}%" if change is not None and label != ref else ""
                cells.append(f"{m['mean']:.3f} [{m['low']:.3f},{m['high']:.3f}]{tail}")
            print(f"  {label:12s}" + "".join(f"{c:>30s}" for c in cells))
    print_heads(summary)


def print_heads(summary: dict) -> None:
    """Why a correction can or cannot help: the heads against the expert on the reference's own drives."""
    ref = summary["reference_correction"]
    for group, entries in summary.get("heads", {}).items():
        s = entries.get(ref)
        if s is None or not (group == "overall" or group.startswith("weather:")):
            continue
        print(f"\nheads on {ref}'s drives ({group}), steering error against the expert's steer in the same state:"
              f" regression {s['regression_mae']:.4f}, classification {s['classification_mae']:.4f},"
              f" error correlation {s['error_correlation']:.3f}; picking the better head at every tick"
              f" would cut it by {100 * s['best_pick_cut']:.0f}% at most")
