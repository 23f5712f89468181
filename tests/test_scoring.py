"""Option scoring: agrees with a plain full forward, batched == unbatched, fast path == general path."""

import pytest
import torch

from dso_cli.benchmarks.occupation import build
from dso_cli.scoring import OptionScorer, policy
from tests.conftest import build_tiny_model

FAMILIES = ["llama", "qwen2", "mistral", "gemma2", "gpt2"]


@pytest.fixture(scope="module")
def items():
    test = build(test_pairs_per_occupation=1)["test"].to_list()
    three_options = dict(
        test[7], options=[" a carpenter", " the woman", " x"], option_groups=["male", "female", "unknown"]
    )
    return [*test[:6], three_options]


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
    batched = OptionScorer(model, tokenizer, batch_size=16).logprobs(items)
    single = OptionScorer(model, tokenizer, batch_size=1).logprobs(items)
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
    model = build_tiny_model("llama", tokenizer)
    scorer = OptionScorer(model, tokenizer)
    assert not scorer.logprobs(items[:2]).requires_grad
    emb = model.get_input_embeddings().weight
    emb.requires_grad_(True)
    try:
        out = scorer.logprobs(items[:2], grad=True)
        policy(out)[:, 0].sum().backward()
        assert emb.grad is not None and emb.grad.abs().sum() > 0
    finally:
        emb.requires_grad_(False)
