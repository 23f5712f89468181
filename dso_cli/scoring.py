"""Batched option scoring: the policy over an item's options from one forward pass (the hot path).

``score(o | x) = Σ_t log p(o_t | x, o_<t)`` for every option of every item. When every option in a
batch is a single token, one forward over the prompts gives them all (the next-token distribution at
the last prompt position); otherwise the prompts run once and every option continues from its
prompt's key/value cache (``share_prompt``; or, for models whose cache cannot be shared, each option
is appended to its own copy of the prompt). Only the positions that predict option tokens go through
the output head, so the vocabulary projection costs one row per option token, not one per prompt
token. Text items go one better by default (``prefix_tree``): they are packed into prefix trees
(:mod:`dso_cli.prefix_tree`), so prompt tokens that items share (the chat template's system turn, a
scenario sentence) and the option tokens are all computed in one forward pass per tree, each once.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dso_cli.errors import DsoError
from dso_cli.models.linear_kernels import linear, linear_kernel, resolve_kernel
from dso_cli.models.multimodal import Payload, collate, needs_own_positions, payload_of
from dso_cli.prefix_tree import PackedRow, additive_mask, pack, tree_mask
from dso_cli.tree_attention import attention_implementation, chunked_tree_attention, plan_tree_attention

Item = Mapping[str, Any]


ACTIVE_INSTRUCTION: ContextVar[str | None] = ContextVar("dso_active_instruction", default=None)
"""An instruction prepended to every prompt while set (the ``prompting`` baseline sets it)."""


@dataclass(frozen=True, eq=False)
class EncodedItem:
    prompt_ids: tuple[int, ...]
    option_ids: tuple[tuple[int, ...], ...]
    payload: Payload | None = None  # the item's images, processed (vision-language models)


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


class OptionScorer:
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
        *,
        chat_template: bool = True,
        system_prompt: str | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        length_normalize: bool = False,
        batch_size: int = 16,
        share_prompt: bool = True,
        prefix_tree: bool = True,
        tree_tokens: int | str = "auto",
        tree_attention_chunk: int | str = "auto",
        cpu_linear: str = "auto",
        processor: Any = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        # a vision-language model's chat template (the one that places images) lives in its processor
        self.templater = processor if getattr(processor, "chat_template", None) else tokenizer
        self.use_chat_template = chat_template and getattr(self.templater, "chat_template", None) is not None
        self.system_prompt = system_prompt
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.length_normalize = length_normalize
        self.batch_size = batch_size
        self.share_prompt = share_prompt
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
        self.tree_tokens = _resolve_tree_tokens(tree_tokens, self.device)
        self.attention_chunk = _resolve_attention_chunk(tree_attention_chunk, self.device)
        self._attention_implementation = attention_implementation(model)
        self.prefix_tree = prefix_tree and self._tree_matches_rows()
        kernel = resolve_kernel(cpu_linear, model, self.tree_tokens)
        if kernel != "stock" and self._kernel_matches_stock(kernel):
            self.linear_kernel = kernel
        self.stats = ScoringStats()  # the checks above do not count

    # --- text -> token ids -------------------------------------------------------------------
    def render(self, item: Item) -> str:
        """The exact text the model sees before the options (with the active instruction, if any)."""
        instruction = ACTIVE_INSTRUCTION.get()
        prompt = f"{instruction}\n\n{item['prompt']}" if instruction else item["prompt"]
        n_images = len(item.get("images") or [])
        if n_images and self.processor is None:
            raise DsoError(f"item {item.get('id', '?')} has images, but this model is text-only")
        if not self.use_chat_template:
            if n_images:
                raise DsoError(
                    "image prompts need the model's chat template to place the images ; set scoring.chat_template=true"
                )
            return f"{prompt}\n\n{item['answer_prefix']}"
        messages: list[dict[str, Any]] = [{"role": "user", "content": self._content(prompt, n_images)}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self._content(self.system_prompt, 0)})
        try:
            text = self.templater.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
            )
        except Exception as exc:  # jinja raises its own errors, e.g. a template that rejects system turns
            raise DsoError(f"the chat template failed: {exc} (try scoring.system_prompt=null)") from None
        return text + item["answer_prefix"]

    def _content(self, text: str, n_images: int) -> str | list[dict[str, str]]:
        """Message content: a plain string for text templates, typed parts (images first) for processors."""
        if self.templater is self.tokenizer:
            return text
        return [{"type": "image"}] * n_images + [{"type": "text", "text": text}]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"]

    def encode(self, item: Item) -> EncodedItem:
        """Token ids of the prompt and of each option *as it continues the prompt*.

        Options are tokenised together with the prompt and split off after it, so tokenizers that
        mark word starts (SentencePiece's ``▁``) score exactly the text the model would produce. If
        a token straddles the boundary, the option is tokenised on its own instead.
        """
        images = tuple(str(ref) for ref in item.get("images") or ())
        key = (ACTIVE_INSTRUCTION.get() or "", item["prompt"], item["answer_prefix"], tuple(item["options"]), images)
        if key not in self._cache:
            text = self.render(item)
            prompt_ids = self._ids(text)  # with images: before the processor expands their placeholders
            option_ids = []
            for option in item["options"]:
                full = self._ids(text + option)
                if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
                    option_ids.append(tuple(full[len(prompt_ids) :]))
                else:
                    option_ids.append(tuple(self.tokenizer(option, add_special_tokens=False)["input_ids"]))
            if any(len(ids) == 0 for ids in option_ids):
                raise DsoError(f"item {item.get('id', '?')}: an option encodes to no tokens")
            payload = None
            if images:
                processed = self.processor(
                    text=[text], images=[load_images(item["images"])], add_special_tokens=False, return_tensors="pt"
                )
                prompt_ids, payload = processed["input_ids"][0].tolist(), payload_of(processed)
            self._cache[key] = EncodedItem(tuple(prompt_ids), tuple(option_ids), payload)
        return self._cache[key]

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

    def logprobs(self, items: Sequence[Item], *, grad: bool = False, progress: str | None = None) -> Tensor:
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
        with self.kernels():
            hidden, lengths = self._forward(seqs)
            return self._log_softmax(hidden), lengths

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

    def _probe_items(self) -> list[EncodedItem]:
        """Two short items that share a prefix, one with a two-token option: the start-up checks' input."""
        vocab = self.head.weight.shape[0]
        prompt = tuple((5 * i + 3) % vocab for i in range(7))
        return [
            EncodedItem(prompt, ((11 % vocab,), (13 % vocab, 17 % vocab))),
            EncodedItem((*prompt[:4], 19 % vocab), ((11 % vocab,), (23 % vocab,))),
        ]

    def _kernel_matches_stock(self, kernel: str) -> bool:
        """Do scores through linear ``kernel`` equal the stock kernel's on the probe (to 1e-4)?"""
        probe = self._probe_items()
        try:
            with torch.no_grad():
                stock = self._score(probe, False, None)
                self.linear_kernel = kernel
                with self.kernels():
                    ours = self._score(probe, False, None)
        except RuntimeError:
            return False
        finally:
            self.linear_kernel = "stock"
        return bool(torch.isfinite(ours).all() and (ours - stock).abs().max() <= 1e-4)

    def _tree_matches_rows(self) -> bool:
        """Does the tree path reproduce per-item rows on two items that share a prefix? Attention
        implementations that ignore custom masks (e.g. flash-attention) fail this and use rows. The
        chunked tree attention is checked the same way (in chunks of 3 nodes) and turned off if it fails."""
        probe = self._probe_items()
        with torch.no_grad():
            rows = self._score_packed(probe, 2)
        tolerance = 1e-4 if self.head.weight.dtype == torch.float32 else 0.1

        def tree_matches(chunk: int) -> bool:
            saved, self.attention_chunk = self.attention_chunk, chunk
            try:
                with torch.no_grad():
                    tree = self._score_tree(probe, 2, None)
            except Exception:  # any failure of the custom mask or the chunking means: do not use it
                return False
            finally:
                self.attention_chunk = saved
            return bool(torch.isfinite(tree).all() and (tree - rows).abs().max() <= tolerance)

        if not tree_matches(0):
            return False
        if self.attention_chunk and not tree_matches(3):
            self.attention_chunk = 0
        return True

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
        config = getattr(self.model.config, "text_config", None) or self.model.config
        window = getattr(config, "sliding_window", None)
        longest = max(len(e.prompt_ids) + max(len(o) for o in e.option_ids) for e in batch)
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

    def _shortcut_matches_model(self) -> bool:
        """Does backbone + head reproduce ``model(...).logits`` on a short input?"""
        if not isinstance(self.head, torch.nn.Linear):
            return False
        vocab = self.head.weight.shape[0]
        ids = [[(7 * i + 3) % vocab for i in range(6)]]
        self.full_forward = False
        try:
            with torch.no_grad():
                hidden, _ = self._forward(ids)
                ours = self._log_softmax(hidden[:, -1])
                theirs = torch.log_softmax(
                    self.model(input_ids=torch.tensor(ids, device=self.device)).logits[:, -1].float(), -1
                )
        except (AttributeError, TypeError, ValueError, RuntimeError):
            return False
        tolerance = 1e-3 if self.head.weight.dtype == torch.float32 else 0.25
        return bool((ours.to(theirs.device) - theirs).abs().max() <= tolerance)


def _resolve_tree_tokens(value: int | str, device: torch.device) -> int:
    """``auto``: 512 nodes per tree on CPU (attention over a longer tree costs more than the sharing
    saves), 4096 on accelerators, where wider matrix products pay and attention is cheap."""
    if value == "auto":
        return 512 if device.type == "cpu" else 4096
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise DsoError(f"scoring.tree_tokens={value!r}: must be a positive integer or 'auto'")
    return value


def _resolve_attention_chunk(value: int | str, device: torch.device) -> int:
    """``auto``: query chunks of 128 tree nodes on CPU, 1024 on accelerators; 0 turns chunking off
    (dense attention under the tree mask)."""
    if value == "auto":
        return 128 if device.type == "cpu" else 1024
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DsoError(f"scoring.tree_attention_chunk={value!r}: must be a non-negative integer or 'auto'")
    return value


def load_images(refs: Sequence[Any]) -> list[Any]:
    """PIL images (RGB) from paths, or the images themselves."""
    from PIL import Image

    images = []
    for ref in refs:
        if isinstance(ref, Image.Image):
            images.append(ref.convert("RGB"))
            continue
        try:
            with Image.open(ref) as image:
                images.append(image.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise DsoError(f"cannot read image {ref}: {exc}") from None
    return images
