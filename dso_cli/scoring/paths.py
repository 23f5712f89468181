"""Batched scoring paths of the scorer (items that are not packed into prefix trees): one token per
option read off the last position, multi-token options continued from a shared prompt's KV cache, or
packed rows with a block mask."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import Tensor

from dso_cli.scoring.render import EncodedItem


class BatchedPaths:
    """Non-tree scoring paths, each a method of :class:`dso_cli.scoring.OptionScorer`."""

    # --- per-item rows ---------------------------------------------------------------------------
    def _score_batch(self, batch: list[EncodedItem], k_max: int) -> Tensor:
        if all(len(ids) == 1 for e in batch for ids in e.option_ids):
            return self._score_single_token(batch, k_max)
        return self._score_multi_token(batch, k_max)

    def _score_single_token(self, batch: list[EncodedItem], k_max: int) -> Tensor:
        hidden, lengths = self._forward([list(e.prompt_ids) for e in batch], payloads=[e.payload for e in batch])
        last = hidden[torch.arange(len(batch), device=hidden.device), lengths - 1]
        logprobs = self._log_softmax(last)
        out = torch.full((len(batch), k_max), float("-inf"), device=self.device)
        for row, e in enumerate(batch):
            ids = torch.tensor([ids[0] for ids in e.option_ids], device=logprobs.device)
            out[row, : len(ids)] = logprobs[row, ids].to(self.device)
        return out

    def _score_multi_token(self, batch: list[EncodedItem], k_max: int) -> Tensor:
        shareable = not any(e.payload for e in batch)  # image inputs would have to follow the cache
        if self.share_prompt and shareable and not self.full_forward and self._fits_window(batch):
            try:
                return self._score_shared_prompt(batch, k_max)
            except (TypeError, AttributeError, NotImplementedError):  # a model whose cache cannot be re-indexed
                self.share_prompt = False
        return self._score_packed(batch, k_max)

    def _fits_window(self, batch: Sequence[EncodedItem]) -> bool:
        """Sliding-window caches drop old positions, which breaks right-padded prompts that exceed the window."""
        return self._within_window(max(len(e.prompt_ids) + max(len(o) for o in e.option_ids) for e in batch))

    def _within_window(self, longest: int) -> bool:
        """A sequence of ``longest`` tokens fits the model's sliding window (or it has none)."""
        config = getattr(self.model.config, "text_config", None) or self.model.config
        window = getattr(config, "sliding_window", None)
        return window is None or longest < window

    def _score_shared_prompt(self, batch: list[EncodedItem], k_max: int) -> Tensor:
        """Run each prompt once; every option continues from the prompt's key/value cache.

        The last prompt position predicts every option's first token; only the tokens after the
        first go through a second, short forward pass over (item, option) rows that re-use the cache.
        """
        hidden, lengths, cache, mask = self._forward([list(e.prompt_ids) for e in batch], use_cache=True)
        rows = [(i, k) for i, e in enumerate(batch) for k in range(len(e.option_ids))]
        item = torch.tensor([i for i, _ in rows], device=hidden.device)
        first = torch.tensor([batch[i].option_ids[k][0] for i, k in rows], device=hidden.device)
        last = hidden[torch.arange(len(batch), device=hidden.device), lengths - 1]
        token_lp = [self._log_softmax(last)[item, first]]
        owner = [torch.arange(len(rows), device=hidden.device)]
        cont = [r for r, (i, k) in enumerate(rows) if len(batch[i].option_ids[k]) > 1]
        if cont:
            tails = [batch[rows[r][0]].option_ids[rows[r][1]] for r in cont]
            width = max(len(t) for t in tails) - 1
            ids = torch.zeros(len(cont), width, dtype=torch.long, device=self.device)
            tail_mask = torch.zeros(len(cont), width, dtype=torch.long, device=self.device)
            for c, tail in enumerate(tails):
                ids[c, : len(tail) - 1] = torch.tensor(tail[:-1], device=self.device)
                tail_mask[c, : len(tail) - 1] = 1
            source = item[cont].to(self.device)
            cache.reorder_cache(source)
            out = self.model.base_model(
                input_ids=ids,
                attention_mask=torch.cat([mask[source], tail_mask], dim=1),
                position_ids=lengths.to(self.device)[source][:, None] + torch.arange(width, device=self.device),
                use_cache=True,
                **{self._cache_argument(): cache},
            ).last_hidden_state
            targets = [(c, t, tok) for c, tail in enumerate(tails) for t, tok in enumerate(tail[1:])]
            t = torch.tensor(targets, device=out.device)
            token_lp.append(self._log_softmax(out[t[:, 0], t[:, 1]]).gather(1, t[:, 2:3])[:, 0])
            owner.append(torch.tensor([cont[c] for c, _, _ in targets], device=out.device))
        lp = torch.cat([x.to(self.device) for x in token_lp])
        who = torch.cat([x.to(self.device) for x in owner])
        flat = torch.tensor([i * k_max + k for i, k in rows], device=self.device)
        return self._option_scores(flat[who], lp, len(batch), k_max)

    def _cache_argument(self) -> str:
        """``cache`` (transformers >= 5.2x) or the older ``past_key_values``."""
        parameters = inspect.signature(self.model.base_model.forward).parameters
        return "cache" if "cache" in parameters else "past_key_values"

    def _score_packed(self, batch: list[EncodedItem], k_max: int) -> Tensor:
        """Every option appended to its own copy of the prompt: one forward over all of them."""
        seqs, targets = [], []  # targets: (seq index, position predicting the token, token id, item, option)
        payloads = []
        for i, e in enumerate(batch):
            for k, opt in enumerate(e.option_ids):
                s = len(seqs)
                seqs.append(list(e.prompt_ids) + list(opt))
                payloads.append(e.payload)
                p0 = len(e.prompt_ids) - 1
                targets += [(s, p0 + t, tok, i, k) for t, tok in enumerate(opt)]
        hidden, _ = self._forward(seqs, payloads=payloads)
        t = torch.tensor(targets, device=hidden.device)
        logprobs = self._log_softmax(hidden[t[:, 0], t[:, 1]])
        token_lp = logprobs.gather(1, t[:, 2:3]).squeeze(1).to(self.device)
        flat = t[:, 3].to(self.device) * k_max + t[:, 4].to(self.device)
        return self._option_scores(flat, token_lp, len(batch), k_max)
