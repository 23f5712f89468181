"""Tiny random vision-language models of the four supported families, built offline from configs.

Each family gets a small vision tower (28×28 images, 14-pixel patches), a two- or three-layer text
tower, a byte-level BPE tokenizer trained on the occupation prompts with the family's special tokens,
its real processor class (PIL image processing) and a minimal chat template that emits the family's
image placeholder. Weights that a fresh model initialises so that images have no effect (Gemma-3's
projection, Mllama's cross-attention gates) are re-initialised so tests can see images matter.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from dso_cli.models.processors import ImageOnlyQwen2_5_VLProcessor

VLM_FAMILIES = ("llava", "qwen2_5_vl", "gemma3", "mllama")
IMAGE_SIZE, PATCH = 28, 14

SPECIALS = [
    "<pad>", "<image>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
    "<image_soft_token>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<|image|>", "<eos>",
]  # fmt: skip

_CONTENT = (
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}IMAGE{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
)
TEMPLATES = {
    "llava": "{% for m in messages %}{{ m['role'] | upper }}: " + _CONTENT.replace("IMAGE", "<image>\n") + "\n"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}",
    "qwen2_5_vl": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    + _CONTENT.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>")
    + "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    "gemma3": "<bos>{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    + _CONTENT.replace("IMAGE", "<start_of_image>")
    + "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
    "mllama": "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    + _CONTENT.replace("IMAGE", "<|image|>")
    + "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{% endif %}",
}


def _bpe(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from dso_cli.benchmarks.occupation import build

    splits = build(n_train=64, n_train_unambiguous=32, test_pairs_per_occupation=1, val_pairs_per_occupation=1)
    corpus = [row["prompt"] + " " + row["answer_prefix"] + " A B" for row in splits["test"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    return tok


def build_vlm_tokenizer(family: str, bpe=None):
    from transformers import PreTrainedTokenizerFast

    bpe = bpe or _bpe()
    extra = {
        "llava": {"image_token": "<image>", "eos_token": "<eos>"},
        "qwen2_5_vl": {"image_token": "<|image_pad|>", "eos_token": "<|im_end|>"},
        "gemma3": {
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "bos_token": "<bos>",
            "eos_token": "<eos>",
        },
        "mllama": {"image_token": "<|image|>", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    }[family]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", **extra)
    tokenizer.chat_template = TEMPLATES[family]
    return tokenizer


def tiny_vlm_config(family: str, tokenizer):
    from transformers import (
        CLIPVisionConfig,
        Gemma3Config,
        Gemma3TextConfig,
        LlamaConfig,
        LlavaConfig,
        MllamaConfig,
        MllamaTextConfig,
        MllamaVisionConfig,
        Qwen2_5_VLConfig,
        SiglipVisionConfig,
    )
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig, Qwen2_5_VLVisionConfig

    ids = tokenizer.convert_tokens_to_ids
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                pad_token_id=ids("<pad>"))  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    if family == "llava":
        return LlavaConfig(
            vision_config=CLIPVisionConfig(**vision, image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=32),
            text_config=LlamaConfig(**text, tie_word_embeddings=False),
            image_token_index=ids("<image>"),
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            image_seq_length=4,
        )
    if family == "qwen2_5_vl":
        text_config = Qwen2_5_VLTextConfig(
            **text,
            bos_token_id=ids("<|im_start|>"),
            eos_token_id=ids("<|im_end|>"),
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 1, 1]},
        )
        vision_config = Qwen2_5_VLVisionConfig(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=PATCH,
            spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1],
        )  # fmt: skip
        return Qwen2_5_VLConfig(
            text_config=text_config.to_dict(),
            vision_config=vision_config.to_dict(),
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
        )
    if family == "gemma3":
        return Gemma3Config(
            text_config=Gemma3TextConfig(**text, head_dim=8, sliding_window=512).to_dict(),
            vision_config=SiglipVisionConfig(
                **vision, image_size=IMAGE_SIZE, patch_size=PATCH, vision_use_head=False
            ).to_dict(),
            mm_tokens_per_image=4,
            boi_token_index=ids("<start_of_image>"),
            eoi_token_index=ids("<end_of_image>"),
            image_token_index=ids("<image_soft_token>"),
        )
    if family == "mllama":
        vision_config = MllamaVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=4,
            image_size=IMAGE_SIZE, patch_size=PATCH, max_num_tiles=1, supported_aspect_ratios=[[1, 1]],
            intermediate_layers_indices=[0], vision_output_dim=64,
        )  # fmt: skip
        text_config = MllamaTextConfig(
            **{**text, "num_hidden_layers": 3},
            cross_attention_layers=[1],
            bos_token_id=ids("<|begin_of_text|>"),
            eos_token_id=ids("<|eot_id|>"),
        )
        return MllamaConfig(
            vision_config=vision_config.to_dict(),
            text_config=text_config.to_dict(),
            image_token_index=ids("<|image|>"),
        )
    raise ValueError(family)


def build_vlm_processor(family: str, tokenizer):
    from transformers import (
        Gemma3Processor,
        LlavaProcessor,
        MllamaProcessor,
        Qwen2_5_VLProcessor,
    )
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    template = TEMPLATES[family]
    if family == "llava":
        images = LlavaImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size=square)
        return LlavaProcessor(images, tokenizer, patch_size=PATCH, vision_feature_select_strategy="default",
                              num_additional_image_tokens=1, chat_template=template)  # fmt: skip
    if family == "qwen2_5_vl":
        images = Qwen2VLImageProcessorPil(size={"shortest_edge": 28 * 28 * 4, "longest_edge": 56 * 56},
                                          patch_size=PATCH, temporal_patch_size=2, merge_size=2)  # fmt: skip
        if importlib.util.find_spec("torchvision") is None:
            return ImageOnlyQwen2_5_VLProcessor(images, tokenizer, chat_template=template)
        from transformers import Qwen2VLVideoProcessor

        return Qwen2_5_VLProcessor(images, tokenizer, Qwen2VLVideoProcessor(), chat_template=template)
    if family == "gemma3":
        return Gemma3Processor(Gemma3ImageProcessorPil(size=square), tokenizer, chat_template=template,
                               image_seq_length=4)  # fmt: skip
    if family == "mllama":
        images = MllamaImageProcessorPil(size=square, max_image_tiles=1)
        return MllamaProcessor(images, tokenizer, chat_template=template)
    raise ValueError(family)


def build_tiny_vlm(family: str, seed: int = 0, bpe=None):
    """(model, processor) of a tiny random VLM of ``family``, in eval mode with frozen weights."""
    from transformers import AutoModelForImageTextToText

    tokenizer = build_vlm_tokenizer(family, bpe)
    processor = build_vlm_processor(family, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(tiny_vlm_config(family, tokenizer))
    with torch.no_grad():  # weights a fresh model zeroes, which would make images irrelevant
        if family == "gemma3":
            model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.5)
        if family == "mllama":
            for name, param in model.named_parameters():
                if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                    param.fill_(1.0)
    return model.eval().requires_grad_(False), processor


def save_tiny_vlm(family: str, path: Path, bpe=None) -> Path:
    model, processor = build_tiny_vlm(family, bpe=bpe)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
