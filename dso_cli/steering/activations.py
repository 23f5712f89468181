"""Activations at the answer position of pro- and anti-stereotypical completions, for closed-form fits.

Each ambiguous item is run with its pro-stereotypical option appended to the prompt and with its
anti-stereotypical one; forward hooks record the chosen modules' outputs at the completion's last
token. For text items both completions of every item go into prefix trees (the scorer's packing), so
an item's prompt, and what items share, runs once. Closed-form methods (CAA, ITI, mean matching,
LEACE) fit their tensors from these. :class:`ActivationStore` keeps what was recorded, so fitting
several methods runs the model over the training items once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dso_cli.benchmarks.schema import DecisionItem, options_name_people
from dso_cli.errors import DsoError
from dso_cli.scoring import OptionScorer
from dso_cli.scoring.prefix_tree import pack
from dso_cli.steering.hooks import hooks_on, output_tensor

if TYPE_CHECKING:
    from dso_cli.steering.activation_cache import ActivationCache


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


def usable_items(items: Sequence[DecisionItem]) -> list[DecisionItem]:
    """The ambiguous items with both a pro- and an anti-stereotypical option (the ones fits learn from)
    whose options name the people: a completion " A" or " Yes" stands for either person."""
    return [it for it in items if it["ambiguous"] and it["pro_option"] >= 0 and it["anti_option"] >= 0
            and options_name_people(it)]  # fmt: skip


class ActivationStore:
    """Answer-position activations of the training completions, recorded once per module.

    Ask for everything several fits need with :meth:`prefetch` and the model runs over the items once;
    later requests for modules already recorded cost nothing. ``passes`` counts the runs over the items.
    With a ``cache`` (:class:`~dso_cli.steering.activation_cache.ActivationCache`, e.g. the folder of a
    ``dso extract`` run) a request is read from disk when one entry for the same model, items and
    rendering holds every module it asks for; otherwise it is recorded (all of its modules) and written
    there as a new entry for the next process.
    """

    def __init__(
        self,
        scorer: OptionScorer,
        items: Sequence[DecisionItem],
        *,
        batch_size: int | None = None,
        cache: ActivationCache | None = None,
        benchmark: str = "",
        split: str = "",
    ) -> None:
        self.scorer, self.items = scorer, usable_items(items)
        self.batch_size = batch_size or scorer.batch_size
        self.passes = 0
        self.cache = cache
        self.cache_request = cache.request(scorer, self.items, benchmark=benchmark, split=split) if cache else None
        self.cache_log: list[str] = []  # one line per cache read or write, for the commands to print
        self._recorded: dict[tuple[str, str], dict[str, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def prefetch(self, outputs: Sequence[str] = (), inputs: Sequence[str] = ()) -> None:
        """Record every module not recorded yet, all in one run over the items."""
        wanted = [("output", n) for n in outputs] + [("input", n) for n in inputs]
        missing = list(dict.fromkeys(key for key in wanted if key not in self._recorded))
        if not missing:
            return
        if not self.items:
            raise DsoError(
                "this method learns from the stereotyped and counter-stereotyped answers of ambiguous items, "
                "and no training item states a stereotype direction (bias.attribute=race does not): train "
                "steering_method=dso, whose rewards need none, or give a decisions file with `stereotyped`"
            )
        if self.cache is not None and self.cache_request is not None:
            recorded, entry, hit = self.cache.get(
                self.cache_request, missing, len(self.items), lambda span: self._record(missing, span)
            )
            new = recorded.values
            self.cache_log.append(f"activations: {'read from' if hit else 'recorded into'} {entry.path}")
        else:
            new, hit = self._record(missing, range(len(self.items))).values, False
        self.passes += not hit
        for key in missing:
            self._recorded[key] = {kind: new[kind][key] for kind in ("pro", "anti")}

    def _record(self, keys: Sequence[tuple[str, str]], span: range) -> Recorded:
        return collect(self.scorer, self.items[span.start : span.stop], keys, self.batch_size)

    def outputs(self, names: Sequence[str]) -> dict[str, dict[str, Tensor]]:
        """``{"pro"|"anti": {module: [n_items, hidden]}}`` of the modules' outputs."""
        return self._get("output", names)

    def inputs(self, names: Sequence[str]) -> dict[str, dict[str, Tensor]]:
        """As :meth:`outputs`, for the modules' first inputs (e.g. concatenated attention heads)."""
        return self._get("input", names)

    def _get(self, where: str, names: Sequence[str]) -> dict[str, dict[str, Tensor]]:
        self.prefetch(**{f"{where}s": names})
        return {kind: {n: self._recorded[(where, n)][kind] for n in names} for kind in ("pro", "anti")}


def completion_activations(
    scorer: OptionScorer, items: Sequence[DecisionItem], names: Sequence[str], *, batch_size: int | None = None
) -> dict[str, dict[str, Tensor]]:
    """``{"pro"|"anti": {module: [n_items, hidden]}}`` at the last token of each completion (float32)."""
    return ActivationStore(scorer, items, batch_size=batch_size).outputs(names)


POSITIONS = ("answer", "last_prompt", "all")
"""Token positions to record: the completion's last token (what the closed-form fits use), the
prompt's last token (before any option), or every token of each completion (prompt included)."""


def position_kinds(positions: str) -> tuple[str, ...]:
    """The recorded sets: the two completions, or the prompt they share."""
    return ("prompt",) if positions == "last_prompt" else ("pro", "anti")


@dataclass
class Recorded:
    """``values[kind][(where, module)]``: ``[rows, hidden]`` float32, items in order; ``counts[kind]``:
    rows per item (1, except for ``positions="all"``)."""

    values: dict[str, dict[tuple[str, str], Tensor]]
    counts: dict[str, Tensor]


def _picked(positions: str, prompt_len: int, length: int) -> list[int]:
    """Indices into a completion of ``length`` tokens whose prompt has ``prompt_len``."""
    if positions == "answer":
        return [length - 1]
    if positions == "last_prompt":
        return [prompt_len - 1]
    return list(range(length))


def collect(
    scorer: OptionScorer,
    usable: Sequence[DecisionItem],
    keys: Sequence[tuple[str, str]],
    step: int,
    positions: str = "answer",
) -> Recorded:
    """One run over ``usable`` recording every ``(where, module)`` key at ``positions``."""
    if positions not in POSITIONS:
        raise DsoError(f"positions={positions!r}: expected one of {', '.join(POSITIONS)}")
    if scorer.tree_applies([scorer.encode(item) for item in usable]):
        return _collect_in_trees(scorer, usable, keys, positions)
    kinds = position_kinds(positions)
    out: dict[str, dict[tuple[str, str], list[Tensor]]] = {kind: {k: [] for k in keys} for kind in kinds}
    counts: dict[str, list[int]] = {kind: [] for kind in kinds}
    starts = [(kind, start) for kind in kinds for start in range(0, len(usable), step)]
    bar = tqdm(starts, desc="activations", unit="batch", leave=False, disable=len(starts) < 4)
    outputs = [name for where, name in keys if where == "output"]
    inputs = [name for where, name in keys if where == "input"]
    with torch.no_grad(), scorer.kernels(), recording(scorer.model, outputs, inputs) as seen:
        for kind, start in bar:
            seqs, payloads, rows, picks = [], [], [], []
            for item in usable[start : start + step]:
                enc = scorer.encode(item)
                option = enc.option_ids[item["anti_option" if kind == "anti" else "pro_option"]]
                picked = _picked(positions, len(enc.prompt_ids), len(enc.prompt_ids) + len(option))
                rows += [len(seqs)] * len(picked)
                picks += picked
                counts[kind].append(len(picked))
                seqs.append(list(enc.prompt_ids) + list(option))
                payloads.append(enc.payload)  # a vision-language item's images
            scorer._forward(seqs, payloads=payloads)
            for key in keys:
                hidden = seen[key]
                index = (torch.tensor(rows, device=hidden.device), torch.tensor(picks, device=hidden.device))
                out[kind][key].append(hidden[index].float().cpu())
    values = {kind: {k: torch.cat(v) if v else torch.empty(0) for k, v in per.items()} for kind, per in out.items()}
    return Recorded(values, {kind: torch.tensor(c, dtype=torch.long) for kind, c in counts.items()})


def _collect_in_trees(
    scorer: OptionScorer, usable: Sequence[DecisionItem], keys: Sequence[tuple[str, str]], positions: str
) -> Recorded:
    """As :func:`collect`, with both completions of every item packed into prefix trees."""
    kinds = position_kinds(positions)
    completions, prompt_lens = [], []
    for item in usable:
        enc = scorer.encode(item)
        prompt_lens.append(len(enc.prompt_ids))
        options = ("pro", "anti")
        completions.append((enc.prompt_ids, [enc.option_ids[item[f"{kind}_option"]] for kind in options]))
    rows, _ = pack(completions, scorer.tree_tokens, feed_last=True)
    found: dict[str, dict[tuple[str, str], list[Tensor]]] = {kind: {k: [] for k in keys} for kind in kinds}
    owner: dict[str, list[int]] = {kind: [] for kind in kinds}  # item index of each recorded row
    outputs = [name for kind, name in keys if kind == "output"]
    inputs = [name for kind, name in keys if kind == "input"]
    bar = tqdm(rows, desc="activations", unit="tree", leave=False, disable=len(rows) < 4)
    with torch.no_grad(), scorer.kernels(), recording(scorer.model, outputs, inputs) as seen:
        for row in bar:
            scorer.forward_tree(row)
            for k, kind in enumerate(kinds):  # "prompt" reads the pro completion's path
                nodes = []
                for end, item, option in row.option_ends:
                    if option != k:
                        continue
                    path = [end] if positions == "answer" else _ancestry(row.parents, end)
                    picked = [-1] if positions == "answer" else _picked(positions, prompt_lens[item], len(path))
                    nodes += [path[i] for i in picked]
                    owner[kind] += [item] * len(picked)
                for key in keys:
                    hidden = seen[key][0]
                    found[kind][key].append(hidden[torch.tensor(nodes, device=hidden.device)].float().cpu())
    values, counts = {}, {}
    for kind in kinds:
        items = torch.tensor(owner[kind], dtype=torch.long)
        order = torch.argsort(items, stable=True)  # an item's rows stay in token order
        values[kind] = {key: torch.cat(found[kind][key])[order] for key in keys}
        counts[kind] = torch.bincount(items, minlength=len(usable))
    return Recorded(values, counts)


def _ancestry(parents: Sequence[int], node: int) -> list[int]:
    """The nodes from the root to ``node``: one completion's tokens in a packed tree."""
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]
