"""Closed-form baselines (CAA, mean matching, none): their fits by hand, exact identity at strength 0,
save -> load round trips, and clear failures on a model of another size."""

import pytest
import torch

from dso_cli.benchmarks.occupation import build
from dso_cli.config.group_schemas import CAAOptions, ITIOptions
from dso_cli.errors import DsoError
from dso_cli.models.layouts import find_decoder_layers, find_norm_modules
from dso_cli.scoring import OptionScorer
from dso_cli.steering.activations import ActivationStore, completion_activations, usable_items
from dso_cli.steering.artifact import Artifact
from dso_cli.steering.caa import fit_caa, mean_difference
from dso_cli.steering.iti import fit_iti
from dso_cli.steering.leace import erase, fit_eraser, fit_leace, gender_labels
from dso_cli.steering.mean_match import fit_mean_match, match_moments
from dso_cli.steering.none import fit_none
from dso_cli.steering.prompting import DEFAULT_INSTRUCTION, fit_prompting
from tests.conftest import build_tiny_model, tiny_config


class Loaded:
    """The slice of LoadedModel the fits use."""

    def __init__(self, model):
        self.model = model

    def describe(self):
        return {"name_or_path": "tiny", "fingerprint": "tiny"}


@pytest.fixture(scope="module")
def items():
    test = build(test_pairs_per_occupation=1)["test"].to_list()
    return [i for i in test if i["ambiguous"]][:12]


@pytest.fixture
def setup(tokenizer):
    model = build_tiny_model("llama", tokenizer)
    return Loaded(model), OptionScorer(model, tokenizer, chat_template=False, batch_size=5)


def test_mean_difference_and_moment_matching_by_hand():
    pro = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    anti = torch.tensor([[2.0, 5.0], [6.0, 5.0]])
    torch.testing.assert_close(mean_difference(pro, anti), torch.tensor([2.0, 4.0]))
    a, b = match_moments(pro, anti)
    mapped = (1 + a) * pro + b
    torch.testing.assert_close(mapped.mean(0), anti.mean(0))
    torch.testing.assert_close(mapped.std(0, unbiased=False), anti.std(0, unbiased=False))


def test_activations_batch_size_and_prefix_trees_do_not_matter(setup, items, tokenizer):
    loaded, scorer = setup
    rows = OptionScorer(loaded.model, tokenizer, chat_template=False, prefix_tree=False)
    names = find_decoder_layers(loaded.model)[:2]
    heads_input = [f"{find_decoder_layers(loaded.model)[1]}.self_attn.o_proj"]
    one = completion_activations(rows, items, names, batch_size=1)
    rows.stats = type(rows.stats)()
    many = completion_activations(rows, items, names, batch_size=7)
    in_trees = completion_activations(scorer, items, names)
    assert scorer.prefix_tree and scorer.stats.tokens < rows.stats.tokens / 2  # prompts once, shared prefixes once
    for kind in ("pro", "anti"):
        for name in names:
            torch.testing.assert_close(one[kind][name], many[kind][name], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(one[kind][name], in_trees[kind][name], atol=1e-5, rtol=1e-5)
    by_rows = ActivationStore(rows, items).inputs(heads_input)
    by_trees = ActivationStore(scorer, items).inputs(heads_input)
    for kind in ("pro", "anti"):
        torch.testing.assert_close(by_rows[kind][heads_input[0]], by_trees[kind][heads_input[0]], atol=1e-5, rtol=1e-5)


def test_caa_vector_is_the_mean_difference_at_the_answer_position(setup, items):
    loaded, scorer = setup
    layer = find_decoder_layers(loaded.model)[1]
    artifact = fit_caa(loaded, ActivationStore(scorer, items), CAAOptions(layers=[1]))
    # by hand: one unpadded forward per completion, the layer's output at the last token
    captured = {}
    hook = dict(loaded.model.named_modules())[layer].register_forward_hook(
        lambda m, i, o: captured.__setitem__("h", (o[0] if isinstance(o, tuple) else o)[0, -1])
    )
    diffs = {"pro": [], "anti": []}
    for item in usable_items(items):
        enc = scorer.encode(item)
        for kind in diffs:
            ids = list(enc.prompt_ids) + list(enc.option_ids[item[f"{kind}_option"]])
            with torch.no_grad():
                loaded.model(torch.tensor([ids]))
            diffs[kind].append(captured["h"].clone())
    hook.remove()
    want = torch.stack(diffs["anti"]).mean(0) - torch.stack(diffs["pro"]).mean(0)
    torch.testing.assert_close(artifact.tensors[f"{layer}.v"], want, atol=1e-5, rtol=1e-5)


def test_mean_match_maps_pro_moments_onto_anti(setup, items):
    loaded, scorer = setup
    artifact = fit_mean_match(loaded, ActivationStore(scorer, items))
    name = next(iter(find_norm_modules(loaded.model)))
    acts = completion_activations(scorer, items, [name])
    a, b = artifact.tensors[f"{name}.a"], artifact.tensors[f"{name}.b"]
    mapped = acts["pro"][name] * (1 + a) + b
    torch.testing.assert_close(mapped.mean(0), acts["anti"][name].mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        mapped.std(0, unbiased=False), acts["anti"][name].std(0, unbiased=False), atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("method", ["none", "prompting", "caa", "iti", "mean_match", "leace"])
def test_zero_strength_identity_round_trip_and_wrong_model(method, setup, items, tokenizer, tmp_path):
    loaded, scorer = setup
    store = ActivationStore(scorer, items)
    fit = {"none": lambda: fit_none(loaded), "caa": lambda: fit_caa(loaded, store),
           "mean_match": lambda: fit_mean_match(loaded, store), "leace": lambda: fit_leace(loaded, store),
           "iti": lambda: fit_iti(loaded, store), "prompting": lambda: fit_prompting(loaded)}[method]  # fmt: skip
    artifact = fit()
    if method == "prompting":  # acts on the prompt, not on activations
        base = scorer.logprobs(items[:4])
        with artifact.steer(scorer, 0.0):
            assert torch.equal(scorer.logprobs(items[:4]), base)
        with artifact.steer(scorer, 1.0):
            assert scorer.render(items[0]).startswith(DEFAULT_INSTRUCTION)
            steered = scorer.logprobs(items[:4])
        assert not torch.allclose(steered, base) and not scorer.render(items[0]).startswith(DEFAULT_INSTRUCTION)
        reloaded = Artifact.load(artifact.save(tmp_path / method))
        assert reloaded.manifest["hyperparameters"]["instruction"] == DEFAULT_INSTRUCTION
        with reloaded.steer(scorer, 1.0):
            torch.testing.assert_close(scorer.logprobs(items[:4]), steered, atol=0, rtol=0)
        other = OptionScorer(loaded.model, scorer.tokenizer)  # the instruction belongs to one scorer, no global
        with reloaded.steer(scorer, 1.0):
            assert not other.render(items[0]).startswith(DEFAULT_INSTRUCTION)
        with pytest.raises(DsoError, match="changes the prompt, not the model"):
            reloaded.apply(loaded.model, 1.0)
        return
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        base = loaded.model(ids).logits
        with artifact.apply(loaded.model, 0.0):
            assert torch.equal(loaded.model(ids).logits, base)
        with artifact.apply(loaded.model, 1.0):
            steered = loaded.model(ids).logits
        assert torch.equal(loaded.model(ids).logits, base)  # hooks removed
        if method != "none":
            assert not torch.allclose(steered, base)
        reloaded = Artifact.load(artifact.save(tmp_path / method))
        with reloaded.apply(loaded.model, 1.0):
            torch.testing.assert_close(loaded.model(ids).logits, steered, atol=0, rtol=0)
    if method == "none":
        return
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama", len(tokenizer))
    config.hidden_size, config.intermediate_size = 2 * config.hidden_size, 2 * config.intermediate_size
    config.head_dim = 2 * config.head_dim  # wider heads too, so attention outputs change size as well
    wider = AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(DsoError, match="does not fit"), torch.no_grad():
        with reloaded.apply(wider, 1.0):
            wider(ids)


def probe_accuracy(x: torch.Tensor, z: torch.Tensor, steps: int = 300) -> float:
    """In-sample accuracy of a logistic-regression probe (the strongest linear probe we can fit)."""
    x = (x - x.mean(0)) / x.std(0).clamp(min=1e-6)
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, z) + 1e-4 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((x @ w + b > 0).float() == z).float().mean())


def test_leace_leaves_no_linear_gender_signal(setup, items):
    loaded, scorer = setup
    name = find_decoder_layers(loaded.model)[1]
    many = [i for i in build(test_pairs_per_occupation=2)["test"].to_list() if i["ambiguous"]][:48]
    acts = completion_activations(scorer, many, [name])
    x = torch.cat([acts["pro"][name], acts["anti"][name]])
    z = gender_labels(many)
    assert z.mean() == 0.5
    assert probe_accuracy(x, z) > 0.95  # the completion's gender is plainly linear before erasure
    erased = erase(x, **fit_eraser(x, z))
    assert probe_accuracy(erased, z) <= 0.6  # chance is 0.5
    # the erased class means coincide: LEACE's guarantee
    torch.testing.assert_close(erased[z == 1].mean(0), erased[z == 0].mean(0), atol=1e-3, rtol=0)


def test_iti_probes_rank_the_head_with_a_planted_signal():
    from dso_cli.steering.iti import probe_accuracies, shift_vectors

    g = torch.Generator().manual_seed(0)
    pro, anti = torch.randn(60, 5, 4, generator=g), torch.randn(60, 5, 4, generator=g)
    anti[:, 3, 0] += 3.0  # head 3 separates the labels
    acc = probe_accuracies(pro, anti)
    assert int(acc.argmax()) == 3 and acc[3] > 0.9 and acc[[0, 1, 2, 4]].max() < 0.8
    shift = shift_vectors(pro, anti)
    assert shift.shape == (5, 4) and shift[3, 0] > 0.9 * shift[3].norm()  # along the planted axis


def test_iti_picks_the_head_with_a_planted_signal_in_a_tiny_model(setup, items, tmp_path):
    loaded, scorer = setup
    test = build(test_pairs_per_occupation=4)["test"].to_list()
    # female-majority occupations only: the stereotype label is then the gender of the answer token
    many = [i for i in test if i["ambiguous"] and i["option_groups"][i["pro_option"]] == "female"][:40]
    female_tokens = {scorer.encode(i).option_ids[i["pro_option"]][-1] for i in many}
    seen = {}
    # plant: head 2 of layer 1 carries "the current token is a female answer" along its first axis
    embed_hook = loaded.model.model.embed_tokens.register_forward_pre_hook(lambda m, a: seen.update(ids=a[0]))

    def plant(module, args):
        x = args[0].clone()
        flag = torch.isin(seen["ids"], torch.tensor(sorted(female_tokens))).to(x.dtype)
        x[..., 16] += 5.0 * flag
        return (x,)

    plant_hook = loaded.model.model.layers[1].self_attn.o_proj.register_forward_pre_hook(plant)
    try:
        artifact = fit_iti(loaded, ActivationStore(scorer, many), ITIOptions(top_k=1))
    finally:
        embed_hook.remove()
        plant_hook.remove()
    heads = artifact.manifest["hyperparameters"]["heads"]
    assert [(h["module"], h["head"]) for h in heads] == [("model.layers.1.self_attn.o_proj", 2)]
    assert heads[0]["probe_accuracy"] > 0.9
    vector = artifact.tensors["model.layers.1.self_attn.o_proj.v"]
    # mass-mean direction anti - pro: away from the (pro-stereotypical) female answer, along the planted axis
    assert vector[16] < 0 and vector[16].abs() > 0.9 * vector[16:24].norm()
    assert vector[:16].abs().sum() == 0 and vector[24:].abs().sum() == 0
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        base = loaded.model(ids).logits
        with artifact.apply(loaded.model, 0.0):
            assert torch.equal(loaded.model(ids).logits, base)
        with Artifact.load(artifact.save(tmp_path / "iti")).apply(loaded.model, 5.0):
            assert not torch.allclose(loaded.model(ids).logits, base)


def test_one_run_over_the_items_serves_every_activation_fit(setup, items):
    from dso_cli.steering.method import FitJob, make_method
    from dso_cli.steering.methods import prefetch_for

    loaded, scorer = setup
    names = ["caa", "iti", "mean_match", "leace"]
    options = {"caa": {"layers": [1]}, "leace": {"layers": [0]}}
    methods = [make_method({"name": m, **options.get(m, {})}) for m in names]
    shared = ActivationStore(scorer, items)
    prefetch_for(methods, loaded, shared)
    assert shared.passes == 1
    for method in methods:
        together = method.fit(FitJob(loaded, scorer, items, store=shared))
        alone = method.fit(FitJob(loaded, scorer, items, store=ActivationStore(scorer, items)))
        assert together.tensors.keys() == alone.tensors.keys()
        for key in alone.tensors:  # batching is the same, so the recorded activations are bit-identical
            assert torch.equal(together.tensors[key], alone.tensors[key]), (method, key)
    assert shared.passes == 1  # nothing was recomputed


def test_caa_chooses_its_layer_by_val_pob(setup, items):
    from dso_cli.evaluation import decision_metrics
    from dso_cli.scoring import policy

    loaded, scorer = setup
    val = [i for i in build(val_pairs_per_occupation=1)["val"].to_list()][:24]
    store = ActivationStore(scorer, items)
    artifact = fit_caa(loaded, store, CAAOptions(candidate_layers=[0, 1], select_alpha=4.0), val_items=val)
    selection = artifact.manifest["hyperparameters"]["layer_selection"]
    layers = find_decoder_layers(loaded.model)
    assert [c["module"] for c in selection["candidates"]] == layers[:2] and selection["alpha"] == 4.0
    best = min(selection["candidates"], key=lambda c: c["val_pob"])
    assert artifact.manifest["hyperparameters"]["modules"] == [best["module"]]
    assert list(artifact.tensors) == [f"{best['module']}.v"]
    ambiguous = [i for i in val if i["ambiguous"]]
    with artifact.apply(loaded.model, 4.0):  # the recorded val POB is the artifact's own
        probs = policy(scorer.logprobs(ambiguous))
    assert decision_metrics(ambiguous, probs, bootstrap_reps=0)["pob"] == pytest.approx(best["val_pob"], abs=1e-6)
    configured = fit_caa(loaded, store, CAAOptions(layers=[0]), val_items=val)  # configured layers skip the selection
    assert configured.manifest["hyperparameters"]["layer_selection"] is None
    assert list(configured.tensors) == [f"{layers[0]}.v"]


def test_a_layer_out_of_range_names_the_method_that_asked_for_it(setup, items):
    loaded, scorer = setup
    store = ActivationStore(scorer, items)
    with pytest.raises(DsoError, match=r"^leace layers \[99\] out of range"):
        fit_leace(loaded, store, layers=[99])
    with pytest.raises(DsoError, match=r"^caa layers \[99\] out of range"):
        fit_caa(loaded, store, CAAOptions(layers=[99]))
