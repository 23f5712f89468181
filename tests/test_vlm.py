"""Vision-language models: text-tower norms only, image prompts scored per item, batching exact."""

import pytest
import torch
from PIL import Image

from dso_cli.models.layouts import find_decoder_layers, find_head_projections, find_norm_modules
from dso_cli.models.loading import load_model
from dso_cli.scoring import OptionScorer, policy
from dso_cli.steering.affine import apply_affine, init_affine_params
from tests.vlm_fixtures import VLM_FAMILIES, _bpe, build_tiny_vlm, save_tiny_vlm

TEXT_TOWER = "model.language_model."


@pytest.fixture(scope="module")
def bpe():
    return _bpe()


@pytest.fixture(scope="module", params=VLM_FAMILIES)
def vlm(request, bpe):
    model, processor = build_tiny_vlm(request.param, bpe=bpe)
    return request.param, model, processor


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    paths = []
    for i, (color, size) in enumerate([((220, 30, 30), (28, 28)), ((30, 200, 40), (40, 30)), ((20, 20, 210), (28, 50)),
                                        ((240, 240, 240), (32, 32))]):  # fmt: skip
        image = Image.new("RGB", size, color)
        for x in range(0, size[0], 3):  # a little structure, so patches differ
            image.putpixel((x, x % size[1]), (x * 7 % 255, 90, 160))
        path = root / f"person{i}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def items(images):
    question = "Which of these two people is the {}? Answer with A for the left and B for the right person."
    return [
        {"id": "a", "prompt": question.format("doctor"), "answer_prefix": "Answer:", "options": [" A", " B"],
         "images": [images[0], images[1]]},
        {"id": "b", "prompt": question.format("nurse"), "answer_prefix": "Answer:", "options": [" A", " B"],
         "images": [images[2], images[3]]},
        {"id": "c", "prompt": question.format("secretary of the board"), "answer_prefix": "Answer:",
         "options": [" A", " B"], "images": [images[1], images[0]]},
    ]  # fmt: skip


def scorer_for(model, processor, batch_size=8):
    return OptionScorer(model, processor.tokenizer, processor=processor, batch_size=batch_size)


def test_norms_heads_and_layers_are_in_the_text_tower_only(vlm):
    family, model, _ = vlm
    norms = find_norm_modules(model)
    assert norms and all(name.startswith(TEXT_TOWER) for name in norms)
    layers = model.config.text_config.num_hidden_layers
    per_layer = 4 if family == "gemma3" else 2
    assert len(norms) == per_layer * layers + 1  # every decoder layer's norms and the final norm
    assert not any(name.endswith(("q_norm", "k_norm")) for name in norms)
    assert set(norms.values()) == {model.config.text_config.hidden_size}
    assert all(name.startswith(TEXT_TOWER) for name in find_decoder_layers(model))
    heads, n_heads = find_head_projections(model)
    assert all(name.startswith(TEXT_TOWER) for name in heads) and n_heads == 4


def test_batched_image_prompts_equal_each_alone_and_images_matter(vlm, images):
    _, model, processor = vlm
    scorer = scorer_for(model, processor)
    batch = items(images)
    together = scorer.logprobs(batch)
    alone = torch.cat([scorer_for(model, processor, batch_size=1).logprobs([item]) for item in batch])
    assert torch.isfinite(together).all() and together.shape == (3, 2)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    swapped = dict(batch[0], images=[images[2], images[3]])
    assert not torch.allclose(scorer.logprobs([swapped]), together[:1], atol=1e-4)
    # full forward passes (no backbone + head shortcut) give the same scores
    scorer.full_forward = True
    torch.testing.assert_close(scorer.logprobs(batch), together, atol=1e-5, rtol=1e-5)


def test_multi_token_options_with_images(vlm, images):
    _, model, processor = vlm
    scorer = scorer_for(model, processor)
    item = dict(items(images)[0], options=[" the left person", " B"])
    packed = scorer.logprobs([item])
    assert torch.isfinite(packed).all()
    alone = scorer_for(model, processor).logprobs([dict(item, options=[" the left person"])])
    torch.testing.assert_close(packed[:, :1], alone, atol=1e-5, rtol=1e-5)


def test_steering_is_exact_at_zero_and_trains_through_image_prompts(vlm, images):
    family, model, processor = vlm
    scorer = scorer_for(model, processor)
    batch = items(images)
    base = scorer.logprobs(batch)
    params = init_affine_params(find_norm_modules(model))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in params.values():
            p.normal_(0, 0.5)
    with apply_affine(model, params, 0.0):
        assert torch.equal(scorer.logprobs(batch), base)
    for p in params.values():
        p.requires_grad_(True)
    with apply_affine(model, params, 1.0):
        steered = scorer.logprobs(batch, grad=True)
        policy(steered)[:, 0].sum().backward()
    assert not torch.allclose(steered.detach(), base, atol=1e-4)
    grads = {name: params[name].grad for name in params}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    if family == "mllama":  # the cross-attention layer's norms act on image prompts
        assert grads["model.language_model.layers.1.input_layernorm.a"].abs().sum() > 0


def test_saved_vlm_loads_through_the_auto_classes(tmp_path, bpe, images):
    for family in VLM_FAMILIES:
        path = save_tiny_vlm(family, tmp_path / family, bpe=bpe)
        loaded = load_model(str(path), device="cpu", dtype="float32")
        assert loaded.is_multimodal and loaded.family == family
        model, processor = build_tiny_vlm(family, bpe=bpe)
        expected = scorer_for(model, processor).logprobs(items(images))
        got = OptionScorer(loaded.model, loaded.tokenizer, processor=loaded.processor).logprobs(items(images))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
