"""Batched option scoring: the policy over an item's options from one forward pass (the hot path).

``score(o | x) = Σ_t log p(o_t | x, o_<t)`` for every option of every item. When every option in a
batch is a single token, one forward over the prompts gives them all (the next-token distribution at
the last prompt position); otherwise the prompts run once and every option continues from its
prompt's key/value cache (``share_prompt``; or, for models whose cache cannot be shared, each option
is appended to its own copy of the prompt). Only the positions that predict option tokens go through
the output head, so the vocabulary projection costs one row per option token, not one per prompt
token. Text items go one better by default (``prefix_tree``): they are packed into prefix trees
(:mod:`dso_cli.scoring.prefix_tree`), so prompt tokens that items share (the chat template's system turn, a
scenario sentence) and the option tokens are all computed in one forward pass per tree, each once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dso_cli.benchmarks.schema import DecisionItem
from dso_cli.errors import DsoError
from dso_cli.models.linear_kernels import linear, linear_kernel, resolve_kernel
from dso_cli.models.multimodal import Payload, collate, needs_own_positions
from dso_cli.scoring.checks import StartupChecks, _resolve_attention_chunk, _resolve_tree_tokens
from dso_cli.scoring.options import ScoringOptions
from dso_cli.scoring.paths import BatchedPaths
from dso_cli.scoring.prefix_tree import PackedRow, additive_mask, pack, tree_mask
from dso_cli.scoring.render import EncodedItem, PromptRendering
from dso_cli.scoring.tree_attention import attention_implementation, chunked_tree_attention, plan_tree_attention


@dataclass
class ScoringStats:
    """Work done by a scorer's forward passes, for throughput and FLOP accounting (padding excluded)."""

    forward_calls: int = 0
    tokens: int = 0  # token positions run through the backbone
    attended_pairs: int = 0  # query-key pairs attention needed (causal / tree structure)
    head_rows: int = 0  # positions sent through the output head

    def add(self, tokens: int, attended_pairs: int, head_rows: int) -> None:
        self.forward_calls += 1
        self.tokens += tokens
        self.attended_pairs += attended_pairs
        self.head_rows += head_rows


def policy(logprobs: Tensor) -> Tensor:
    """Row-wise softmax of option scores; padded options (``-inf``) get probability 0."""
    return torch.softmax(logprobs, dim=-1)


class OptionScorer(PromptRendering, BatchedPaths, StartupChecks):
    """Scores decision items with a causal LM; hooks on the model (steering) act on every call.

    Scores come from the backbone's last hidden states and the output head applied only where an
    option token is predicted. At construction the scorer checks that shortcut against the model's own
    logits on a short input; a model whose head does something else (extra scaling, a custom head)
    falls back to full forward passes, which are always correct but slower. In reduced precision the
    head runs in float32, so bfloat16 rounding does not blur small differences between options.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        options: ScoringOptions | None = None,
        *,
        processor: Any = None,
        **overrides: Any,
    ) -> None:
        """``options`` (default: :class:`ScoringOptions`) with any of its fields replaced by
        ``overrides``, e.g. ``OptionScorer(model, tokenizer, prefix_tree=False)``."""
        options = ScoringOptions.from_mapping({**vars(options or ScoringOptions()), **overrides})
        self.options = options
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        # a vision-language model's chat template (the one that places images) lives in its processor
        self.templater = processor if getattr(processor, "chat_template", None) else tokenizer
        has_template = getattr(self.templater, "chat_template", None) is not None
        self.use_chat_template = options.chat_template and has_template
        self.system_prompt = options.system_prompt
        self.instruction: str | None = None  # prepended to every prompt while set (see instructed)
        self.chat_template_kwargs = dict(options.chat_template_kwargs)
        self.length_normalize = options.length_normalize
        self.batch_size = options.batch_size
        self.share_prompt = options.share_prompt
        self.head = model.get_output_embeddings()
        if self.head is None:
            raise DsoError(f"{type(model).__name__} has no output head to score options with")
        config = getattr(model.config, "text_config", None) or model.config
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.logit_scale = getattr(config, "logit_scale", None)
        self._head_fp32: tuple[Tensor, Tensor | None] | None = None
        self._cache: dict[tuple[str, str, str, tuple[str, ...]], EncodedItem] = {}
        self.stats = ScoringStats()
        self.linear_kernel = "stock"  # the start-up checks run on stock kernels
        self.full_forward = not self._shortcut_matches_model()
        self.tree_tokens = _resolve_tree_tokens(options.tree_tokens, self.device)
        self.attention_chunk = _resolve_attention_chunk(options.tree_attention_chunk, self.device)
        self._attention_implementation = attention_implementation(model)
        self.prefix_tree = options.prefix_tree and self._tree_matches_rows()
        kernel = resolve_kernel(options.cpu_linear, model, self.tree_tokens)
        if kernel != "stock" and self._kernel_matches_stock(kernel):
            self.linear_kernel = kernel
        self.stats = ScoringStats()  # the checks above do not count

    # --- scoring --------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The scoring paths in use after the start-up checks (recorded beside results: they move
        scores by rounding only, but a reader should know which ran)."""
        return {
            "prefix_tree": self.prefix_tree,
            "tree_tokens": self.tree_tokens,
            "tree_attention_chunk": self.attention_chunk if self.prefix_tree else None,
            "linear_kernel": self.linear_kernel,
            "full_forward": self.full_forward,
        }

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def logprobs(self, items: Sequence[DecisionItem], *, grad: bool = False, progress: str | None = None) -> Tensor:
        """Option log-probabilities ``[n_items, max_options]`` (float32, ``-inf`` where no option).

        Items are scored in length-sorted batches and returned in input order. With ``grad=True`` the
        result stays in the autograd graph (for training steering parameters).
        """
        encoded = [self.encode(item) for item in items]
        with self.kernels():
            return self._score(encoded, grad, progress)

    def _score(self, encoded: list[EncodedItem], grad: bool, progress: str | None) -> Tensor:
        n, k_max = len(encoded), max((len(e.option_ids) for e in encoded), default=0)
        if self.tree_applies(encoded):
            with torch.set_grad_enabled(grad):
                return self._score_tree(encoded, k_max, progress)
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

    def token_logprobs(self, seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
        """Next-token log-probabilities ``[batch, width, vocab]`` (float32) of right-padded ``seqs``, and
        their lengths: the language-modelling view of the same forward pass, for perplexity and KL."""
        hidden, lengths = self.token_hidden(seqs)
        return self.head_logprobs(hidden), lengths

    def token_hidden(self, seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
        """The last hidden states ``[batch, width, hidden]`` of right-padded ``seqs`` (the logits when
        :attr:`full_forward`) and their lengths: :meth:`token_logprobs` before the output head, small
        enough to keep (a trainer caches the base model's)."""
        with self.kernels():
            return self._forward(seqs)

    def head_logprobs(self, hidden: Tensor) -> Tensor:
        """Full-vocabulary log-probabilities (float32) of hidden states from :meth:`token_hidden`."""
        with self.kernels():
            return self._log_softmax(hidden)

    def kernels(self) -> AbstractContextManager[None]:
        """The block's no-grad forward passes run their linear layers through the chosen CPU kernel
        (``scoring.cpu_linear``, see :mod:`dso_cli.models.linear_kernels`); anything else is unchanged."""
        return linear_kernel(self.model, self.linear_kernel)

    # --- the prefix-tree path (text items) ------------------------------------------------------
    def tree_applies(self, encoded: Sequence[EncodedItem]) -> bool:
        """Text items on a model whose attention takes a custom mask, all within its sliding window."""
        if not self.prefix_tree or not encoded or any(e.payload for e in encoded):
            return False
        return self._fits_window(encoded)

    def _score_tree(self, encoded: Sequence[EncodedItem], k_max: int, progress: str | None) -> Tensor:
        """Every option of every item from one forward pass per packed prefix tree."""
        rows, _ = pack([(e.prompt_ids, e.option_ids) for e in encoded], self.tree_tokens)
        token_lp, slots = [], []
        for row in tqdm(rows, desc=progress, unit="tree", leave=False, disable=progress is None):
            hidden = self.forward_tree(row)
            t = torch.tensor(row.targets, device=hidden.device)
            token_lp.append(self._log_softmax(hidden[t[:, 0]]).gather(1, t[:, 1:2])[:, 0].to(self.device))
            slots.append((t[:, 2] * k_max + t[:, 3]).to(self.device))
        return self._option_scores(torch.cat(slots), torch.cat(token_lp), len(encoded), k_max)

    def sequence_trees_apply(self, seqs: Sequence[Sequence[int]]) -> bool:
        """:meth:`sequence_trees` can run ``seqs``: prefix trees are on, the attention takes a custom
        mask, and every sequence fits the model's sliding window."""
        return self.prefix_tree and bool(seqs) and self._within_window(max(map(len, seqs)))

    def sequence_trees(self, seqs: Sequence[Sequence[int]]) -> Iterator[tuple[Tensor, list[tuple[int, list[int]]]]]:
        """Token sequences packed into prefix trees, one forward pass per tree: per tree, the hidden
        states of its nodes (the logits in fallback mode) and, per sequence it holds, ``(index in seqs,
        node of each position)``. A prefix that sequences share runs once, and no padding runs at all;
        each node's state is the one its sequence's own forward pass gives."""
        rows, _ = pack([(seq, []) for seq in seqs], self.tree_tokens)
        with self.kernels():
            for row in rows:
                yield self.forward_tree(row), [(index, row.path_nodes(seqs[index])) for index in row.items]

    def _option_scores(self, slot: Tensor, token_lp: Tensor, n_items: int, k_max: int) -> Tensor:
        """``[n_items, k_max]`` option scores from per-token log-probs and their ``item * k_max + option``
        slots: summed (or averaged with ``length_normalize``), ``-inf`` where an item has no such option."""
        sums = torch.zeros(n_items * k_max, device=self.device).index_add(0, slot, token_lp)
        counts = torch.zeros(n_items * k_max, device=self.device).index_add(0, slot, torch.ones_like(token_lp))
        if self.length_normalize:
            sums = sums / counts.clamp(min=1)
        return sums.masked_fill(counts == 0, float("-inf")).view(n_items, k_max)

    def forward_tree(self, row: PackedRow) -> Tensor:
        """Hidden states (or, in fallback mode, logits) ``[nodes, ·]`` of one packed tree: each node sees
        itself and its ancestors at position = depth, exactly as in its own item's forward pass."""
        dtype = self.head.weight.dtype if self.head.weight.is_floating_point() else torch.float32
        mask = tree_mask(row.parents)
        inputs = {
            "input_ids": torch.tensor([row.tokens], device=self.device),
            "position_ids": torch.tensor([row.depths], device=self.device),
            "attention_mask": additive_mask(mask, dtype, self.device),
            "use_cache": False,
        }
        self.stats.add(len(row), row.attended_pairs(), len(row.targets))
        attention: AbstractContextManager[None] = nullcontext()
        if 0 < self.attention_chunk < len(row):
            plan = plan_tree_attention(mask, self.attention_chunk, self._attention_implementation, dtype, self.device)
            attention = chunked_tree_attention(self.model, plan)
        with attention:
            if self.full_forward:
                return self.model(**inputs).logits[0]
            return self.model.base_model(**inputs).last_hidden_state[0]

    def _forward(
        self, seqs: list[list[int]], use_cache: bool = False, payloads: Sequence[Payload | None] | None = None
    ) -> Any:
        """Right-padded forward; returns the last hidden states (or, in fallback mode, the logits) and the
        lengths, plus the key/value cache and the attention mask with ``use_cache``. ``payloads[r]``:
        row ``r``'s processed images (vision-language models)."""
        lengths = torch.tensor([len(s) for s in seqs], device=self.device)
        width = int(lengths.max())
        input_ids = torch.zeros(len(seqs), width, dtype=torch.long, device=self.device)
        for row, s in enumerate(seqs):
            input_ids[row, : len(s)] = torch.tensor(s, device=self.device)
        mask = (torch.arange(width, device=self.device)[None, :] < lengths[:, None]).long()
        positions = torch.arange(width, device=self.device)[None, :].expand(len(seqs), -1)
        inputs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions, "use_cache": use_cache}
        images = collate(self.model, input_ids, lengths, payloads, self.head.weight.dtype) if payloads else {}
        if images and needs_own_positions(self.model):
            del inputs["position_ids"]
        inputs |= images
        self.stats.add(int(lengths.sum()), int((lengths * (lengths + 1) // 2).sum()), 0)
        if self.full_forward:
            out = self.model(**inputs).logits
            return out, lengths.to(out.device)
        result = self.model.base_model(**inputs)
        out = result.last_hidden_state
        if use_cache:
            cache = result.cache if "cache" in result else result.past_key_values
            return out, lengths.to(out.device), cache, mask
        return out, lengths.to(out.device)

    def _log_softmax(self, hidden: Tensor) -> Tensor:
        if self.full_forward:
            return torch.log_softmax(hidden.float(), dim=-1)
        weight, bias = self._head_weights()
        logits = linear(hidden.to(weight.device, weight.dtype), weight, bias, self.linear_kernel).float()
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return torch.log_softmax(logits, dim=-1)

    def _head_weights(self) -> tuple[Tensor, Tensor | None]:
        """The output head's weight and bias, upcast to float32 once when the model is not float32."""
        weight, bias = self.head.weight, getattr(self.head, "bias", None)
        if weight.dtype == torch.float32:
            return weight, bias
        if self._head_fp32 is None:
            self._head_fp32 = (weight.detach().float(), None if bias is None else bias.detach().float())
        return self._head_fp32
