"""Activations at the answer position of pro- and anti-stereotypical completions, for closed-form fits.

Each ambiguous item is run twice, once with its pro-stereotypical option appended to the prompt and
once with its anti-stereotypical one; forward hooks record the chosen modules' outputs at the
completion's last token. Closed-form methods (CAA, mean matching) fit their tensors from these.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dso_cli.scoring import OptionScorer

Item = Mapping[str, Any]


def output_tensor(output: Any) -> Tensor:
    """A module's hidden-state output (decoder layers may return a tuple whose first entry it is)."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def recording(model: nn.Module, names: Sequence[str], inputs: bool = False) -> Iterator[dict[str, Tensor]]:
    """Record the output (or, with ``inputs``, the first input) of each named module on every forward
    pass inside the block (the last pass wins)."""
    modules = dict(model.named_modules())
    seen: dict[str, Tensor] = {}
    hooks = []

    def make(name: str):
        def hook(module: nn.Module, args: tuple, output: Any = None) -> None:
            seen[name] = (args[0] if inputs else output_tensor(output)).detach()

        return hook

    try:
        for name in names:
            module = modules[name]
            register = module.register_forward_pre_hook if inputs else module.register_forward_hook
            hooks.append(register(make(name)))
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def completion_inputs(
    scorer: OptionScorer, items: Sequence[Item], names: Sequence[str], *, batch_size: int | None = None
) -> dict[str, dict[str, Tensor]]:
    """As :func:`completion_activations`, for the modules' inputs (e.g. concatenated attention heads)."""
    return completion_activations(scorer, items, names, batch_size=batch_size, inputs=True)


def completion_activations(
    scorer: OptionScorer,
    items: Sequence[Item],
    names: Sequence[str],
    *,
    batch_size: int | None = None,
    inputs: bool = False,
) -> dict[str, dict[str, Tensor]]:
    """``{"pro"|"anti": {module: [n_items, hidden]}}`` at the last token of each completion (float32)."""
    usable = [it for it in items if it["ambiguous"] and it["pro_option"] >= 0 and it["anti_option"] >= 0]
    out: dict[str, dict[str, list[Tensor]]] = {"pro": {n: [] for n in names}, "anti": {n: [] for n in names}}
    step = batch_size or scorer.batch_size
    starts = [(kind, start) for kind in ("pro", "anti") for start in range(0, len(usable), step)]
    bar = tqdm(starts, desc="activations", unit="batch", leave=False, disable=len(starts) < 4)
    with torch.no_grad(), recording(scorer.model, names, inputs=inputs) as seen:
        for kind, start in bar:
            seqs = []
            for item in usable[start : start + step]:
                enc = scorer.encode(item)
                seqs.append(list(enc.prompt_ids) + list(enc.option_ids[item[f"{kind}_option"]]))
            _, lengths = scorer._forward(seqs)
            rows = torch.arange(len(seqs))
            for name in names:
                hidden = seen[name]
                last = hidden[rows.to(hidden.device), (lengths - 1).to(hidden.device)]
                out[kind][name].append(last.float().cpu())
    return {kind: {n: torch.cat(v) for n, v in per.items()} for kind, per in out.items()}
