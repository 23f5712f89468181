"""Batched option scoring: the policy over an item's options from one forward pass (the hot path).

``score(o | x) = Σ_t log p(o_t | x, o_<t)`` for every option of every item. When every option in a
batch is a single token, one forward over the prompts gives them all (the next-token distribution at
the last prompt position); otherwise each option is appended to its prompt and all options of the
batch run together. Only the positions that predict option tokens go through the output head, so the
vocabulary projection costs one row per option token, not one per prompt token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dso_cli.errors import DsoError

Item = Mapping[str, Any]


@dataclass(frozen=True)
class EncodedItem:
    prompt_ids: tuple[int, ...]
    option_ids: tuple[tuple[int, ...], ...]


def policy(logprobs: Tensor) -> Tensor:
    """Row-wise softmax of option scores; padded options (``-inf``) get probability 0."""
    return torch.softmax(logprobs, dim=-1)


class OptionScorer:
    """Scores decision items with a causal LM; hooks on the model (steering) act on every call."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        chat_template: bool = True,
        system_prompt: str | None = None,
        length_normalize: bool = False,
        batch_size: int = 16,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.use_chat_template = chat_template and getattr(tokenizer, "chat_template", None) is not None
        self.system_prompt = system_prompt
        self.length_normalize = length_normalize
        self.batch_size = batch_size
        self.backbone = model.base_model
        self.head = model.get_output_embeddings()
        if self.head is None:
            raise DsoError(f"{type(model).__name__} has no output head to score options with")
        config = getattr(model.config, "text_config", None) or model.config
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.logit_scale = getattr(config, "logit_scale", None)
        self._cache: dict[tuple[str, str, tuple[str, ...]], EncodedItem] = {}

    # --- text -> token ids -------------------------------------------------------------------
    def render(self, item: Item) -> str:
        """The exact text the model sees before the options."""
        if not self.use_chat_template:
            return f"{item['prompt']}\n\n{item['answer_prefix']}"
        messages = [{"role": "user", "content": item["prompt"]}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + item["answer_prefix"]

    def encode(self, item: Item) -> EncodedItem:
        key = (item["prompt"], item["answer_prefix"], tuple(item["options"]))
        if key not in self._cache:
            text = self.render(item)
            prompt_ids = self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"]
            option_ids = tuple(
                tuple(self.tokenizer(opt, add_special_tokens=False)["input_ids"]) for opt in item["options"]
            )
            if any(len(ids) == 0 for ids in option_ids):
                raise DsoError(f"item {item.get('id', '?')}: an option encodes to no tokens")
            self._cache[key] = EncodedItem(tuple(prompt_ids), option_ids)
        return self._cache[key]

    # --- scoring --------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def logprobs(self, items: Sequence[Item], *, grad: bool = False, progress: str | None = None) -> Tensor:
        """Option log-probabilities ``[n_items, max_options]`` (float32, ``-inf`` where no option).

        Items are scored in length-sorted batches and returned in input order. With ``grad=True`` the
        result stays in the autograd graph (for training steering parameters).
        """
        encoded = [self.encode(item) for item in items]
        n, k_max = len(encoded), max((len(e.option_ids) for e in encoded), default=0)
        out = torch.full((n, k_max), float("-inf"), device=self.device)
        order = sorted(range(n), key=lambda i: len(encoded[i].prompt_ids))
        chunks = [order[s : s + self.batch_size] for s in range(0, n, self.batch_size)]
        bar = tqdm(chunks, desc=progress, unit="batch", leave=False, disable=progress is None)
        with torch.set_grad_enabled(grad):
            rows = []
            for chunk in bar:
                rows.append(self._score_batch([encoded[i] for i in chunk], k_max))
            if rows:
                index = torch.tensor([i for chunk in chunks for i in chunk], device=self.device)
                out = out.index_copy(0, index, torch.cat(rows))
        return out

    def _score_batch(self, batch: list[EncodedItem], k_max: int) -> Tensor:
        if all(len(ids) == 1 for e in batch for ids in e.option_ids):
            return self._score_single_token(batch, k_max)
        return self._score_multi_token(batch, k_max)

    def _score_single_token(self, batch: list[EncodedItem], k_max: int) -> Tensor:
        hidden, lengths = self._forward([list(e.prompt_ids) for e in batch])
        last = hidden[torch.arange(len(batch), device=hidden.device), lengths - 1]
        logprobs = self._log_softmax(last)
        out = torch.full((len(batch), k_max), float("-inf"), device=self.device)
        for row, e in enumerate(batch):
            ids = torch.tensor([ids[0] for ids in e.option_ids], device=logprobs.device)
            out[row, : len(ids)] = logprobs[row, ids].to(self.device)
        return out

    def _score_multi_token(self, batch: list[EncodedItem], k_max: int) -> Tensor:
        seqs, targets = [], []  # targets: (seq index, position predicting the token, token id, item, option)
        for i, e in enumerate(batch):
            for k, opt in enumerate(e.option_ids):
                s = len(seqs)
                seqs.append(list(e.prompt_ids) + list(opt))
                p0 = len(e.prompt_ids) - 1
                targets += [(s, p0 + t, tok, i, k) for t, tok in enumerate(opt)]
        hidden, _ = self._forward(seqs)
        t = torch.tensor(targets, device=hidden.device)
        logprobs = self._log_softmax(hidden[t[:, 0], t[:, 1]])
        token_lp = logprobs.gather(1, t[:, 2:3]).squeeze(1).to(self.device)
        flat = t[:, 3].to(self.device) * k_max + t[:, 4].to(self.device)
        sums = torch.zeros(len(batch) * k_max, device=self.device).index_add(0, flat, token_lp)
        if self.length_normalize:
            counts = torch.zeros(len(batch) * k_max, device=self.device).index_add(0, flat, torch.ones_like(token_lp))
            sums = sums / counts.clamp(min=1)
        present = torch.zeros(len(batch) * k_max, dtype=torch.bool, device=self.device)
        present[flat] = True
        return sums.masked_fill(~present, float("-inf")).view(len(batch), k_max)

    def _forward(self, seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
        """Right-padded forward through the backbone; returns last hidden states and lengths."""
        lengths = torch.tensor([len(s) for s in seqs], device=self.device)
        width = int(lengths.max())
        input_ids = torch.zeros(len(seqs), width, dtype=torch.long, device=self.device)
        for row, s in enumerate(seqs):
            input_ids[row, : len(s)] = torch.tensor(s, device=self.device)
        mask = (torch.arange(width, device=self.device)[None, :] < lengths[:, None]).long()
        positions = torch.arange(width, device=self.device)[None, :].expand(len(seqs), -1)
        out = self.backbone(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False)
        return out.last_hidden_state, lengths.to(out.last_hidden_state.device)

    def _log_softmax(self, hidden: Tensor) -> Tensor:
        weight_device = next(self.head.parameters()).device
        logits = self.head(hidden.to(weight_device)).float()
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return torch.log_softmax(logits, dim=-1)
