"""Option scoring: agrees with a plain full forward, batched == unbatched, fast path == general path."""

import pytest
import torch

from dso_cli.benchmarks.occupation import build
from dso_cli.scoring import OptionScorer, policy
from tests.conftest import build_tiny_model

FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3_text", "gpt2"]


def reference_logprobs(scorer: OptionScorer, item) -> torch.Tensor:
    """Each option scored alone with the model's own logits: the definition, no batching tricks."""
    enc = scorer.encode(item)
    out = []
    for opt in enc.option_ids:
        ids = torch.tensor([list(enc.prompt_ids) + list(opt)])
        logp = torch.log_softmax(scorer.model(input_ids=ids).logits[0].float(), -1)
        start = len(enc.prompt_ids) - 1
        out.append(sum(logp[start + t, tok] for t, tok in enumerate(opt)))
    return torch.stack(out)


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_full_forward(family, tokenizer, items):
    model = build_tiny_model(family, tokenizer)
    scorer = OptionScorer(model, tokenizer, batch_size=4)
    got = scorer.logprobs(items)
    for i, item in enumerate(items):
        want = reference_logprobs(scorer, item)
        torch.testing.assert_close(got[i, : len(want)], want, atol=1e-5, rtol=1e-5)
        assert torch.isinf(got[i, len(want) :]).all()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_equals_unbatched(family, tokenizer, items):
    model = build_tiny_model(family, tokenizer)
    batched = OptionScorer(model, tokenizer, batch_size=16, prefix_tree=False).logprobs(items)
    single = OptionScorer(model, tokenizer, batch_size=1, prefix_tree=False).logprobs(items)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_single_token_fast_path_equals_general_path(tokenizer):
    model = build_tiny_model("llama", tokenizer)
    scorer = OptionScorer(model, tokenizer)
    ambiguous = [i for i in build(test_pairs_per_occupation=1)["test"].to_list() if i["ambiguous"]][:8]
    encoded = [scorer.encode(i) for i in ambiguous]
    single = [e for e in encoded if all(len(o) == 1 for o in e.option_ids)]
    assert single, "the test tokenizer should make some options single tokens"
    torch.testing.assert_close(
        scorer._score_single_token(single, 2), scorer._score_multi_token(single, 2), atol=1e-5, rtol=1e-5
    )


def test_chat_template_and_plain_rendering(tokenizer, items):
    model = build_tiny_model("llama", tokenizer)
    chat = OptionScorer(model, tokenizer).render(items[0])
    assert chat.startswith("<|im_start|>user\n") and chat.endswith(
        "<|im_start|>assistant\n" + items[0]["answer_prefix"]
    )
    system = OptionScorer(model, tokenizer, system_prompt="Be fair.").render(items[0])
    assert system.startswith("<|im_start|>system\nBe fair.")
    plain = OptionScorer(model, tokenizer, chat_template=False).render(items[0])
    assert plain == f"{items[0]['prompt']}\n\n{items[0]['answer_prefix']}"


def test_length_normalisation_divides_by_token_count(tokenizer, items):
    model = build_tiny_model("llama", tokenizer)
    total = OptionScorer(model, tokenizer).logprobs(items[-1:])
    mean = OptionScorer(model, tokenizer, length_normalize=True).logprobs(items[-1:])
    lengths = torch.tensor(
        [len(ids) for ids in OptionScorer(model, tokenizer).encode(items[-1]).option_ids], dtype=torch.float
    )
    torch.testing.assert_close(mean[0], total[0] / lengths)


def test_gradients_flow_only_when_asked(tokenizer, items):
    from dso_cli.models.layouts import find_norm_modules
    from dso_cli.steering.affine import apply_affine, init_affine_params

    model = build_tiny_model("llama", tokenizer)
    scorer = OptionScorer(model, tokenizer)
    params = init_affine_params(find_norm_modules(model))
    with apply_affine(model, params, 1.0):
        assert not scorer.logprobs(items[:2]).requires_grad
        out = scorer.logprobs(items[:2], grad=True)
    policy(out)[:, 0].sum().backward()
    assert all(p.grad is not None for p in params.values())
    assert sum(p.grad.abs().sum() for p in params.values()) > 0


def test_sentencepiece_options_are_tokenised_as_continuations():
    """``▁``-style tokenizers: " man" after the prompt is the word-start token, never ``▁`` + ``▁man``."""
    from tests.conftest import build_sentencepiece_tokenizer

    sp = build_sentencepiece_tokenizer()
    model = build_tiny_model("llama", sp)
    scorer = OptionScorer(model, sp)
    assert not scorer.use_chat_template
    item = next(i for i in build(test_pairs_per_occupation=1)["test"].to_list() if i["options"] == [" man", " woman"])
    enc = scorer.encode(item)
    assert enc.prompt_ids[0] == sp.bos_token_id
    assert [sp.convert_ids_to_tokens(list(ids)) for ids in enc.option_ids] == [["▁man"], ["▁woman"]]
    full = sp(scorer.render(item) + " woman")["input_ids"]
    logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0], -1)
    want = logp[len(full) - 2, full[-1]]
    torch.testing.assert_close(scorer.logprobs([item])[0, 1], want, atol=1e-5, rtol=1e-5)


def test_full_forward_fallback_matches_the_shortcut(tokenizer, items):
    model = build_tiny_model("gemma2", tokenizer)
    fast = OptionScorer(model, tokenizer)
    assert not fast.full_forward
    slow = OptionScorer(model, tokenizer)
    slow.full_forward = True
    torch.testing.assert_close(slow.logprobs(items), fast.logprobs(items), atol=1e-5, rtol=1e-5)


def test_a_head_the_shortcut_does_not_know_falls_back(tokenizer, items):
    model = build_tiny_model("llama", tokenizer)
    model.config.logits_scaling = 4.0  # Granite-style: the model divides logits by a constant
    original = model.forward

    def scaled_forward(*args, **kwargs):
        out = original(*args, **kwargs)
        out.logits = out.logits / 4.0
        return out

    model.forward = scaled_forward
    scorer = OptionScorer(model, tokenizer)
    assert scorer.full_forward
    want = torch.stack([reference_logprobs(scorer, item) for item in items[:2]])
    torch.testing.assert_close(scorer.logprobs(items[:2])[:, :2], want, atol=1e-5, rtol=1e-5)


def test_chat_template_kwargs_and_template_errors(tokenizer, items):
    from dso_cli.errors import DsoError

    model = build_tiny_model("llama", tokenizer)
    saved = tokenizer.chat_template
    try:
        tokenizer.chat_template = "{{ greeting }}|{{ messages[0]['content'] }}|"
        assert (
            OptionScorer(model, tokenizer, chat_template_kwargs={"greeting": "hi"}).render(items[0]).startswith("hi|")
        )
        tokenizer.chat_template = "{{ raise_exception('System role not supported') }}"
        with pytest.raises(DsoError, match="chat template failed: System role not supported"):
            OptionScorer(model, tokenizer, system_prompt="x").render(items[0])
    finally:
        tokenizer.chat_template = saved


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prompt_cache_equals_packed_options(family, tokenizer, items):
    model = build_tiny_model(family, tokenizer)
    shared = OptionScorer(model, tokenizer, batch_size=4, prefix_tree=False)
    packed = OptionScorer(model, tokenizer, batch_size=4, share_prompt=False, prefix_tree=False)
    encoded = [shared.encode(i) for i in items]
    multi = [e for e in encoded if any(len(o) > 1 for o in e.option_ids)]
    assert multi, "the items should have multi-token options"
    if shared._fits_window(multi):  # sliding-window models fall back to packing for long prompts
        torch.testing.assert_close(
            shared._score_shared_prompt(multi, 3), packed._score_packed(multi, 3), atol=1e-5, rtol=1e-5
        )
    torch.testing.assert_close(shared.logprobs(items), packed.logprobs(items), atol=1e-5, rtol=1e-5)
    assert shared.share_prompt, "the shared-prompt path fell back for this family"


def test_shared_prompt_gradients_match_packed(tokenizer, items):
    from dso_cli.models.layouts import find_norm_modules
    from dso_cli.steering.affine import apply_affine, init_affine_params

    model = build_tiny_model("llama", tokenizer)
    grads = []
    for share in (True, False):
        params = init_affine_params(find_norm_modules(model))
        scorer = OptionScorer(model, tokenizer, batch_size=4, share_prompt=share, prefix_tree=False)
        with apply_affine(model, params, 1.0):
            lp = scorer.logprobs(items, grad=True)
            lp[torch.isfinite(lp)].sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in params.values()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)
