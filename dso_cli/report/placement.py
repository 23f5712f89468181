"""Where an artifact steers, as one Markdown line and a PNG, drawn the way its method declares
(:attr:`SteeringMethod.placement`: ``affine``, ``vector`` or ``heads``) for ``dso analyze`` and ``dso report``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dso_cli.errors import DsoError
from dso_cli.pipeline.runs import ARTIFACT_DIR, TRAIN_CONFIG, load_train_config
from dso_cli.report.where import affine_mass, iti_heads, mass_fraction, vector_norms
from dso_cli.report.where_plots import affine_heatmap, head_heatmap, vector_plot
from dso_cli.steering.artifact import MANIFEST, Artifact


def affine_placement(artifact: Artifact, out_dir: Path, name: str) -> str:
    """|a| + |b| per layer and norm: how concentrated an affine artifact is, and where."""
    png = f"steering_{name}.png"
    modules, neurons = affine_mass(artifact.tensors)
    fraction = mass_fraction(neurons)
    affine_heatmap(modules, out_dir / png, f"{artifact.method}: Σ|a|+|b| per layer and norm")
    top = modules.nlargest(3, "mass")
    share = ", ".join(f"{r.module} ({r.mass / modules['mass'].sum():.1%})" for r in top.itertuples())
    return (
        f"- **{artifact.method}** ({name}): {fraction:.1%} of its {neurons.numel()} neurons carry 90 % of "
        f"Σ|a|+|b|; the largest modules: {share}. ![{name}]({png})"
    )


def vector_placement(artifact: Artifact, out_dir: Path, name: str) -> str:
    """The layers an additive steering vector is added at, with their norms."""
    png = f"steering_{name}.png"
    vectors = vector_norms(artifact.tensors)
    vector_plot(vectors, out_dir / png, f"{artifact.method}: steered layers")
    layers = ", ".join(f"{r.layer} (‖v‖ {r.norm:.3g})" for r in vectors.itertuples())
    return f"- **{artifact.method}** ({name}): layer {layers}. ![{name}]({png})"


def head_placement(artifact: Artifact, out_dir: Path, name: str) -> str:
    """The attention heads a head-shift artifact moves, with their probe accuracy."""
    png = f"steering_{name}.png"
    heads = iti_heads(artifact.manifest)
    head_heatmap(heads, out_dir / png, f"{artifact.method}: steered heads (probe accuracy)")
    chosen = ", ".join(f"L{r.layer}.h{r.head}" for r in heads.itertuples())
    return f"- **{artifact.method}** ({name}): {len(heads)} heads: {chosen}. ![{name}]({png})"


DRAWINGS = {"affine": affine_placement, "vector": vector_placement, "heads": head_placement}
"""How each placement a method may declare (:data:`dso_cli.steering.method.PLACEMENTS`) is drawn."""


def steering_section(artifact: Artifact, out_dir: Path, name: str) -> str:
    """One line (and a PNG) on where ``artifact`` steers, drawn as its method declares."""
    try:
        kind = artifact.method_class().placement
    except DsoError:  # a method of a package not imported here
        kind = None
    if kind is None:
        return f"- **{artifact.method}** ({name}): no placement to show (not a per-module method)."
    return DRAWINGS[kind](artifact, out_dir, name)


def steering_sections(runs: Sequence[Path], out_dir: Path) -> list[str]:
    """Where each run's artifact steers (runs without an artifact are skipped)."""
    lines = []
    for run in runs:
        if (run / ARTIFACT_DIR / MANIFEST).is_file():
            if (run / TRAIN_CONFIG).is_file():
                load_train_config(run)  # registers a (trusted) method of the user's package
            artifact = Artifact.load(run / ARTIFACT_DIR)
            name = artifact.method if len(runs) == 1 else f"{artifact.method}_{run.name}"
            lines.append(steering_section(artifact, out_dir, name))
    return lines
