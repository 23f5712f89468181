"""The full-vocabulary KL(steered ‖ base) per token on the KL passages and prompts: the training
objective's guard on general text, as the mean over sequences of each sequence's mean over the
positions that predict a token.

:func:`packed_text_kl` runs the steered model over prefix trees (a prefix the sequences share, such
as the chat template's system turn, once; no padding) and the output head once per distinct node,
weighting each node by the sequences through it; :func:`padded_text_kl` is the same number from
right-padded rows (the fallback, and earlier versions' step). The base targets come from the base
model's hidden states of each sequence, so both give the same value and gradients up to float rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dso_cli.scoring import OptionScorer


def text_kl(scorer: OptionScorer, seqs: list[list[int]], base: list[Tensor], packed: bool = True) -> Tensor:
    """The loss (with gradients for the steering) given the base model's hidden states of each sequence
    (:meth:`~dso_cli.rl.batches.BaseCache.text_hidden`): packed where the scorer's trees apply."""
    if packed and scorer.sequence_trees_apply(seqs):
        return packed_text_kl(scorer, seqs, base)
    return padded_text_kl(scorer, seqs, base)


def padded_text_kl(scorer: OptionScorer, seqs: list[list[int]], base: list[Tensor]) -> Tensor:
    """Right-padded rows through the steered model, the head on every position."""
    width = max(len(s) for s in seqs)
    with torch.no_grad():
        padded = [torch.nn.functional.pad(h, (0, 0, 0, width - len(h))) for h in base]
        target = scorer.head_logprobs(torch.stack(padded))
    logp, lengths = scorer.token_logprobs(seqs)
    per_token = (logp.exp() * (logp - target)).sum(-1)  # [batch, width]
    mask = torch.arange(width, device=per_token.device)[None, :] < (lengths[:, None] - 1).to(per_token.device)
    return ((per_token * mask).sum(1) / mask.sum(1).clamp_min(1)).mean()


def packed_text_kl(scorer: OptionScorer, seqs: list[list[int]], base: list[Tensor]) -> Tensor:
    """Prefix trees through the steered model, the head on each distinct predicting node once."""
    total = torch.zeros((), device=scorer.device)
    for hidden, paths in scorer.sequence_trees(seqs):
        weight: dict[int, float] = {}
        source: dict[int, tuple[int, int]] = {}  # node -> (sequence, position) whose base state it takes
        for index, nodes in paths:
            share = 1.0 / (len(seqs) * (len(nodes) - 1))
            for position, node in enumerate(nodes[:-1]):  # the last position predicts nothing
                weight[node] = weight.get(node, 0.0) + share
                source.setdefault(node, (index, position))
        keep = sorted(weight)
        logp = scorer.head_logprobs(hidden[keep])
        with torch.no_grad():
            target = scorer.head_logprobs(torch.stack([base[s][t] for s, t in (source[n] for n in keep)]))
        weights = torch.tensor([weight[n] for n in keep], device=logp.device)
        total = total + (weights * (logp.exp() * (logp - target)).sum(-1)).sum()
    return total
