"""Activations at the answer position of pro- and anti-stereotypical completions, for closed-form fits.

Each ambiguous item is run with its pro-stereotypical option appended to the prompt and with its
anti-stereotypical one; forward hooks record the chosen modules' outputs at the completion's last
token. For text items both completions of every item go into prefix trees (the scorer's packing), so
an item's prompt, and what items share, runs once. Closed-form methods (CAA, ITI, mean matching,
LEACE) fit their tensors from these. :class:`ActivationStore` keeps what was recorded, so fitting
several methods runs the model over the training items once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dso_cli.prefix_tree import pack
from dso_cli.scoring import OptionScorer
from dso_cli.steering.hooks import hooks_on, output_tensor

Item = Mapping[str, Any]


@contextmanager
def recording(
    model: nn.Module, outputs: Sequence[str] = (), inputs: Sequence[str] = ()
) -> Iterator[dict[tuple[str, str], Tensor]]:
    """Record the output of each module in ``outputs`` and the first input of each in ``inputs`` on every
    forward pass inside the block (the last pass wins), under keys ``("output"|"input", name)``."""
    seen: dict[tuple[str, str], Tensor] = {}

    def make(key: tuple[str, str]):
        def hook(module: nn.Module, args: tuple, output: Any = None) -> None:
            seen[key] = (args[0] if key[0] == "input" else output_tensor(output)).detach()

        return hook

    with (
        hooks_on(model, {name: ("output", name) for name in outputs}, make),
        hooks_on(model, {name: ("input", name) for name in inputs}, make, pre=True),
    ):
        yield seen


def usable_items(items: Sequence[Item]) -> list[Item]:
    """The ambiguous items with both a pro- and an anti-stereotypical option (the ones fits learn from)."""
    return [it for it in items if it["ambiguous"] and it["pro_option"] >= 0 and it["anti_option"] >= 0]


class ActivationStore:
    """Answer-position activations of the training completions, recorded once per module.

    Ask for everything several fits need with :meth:`prefetch` and the model runs over the items once;
    later requests for modules already recorded cost nothing. ``passes`` counts the runs over the items.
    """

    def __init__(self, scorer: OptionScorer, items: Sequence[Item], *, batch_size: int | None = None) -> None:
        self.scorer, self.items = scorer, usable_items(items)
        self.batch_size = batch_size or scorer.batch_size
        self.passes = 0
        self._recorded: dict[tuple[str, str], dict[str, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def prefetch(self, outputs: Sequence[str] = (), inputs: Sequence[str] = ()) -> None:
        """Record every module not recorded yet, all in one run over the items."""
        wanted = [("output", n) for n in outputs] + [("input", n) for n in inputs]
        missing = list(dict.fromkeys(key for key in wanted if key not in self._recorded))
        if not missing:
            return
        new = _collect(self.scorer, self.items, missing, self.batch_size)
        self.passes += 1
        for key in missing:
            self._recorded[key] = {kind: new[kind][key] for kind in ("pro", "anti")}

    def outputs(self, names: Sequence[str]) -> dict[str, dict[str, Tensor]]:
        """``{"pro"|"anti": {module: [n_items, hidden]}}`` of the modules' outputs."""
        return self._get("output", names)

    def inputs(self, names: Sequence[str]) -> dict[str, dict[str, Tensor]]:
        """As :meth:`outputs`, for the modules' first inputs (e.g. concatenated attention heads)."""
        return self._get("input", names)

    def _get(self, where: str, names: Sequence[str]) -> dict[str, dict[str, Tensor]]:
        self.prefetch(**{f"{where}s": names})
        return {kind: {n: self._recorded[(where, n)][kind] for n in names} for kind in ("pro", "anti")}


def completion_inputs(
    scorer: OptionScorer, items: Sequence[Item], names: Sequence[str], *, batch_size: int | None = None
) -> dict[str, dict[str, Tensor]]:
    """As :func:`completion_activations`, for the modules' inputs (e.g. concatenated attention heads)."""
    return ActivationStore(scorer, items, batch_size=batch_size).inputs(names)


def completion_activations(
    scorer: OptionScorer, items: Sequence[Item], names: Sequence[str], *, batch_size: int | None = None
) -> dict[str, dict[str, Tensor]]:
    """``{"pro"|"anti": {module: [n_items, hidden]}}`` at the last token of each completion (float32)."""
    return ActivationStore(scorer, items, batch_size=batch_size).outputs(names)


def _collect(
    scorer: OptionScorer, usable: Sequence[Item], keys: Sequence[tuple[str, str]], step: int
) -> dict[str, dict[tuple[str, str], Tensor]]:
    """One run over ``usable`` (pro completions, then anti) recording every ``(where, module)`` key."""
    if scorer.tree_applies([scorer.encode(item) for item in usable]):
        return _collect_in_trees(scorer, usable, keys)
    out: dict[str, dict[tuple[str, str], list[Tensor]]] = {kind: {k: [] for k in keys} for kind in ("pro", "anti")}
    starts = [(kind, start) for kind in ("pro", "anti") for start in range(0, len(usable), step)]
    bar = tqdm(starts, desc="activations", unit="batch", leave=False, disable=len(starts) < 4)
    outputs = [name for where, name in keys if where == "output"]
    inputs = [name for where, name in keys if where == "input"]
    with torch.no_grad(), scorer.kernels(), recording(scorer.model, outputs, inputs) as seen:
        for kind, start in bar:
            seqs, payloads = [], []
            for item in usable[start : start + step]:
                enc = scorer.encode(item)
                seqs.append(list(enc.prompt_ids) + list(enc.option_ids[item[f"{kind}_option"]]))
                payloads.append(enc.payload)  # a vision-language item's images
            _, lengths = scorer._forward(seqs, payloads=payloads)
            rows = torch.arange(len(seqs))
            for key in keys:
                hidden = seen[key]
                last = hidden[rows.to(hidden.device), (lengths - 1).to(hidden.device)]
                out[kind][key].append(last.float().cpu())
    return {kind: {k: torch.cat(v) if v else torch.empty(0) for k, v in per.items()} for kind, per in out.items()}


def _collect_in_trees(
    scorer: OptionScorer, usable: Sequence[Item], keys: Sequence[tuple[str, str]]
) -> dict[str, dict[tuple[str, str], Tensor]]:
    """As :func:`_collect`, with both completions of every item packed into prefix trees."""
    kinds = ("pro", "anti")
    completions = []
    for item in usable:
        enc = scorer.encode(item)
        completions.append((enc.prompt_ids, [enc.option_ids[item[f"{kind}_option"]] for kind in kinds]))
    rows, _ = pack(completions, scorer.tree_tokens, feed_last=True)
    found: dict[str, dict[tuple[str, str], list[Tensor]]] = {kind: {k: [] for k in keys} for kind in kinds}
    where: dict[str, list[int]] = {kind: [] for kind in kinds}  # item index of each recorded row
    outputs = [name for kind, name in keys if kind == "output"]
    inputs = [name for kind, name in keys if kind == "input"]
    bar = tqdm(rows, desc="activations", unit="tree", leave=False, disable=len(rows) < 4)
    with torch.no_grad(), scorer.kernels(), recording(scorer.model, outputs, inputs) as seen:
        for row in bar:
            scorer.forward_tree(row)
            for k, kind in enumerate(kinds):
                ends = [(node, item) for node, item, option in row.option_ends if option == k]
                where[kind] += [item for _, item in ends]
                for key in keys:
                    hidden = seen[key][0]
                    nodes = torch.tensor([node for node, _ in ends], device=hidden.device)
                    found[kind][key].append(hidden[nodes].float().cpu())
    out = {}
    for kind in kinds:
        order = torch.argsort(torch.tensor(where[kind]))
        out[kind] = {key: torch.cat(found[kind][key])[order] for key in keys}
    return out
