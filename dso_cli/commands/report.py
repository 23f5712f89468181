"""``dso report``: Pareto table and plot from one or several runs' ``sweep.csv``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from dso_cli.io import atomic_write, write_text
from dso_cli.pipeline.results import markdown_table
from dso_cli.pipeline.runs import runs_under, save_provenance
from dso_cli.pipeline.specs import RunLocation
from dso_cli.pipeline.trained_run import resolve_run_dir
from dso_cli.report.groups import group_rates_plot, group_rates_table, load_group_rates
from dso_cli.report.placement import steering_sections
from dso_cli.report.plots import pareto_plot
from dso_cli.report.tables import curve_summary, load_sweeps, pareto_points, verdicts

GROUPS_NOTE = (
    "On ambiguous items, the mean probability of each group's options over the items that offer it "
    '(a fair policy gives every person group the same rate; `unknown` is the "can\'t tell" answer), '
    "at the base model and at each method's largest strength (groups.png)."
)


def run_report(cfg: DictConfig, overrides: Sequence[str] = ()) -> Path:
    entries = [Path(r) for r in cfg.runs] if cfg.runs else [resolve_run_dir(RunLocation.from_config(cfg))]
    runs = [run for entry in entries for run in runs_under(entry)]  # a multirun folder: each of its runs
    out_dir = Path(cfg.report.out_dir) if cfg.report.out_dir else entries[0] / "report"
    split = cfg.report.split
    data = load_sweeps(runs, split)
    points, summary = pareto_points(data), curve_summary(data)

    atomic_write(out_dir / "pareto.csv", lambda tmp: points.to_csv(tmp, index=False))
    benchmark = ", ".join(sorted(data["benchmark"].unique()))
    text = "\n\n".join(
        [
            f"# Fairness vs capability: {benchmark}, split {split}",
            markdown_table(points.to_dict("records"), shown_columns(points)),
            "## Per curve",
            markdown_table(summary.to_dict("records"), list(summary.columns)),
            "POB: Per-Occupation Bias (soft, lower is fairer), pob_se its bootstrap standard error; "
            "item_bias: mean over ambiguous items of |P(pro) - P(anti)| (0 only when every decision is 50/50); "
            "first_option_rate: share of ambiguous items whose argmax is the person listed first; order_dep: "
            "per counterbalanced pair, |P(X | X listed first) - P(X | X listed second)|, averaged; "
            "fair_by_position: POB fell while item_bias or order_dep rose by more than 2 standard errors "
            '(a position rule, not a fair decision); refusal_rate: mass on a "can\'t tell" option; '
            "unamb_acc: expected accuracy on unambiguous items (unamb_acc_hard: argmax), and split by whether "
            "the correct person is the stereotyped one (unamb_acc_pro / unamb_acc_anti) and listed first or "
            "second (unamb_acc_first / unamb_acc_second): a model that reads the evidence has all four close "
            "together; not_reading: unambiguous accuracy at the largest strength within 2 standard errors "
            "of a coin between the people (50/50 everywhere ignores the evidence); kl: "
            "KL(steered || base) over the two options of unambiguous items (not a capability measure); "
            "text_kl, text_ppl: full-vocabulary per-token KL to the base model and perplexity on held-out "
            "neutral text never used in training; prompt_kl: the same KL on the split's own prompts; "
            "ppl_ratio_at_max: text_ppl at the largest strength over the base model's. on_front: "
            "Pareto-optimal over (POB, accuracy) among all points. hypervolume: area of (POB, accuracy) "
            "dominated by a curve up to the base model's POB and accuracy 0. monotone: POB never rises "
            "from one strength to the next by more than 2 standard errors. n_seeds: the runs behind a point "
            "(runs that differ only in their seed are one curve, their mean); <metric>_seed_sd: the metric's "
            "standard deviation over those seeds, beside the bootstrap SE (the mean of the runs' SEs).",
        ]
    )
    text += "\n\n## Summary\n\n" + "\n".join(f"- {line}" for line in verdicts(summary))
    steering = steering_sections(runs, out_dir)
    if steering:
        text += "\n\n## Where each method steers\n\n" + "\n".join(steering)
    written = ["pareto.csv", "pareto.md", "pareto.png"]
    rates = load_group_rates(runs, split)
    if not rates.empty:
        group_rates_plot(rates, out_dir / "groups.png")
        text += "\n\n## Selection rate per group\n\n" + GROUPS_NOTE + "\n\n" + group_rates_table(rates)
        written.append("groups.png")
    write_text(out_dir / "pareto.md", text + "\n")
    pareto_plot(data, out_dir / "pareto.png", f"{benchmark} ({split})")
    save_provenance(out_dir, cfg, prefix="report_", extra={"runs": [str(r) for r in runs]})  # never a run's own files
    print(text)
    print(f"\ndso report: wrote {', '.join(str(out_dir / name) for name in written)}", flush=True)
    return out_dir


def shown_columns(points) -> list[str]:
    """The printed table's columns: the seed columns only where some curve averages several seeds."""
    seeds = "n_seeds" in points and points["n_seeds"].max() > 1
    return [c for c in points.columns if seeds or not (c == "n_seeds" or c.endswith("_seed_sd"))]
