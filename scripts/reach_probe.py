"""Per-occupation pronoun preference of a trained run at ω = 0 and 1: how the association moved.

`assoc_r` is a correlation, unchanged by any shrink of P(she) towards .5; this prints what moved and what
did not. Per split: the slope of P₁ − ½ on P₀ − ½ over occupations (the shrink), their correlation,
the correlation of P(she) with the occupations' female share and with the ±1 stereotype direction,
and the mean P(she) of female-majority occupations minus that of male-majority ones (a measure with a
scale), then each held-out occupation.

    python scripts/reach_probe.py RUN_DIR [SPLIT ...]     (default splits: test heldout_occupations)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from dso_cli.benchmarks import build_benchmark, split_items
from dso_cli.benchmarks.occupations import load_occupations
from dso_cli.benchmarks.pronoun_probes import ASSOCIATION, association_probes
from dso_cli.pipeline.runs import ARTIFACT_DIR, load_train_config
from dso_cli.pipeline.setup import load_scored_model
from dso_cli.pipeline.specs import ModelSetup
from dso_cli.scoring import OptionScorer, policy
from dso_cli.steering.artifact import Artifact


def per_occupation(scorer: OptionScorer, artifact: Artifact, items: list[dict]) -> tuple[list[str], dict]:
    probes = [p for p in association_probes(items) if p["question_type"] == ASSOCIATION]
    names = sorted({p["cluster"] for p in probes})
    she = {}
    for strength in (0.0, 1.0):
        with artifact.apply(scorer.model, strength):
            p_she = policy(scorer.logprobs(probes))[:, 1].numpy()
        she[strength] = np.array([p_she[[p["cluster"] == n for p in probes]].mean() for n in names])
    return names, she


def main(argv: list[str]) -> None:
    run = Path(argv[0])
    splits = argv[1:] or ["test", "heldout_occupations"]
    cfg = load_train_config(run)
    setup = ModelSetup.from_config(cfg)  # the model and scorer the run's sweep used
    artifact = Artifact.load(run / ARTIFACT_DIR)
    data = build_benchmark(cfg.bias_benchmark, setup.model)
    _, scorer = load_scored_model(setup)
    share = {o.name: o.female_share for o in load_occupations()}
    for split in splits:
        names, she = per_occupation(scorer, artifact, split_items(data, split))
        base, steered = she[0.0], she[1.0]
        female = np.array([share[n] for n in names])
        sign = np.where(female > 0.5, 1.0, -1.0)
        slope, intercept = np.polyfit(base - 0.5, steered - 0.5, 1)
        diff = [p[sign > 0].mean() - p[sign < 0].mean() for p in (base, steered)]
        print(f"{split}: {len(names)} occupations")
        print(
            f"  P1 - .5 = {slope:.3f} (P0 - .5) + {intercept:.3f}; corr(P0, P1) {np.corrcoef(base, steered)[0, 1]:.3f}"
        )
        for label, target in (("female share", female), ("direction", sign)):
            r0, r1 = (np.corrcoef(p, target)[0, 1] for p in (base, steered))
            print(f"  corr with {label}: {r0:.3f} -> {r1:.3f}")
        print(f"  P(she) female- minus male-majority: {diff[0]:.3f} -> {diff[1]:.3f} ({diff[1] / diff[0]:.2f}x)")
        if split != "test":
            for name, p0, p1 in zip(names, base, steered, strict=True):
                print(f"    {name:24s} share {share[name]:.2f}  P(she) {p0:.3f} -> {p1:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
