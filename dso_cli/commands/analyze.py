"""``dso analyze``: where the demographic signal lives, and where a fitted method steers.

``run_dir`` is a ``dso extract`` run (its cached answer-position activations give linear-probe
accuracy per layer beside the CAA direction's norm) and/or a ``dso train`` run (its artifact gives the
placement of the steering: |a| + |b| per layer and norm for DSO and mean matching, the layers of CAA,
the heads of ITI). Everything goes to ``<run_dir>/report/`` as CSV, PNG and a Markdown summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from dso_cli.errors import DsoError
from dso_cli.io import atomic_write, write_text
from dso_cli.pipeline.results import markdown_table
from dso_cli.pipeline.runs import save_provenance
from dso_cli.report.placement import steering_sections
from dso_cli.report.where import signal_by_layer
from dso_cli.report.where_plots import signal_plot
from dso_cli.steering.activation_cache import ActivationCache


def signal_section(root: Path, out_dir: Path, folds: int) -> str | None:
    """Probe accuracy per layer from the newest labelled answer-position entry under ``root``."""
    entries = [
        e
        for e in ActivationCache(root).entries()
        if e.manifest.get("positions") == "answer"
        and e.manifest.get("labels")
        and e.manifest.get("module_sets", {}).get("residual")
    ]
    if not entries:
        return None
    entry = entries[0]
    frame = signal_by_layer(entry, folds=folds)
    atomic_write(out_dir / "signal_by_layer.csv", lambda tmp: frame.to_csv(tmp, index=False))
    model = entry.manifest.get("model_name") or entry.manifest["model"]["name_or_path"].rsplit("/", 1)[-1]
    title = f"Where the signal lives: {model}, {entry.manifest.get('benchmark')}/{entry.manifest.get('split')}"
    signal_plot(frame, out_dir / "signal_by_layer.png", title)
    best = frame.loc[frame["stereotype_probe"].idxmax()]
    return "\n\n".join(
        [
            "## Where the signal lives",
            f"Linear probes on {entry.manifest['n_items']} items' answer-position activations "
            f"({folds}-fold, counterbalanced pairs held out together); ![signal](signal_by_layer.png)",
            markdown_table(frame.drop(columns=["module"]).to_dict("records"), list(frame.columns.drop("module"))),
            f"The stereotype probe peaks at layer {int(best['layer'])} ({best['stereotype_probe']:.3f}, chance "
            f"{best['stereotype_chance']:.3f}); the CAA direction is longest at layer "
            f"{int(frame.loc[frame['caa_norm'].idxmax(), 'layer'])}.",
        ]
    )


def run_analyze(cfg: DictConfig, overrides: Sequence[str] = ()) -> Path:
    if not cfg.run_dir:
        raise DsoError("dso analyze needs run_dir=<a dso extract run or a dso train run>")
    root = Path(cfg.run_dir)
    if not root.is_dir():
        raise DsoError(f"run_dir {root} does not exist")
    folds = int(cfg.analyze.folds)
    if folds < 2:
        raise DsoError(f"analyze.folds={cfg.analyze.folds}: needs at least 2 folds")
    out_dir = Path(cfg.analyze.out_dir) if cfg.analyze.out_dir else root / "report"
    parts = [f"# Where: {root}"]
    signal = signal_section(root, out_dir, folds)
    steering = steering_sections([root], out_dir)
    if signal is None and not steering:
        raise DsoError(f"{root} holds neither cached activations (dso extract) nor a trained artifact (dso train)")
    if signal:
        parts.append(signal)
    if steering:
        parts += ["## Where the method steers", "\n".join(steering)]
    text = "\n\n".join(parts) + "\n"
    write_text(out_dir / "where.md", text)
    save_provenance(out_dir, cfg, prefix="analyze_")
    print(text)
    print(f"dso analyze: wrote {out_dir}/where.md", flush=True)
    return out_dir
