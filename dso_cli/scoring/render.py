"""Rendering for the scorer: the text a model sees before the options (chat template, images, an active
instruction) and each option's token ids as it continues that text, cached per item."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from dso_cli.benchmarks.schema import DecisionItem
from dso_cli.errors import DsoError
from dso_cli.models.multimodal import Payload, payload_of


@dataclass(frozen=True, eq=False)
class EncodedItem:
    prompt_ids: tuple[int, ...]
    option_ids: tuple[tuple[int, ...], ...]
    payload: Payload | None = None  # the item's images, processed (vision-language models)


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


class PromptRendering:
    """Text -> token ids, a part of :class:`dso_cli.scoring.OptionScorer` (its model, tokenizer, processor
    and templater are set by the scorer's constructor)."""

    @contextmanager
    def instructed(self, instruction: str | None) -> Iterator[None]:
        """Prepend ``instruction`` to every prompt rendered inside the block (None: the plain prompts);
        how a method that steers prompts (``prompting``) applies."""
        before, self.instruction = self.instruction, instruction
        try:
            yield
        finally:
            self.instruction = before

    # --- text -> token ids -------------------------------------------------------------------
    def render(self, item: DecisionItem) -> str:
        """The exact text the model sees before the options (with the active instruction, if any)."""
        instruction = self.instruction
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

    def encode(self, item: DecisionItem) -> EncodedItem:
        """Token ids of the prompt and of each option *as it continues the prompt*.

        Options are tokenised together with the prompt and split off after it, so tokenizers that
        mark word starts (SentencePiece's ``▁``) score exactly the text the model would produce. If
        a token straddles the boundary, the option is tokenised on its own instead.
        """
        images = tuple(str(ref) for ref in item.get("images") or ())
        key = (self.instruction or "", item["prompt"], item["answer_prefix"], tuple(item["options"]), images)
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
