"""Processors of vision-language models: ``AutoProcessor``, plus an image-only Qwen2.5-VL fallback.

Qwen2.5-VL's processor insists on a video processor, and transformers' only video processors need
torchvision. Decision items never contain video, so where torchvision is missing (CPU-only installs
with a torch build that has no matching torchvision wheel) the processor is rebuilt from the same
saved tokenizer, image processor and chat template without its video half. Everything an image
prompt needs (placeholder expansion, ``image_grid_thw``, ``mm_token_type_ids``) is inherited.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from transformers import ProcessorMixin
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the video processor (images and text only)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def load_processor(source: str, model_type: str, **kwargs: Any) -> Any:
    """The model's processor from a hub id or directory (image processors use PIL without torchvision)."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    if model_type in ("qwen2_5_vl", "qwen2_vl") and importlib.util.find_spec("torchvision") is None:
        tokenizer = AutoTokenizer.from_pretrained(os.path.expanduser(source), **kwargs)
        images = AutoImageProcessor.from_pretrained(os.path.expanduser(source), **kwargs)
        template = getattr(tokenizer, "chat_template", None) or _saved_template(source, **kwargs)
        return ImageOnlyQwen2_5_VLProcessor(images, tokenizer, chat_template=template)
    return AutoProcessor.from_pretrained(os.path.expanduser(source), **kwargs)


def _saved_template(source: str, **kwargs: Any) -> str | None:
    """The processor's ``chat_template.jinja`` (saved beside the tokenizer), local or from the hub."""
    from huggingface_hub import hf_hub_download

    local = os.path.join(os.path.expanduser(source), "chat_template.jinja")
    if os.path.isfile(local):
        with open(local, encoding="utf-8") as f:
            return f.read()
    try:
        path = hf_hub_download(source, "chat_template.jinja", revision=kwargs.get("revision"))
    except (OSError, ValueError):  # no such file in the repository, or offline without a cached copy
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()
