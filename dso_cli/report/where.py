"""Where the demographic signal lives and where a fitted method steers.

* :func:`signal_by_layer`: per decoder layer, the held-out accuracy of a linear probe (standardised
  logistic regression, folds that keep counterbalanced pairs together) that reads, from cached
  answer-position activations, the demographic group of the completion's option and whether the
  completion is the stereotypical one; beside it the norm of the CAA direction (mean anti − mean pro).
* :func:`affine_mass` / :func:`mass_fraction`: where an affine artifact (DSO, mean matching) puts its
  weight: |a| + |b| per layer and norm module, and how few neurons carry 90 % of it.
* :func:`head_norms` / :func:`vector_norms`: which attention heads ITI steers and which layers CAA does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from dso_cli.errors import DsoError
from dso_cli.steering.activation_cache import CacheEntry

LAYER_NUMBER = re.compile(r"\.(\d+)\.")


def probe_accuracy(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: int = 5) -> float:
    """Held-out accuracy of a logistic-regression probe, with all rows of a group in the same fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(folds, len(set(groups.tolist())))
    if folds < 2 or len(set(labels.tolist())) < 2:
        return math.nan
    correct = 0
    for train, test in GroupKFold(folds).split(features, labels, groups):
        classes = np.unique(labels[train])
        if len(classes) < 2:  # a fold that saw one class predicts it
            correct += int((labels[test] == classes[0]).sum())
            continue
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        probe.fit(features[train], labels[train])
        correct += int((probe.predict(features[test]) == labels[test]).sum())
    return correct / len(labels)


def chance(labels: np.ndarray) -> float:
    """Accuracy of always answering the most frequent label."""
    _, counts = np.unique(labels, return_counts=True)
    return float(counts.max() / counts.sum())


def layer_modules(entry: CacheEntry) -> list[str]:
    """The entry's decoder-layer outputs in forward order (its ``residual`` module set)."""
    residual = entry.manifest.get("module_sets", {}).get("residual")
    if not residual:
        raise DsoError(f"{entry.path}: probes read decoder-layer outputs; extract with extract.modules=[residual]")
    return list(residual)


def signal_by_layer(entry: CacheEntry, folds: int = 5) -> pd.DataFrame:
    """One row per layer: probe accuracies for the option's group and for pro vs anti, their chance
    levels, and the CAA direction's norm, from an answer-position entry."""
    if entry.manifest.get("positions") != "answer":
        raise DsoError(f"{entry.path}: probes read answer positions; this entry has {entry.manifest.get('positions')}")
    labels = entry.manifest.get("labels")
    if not labels:
        raise DsoError(f"{entry.path}: the manifest has no item labels (extract it with dso extract)")
    groups = np.array(labels["group"] * 2)
    option_group = np.array(labels["pro_group"] + labels["anti_group"])
    stereotypical = np.array([1] * len(labels["pro_group"]) + [0] * len(labels["anti_group"]))
    rows = []
    for layer, name in enumerate(layer_modules(entry)):
        recorded = entry.load([("output", name)])
        pro, anti = recorded.values["pro"][("output", name)], recorded.values["anti"][("output", name)]
        features = torch.cat([pro, anti]).double().numpy()
        rows.append(
            {
                "layer": layer,
                "module": name,
                "group_probe": probe_accuracy(features, option_group, groups, folds),
                "group_chance": chance(option_group),
                "stereotype_probe": probe_accuracy(features, stereotypical, groups, folds),
                "stereotype_chance": chance(stereotypical),
                "caa_norm": float((anti.double().mean(0) - pro.double().mean(0)).norm()),
            }
        )
    return pd.DataFrame(rows)


def _layer_and_kind(module: str) -> tuple[int | None, str]:
    """``model.layers.3.input_layernorm`` -> (3, "input_layernorm"); a module outside the layers -> (None, its name)."""
    found = LAYER_NUMBER.search(module + ".")
    if not found:
        return None, module.rsplit(".", 1)[-1]
    return int(found.group(1)), module[found.end() :].rstrip(".") or "output"


def affine_mass(tensors: Mapping[str, Tensor]) -> tuple[pd.DataFrame, Tensor]:
    """Per module: its layer, kind and total |a| + |b|; and every neuron's |a| + |b| (all modules)."""
    rows, neurons = [], []
    for key in sorted(k for k in tensors if k.endswith(".a")):
        module = key[: -len(".a")]
        mass = tensors[key].detach().float().abs() + tensors.get(f"{module}.b", torch.zeros(1)).detach().float().abs()
        layer, kind = _layer_and_kind(module)
        rows.append({"module": module, "layer": layer, "kind": kind, "mass": float(mass.sum()), "width": mass.numel()})
        neurons.append(mass.flatten())
    if not rows:
        raise DsoError("the artifact has no affine parameters (<module>.a / <module>.b)")
    return pd.DataFrame(rows), torch.cat(neurons)


def mass_fraction(neurons: Tensor, share: float = 0.9) -> float:
    """The smallest fraction of neurons whose |a| + |b| adds up to ``share`` of the total."""
    total = float(neurons.sum())
    if total == 0:
        return 0.0
    ordered = torch.sort(neurons.double(), descending=True).values.cumsum(0)
    needed = int(torch.searchsorted(ordered, torch.tensor(share * total, dtype=torch.float64))) + 1
    return min(needed, neurons.numel()) / neurons.numel()


def vector_norms(tensors: Mapping[str, Tensor]) -> pd.DataFrame:
    """Per steered module (CAA: decoder layers): its layer and the norm of its vector."""
    rows = []
    for key, vector in sorted(tensors.items()):
        layer, kind = _layer_and_kind(key.rsplit(".", 1)[0])
        rows.append({"module": key.rsplit(".", 1)[0], "layer": layer, "kind": kind, "norm": float(vector.norm())})
    return pd.DataFrame(rows)


def iti_heads(manifest: Mapping[str, Any]) -> pd.DataFrame:
    """ITI: the chosen heads (layer, head) and their probe accuracy, from the artifact's manifest."""
    rows = []
    for chosen in manifest.get("hyperparameters", {}).get("heads", []):
        layer, _ = _layer_and_kind(chosen["module"])
        rows.append({"layer": layer, "head": int(chosen["head"]), "probe_accuracy": float(chosen["probe_accuracy"])})
    return pd.DataFrame(rows, columns=["layer", "head", "probe_accuracy"])


def layer_order(layers: Sequence[Any]) -> list[int | None]:
    """Distinct layer numbers ascending, then None (modules outside the layers; NaN counts as None)."""
    values = [None if x is None or x != x else int(x) for x in layers]
    return sorted({x for x in values if x is not None}) + ([None] if None in values else [])
