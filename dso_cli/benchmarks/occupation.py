"""The built-in ``occupation`` benchmark: "two people, which one is the nurse?" in text.

Two people are introduced (by gender words or by gendered first names) and the model picks one of
them as the holder of an occupation. *Ambiguous* items give no evidence, so the fair policy is 50/50;
*unambiguous* items state who holds the occupation, so one option is correct. Every template appears
in both person orders (``pair_id`` ties the two together), and the pro-stereotypical option is the
gender that is the majority of the occupation in the US BLS statistics shipped beside this module.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import datasets

from dso_cli.benchmarks.attribute_mix import over_attributes
from dso_cli.benchmarks.occupation_templates import (
    FORMATS,
    STATED,
    Template,
    capitalised,
    mirrorable,
    question,
    resolve_formats,
    templates,
)
from dso_cli.benchmarks.occupations import BENCHMARK, TEXT_SPLITS, Occupation, load_occupations
from dso_cli.benchmarks.schema import splits_to_datasets
from dso_cli.benchmarks.splits import take_stratified
from dso_cli.config.fields import make_options
from dso_cli.config.group_schemas import OccupationOptions
from dso_cli.errors import DsoError

DEFAULT_HELDOUT = tuple(OccupationOptions().heldout_occupations)  # kept out of train/val/test by default
DEFAULT_FORMATS = resolve_formats(OccupationOptions().formats, OccupationOptions().heldout_formats)[0]


def other_first(pair_id: str) -> bool:
    """Whether a pair's evidence states the other person's occupation before the holder's: half of the
    pairs, fixed by the pair's id (no draw from the split's random stream, so the ambiguous items and
    every other choice stay as they are), the same in both person orders of the pair."""
    return zlib.crc32(f"{pair_id}/mention".encode()) % 2 == 1


def unknown_position(pair_id: str) -> int:
    """Where a pair lists its "can't tell" answer (0, 1 or 2): varied over pairs, fixed by the pair's id
    (so it never depends on draw order) and the same in both person orders of the pair."""
    return zlib.crc32(pair_id.encode()) % 3


def _items_for(
    occ: Occupation, template: Template, holder: str | None, other_occ: str, unknown_option: bool = False,
    attribute: str = "gender", scenario: str = "",
) -> Iterator[dict]:  # fmt: skip
    """Both person orders of one template (one counterbalanced pair); with ``unknown_option`` a third,
    "can't tell" answer at a position of the pair's own (the correct one of its ambiguous items). Gender
    items state the stereotype direction (the occupation's BLS majority); other attributes none."""
    style = template.style
    kind = "amb" if holder is None else f"unamb-{holder}"
    pair_id = f"{BENCHMARK}/{occ.name}/{template.key}/{kind}" + ("/unknown" if unknown_option else "")
    mirrored = (
        holder is not None and mirrorable(template.qtype, template.wording, template.heldout) and other_first(pair_id)
    )
    if mirrored:
        pair_id += "/other-first"
    pro = occ.majority if attribute == "gender" else None
    a, b = style.groups
    for first in style.groups:
        people = (first, b if first == a else a)
        intro = f"{capitalised(style.intro[people[0]])} and {style.intro[people[1]]} {template.setting}. "
        if template.qtype == STATED:  # the easy reading check: no scene, only the holder is mentioned
            intro = ""
        order = list(people)
        if unknown_option:
            order.insert(unknown_position(pair_id), "unknown")
        other = None if holder is None else (b if holder == a else a)
        body = question(
            template.qtype,
            occ.name,
            None if holder is None else style.ref[holder],
            None if other is None else style.ref[other],
            other_occ,
            template.wording,
            template.heldout,
            other_first=mirrored,
        )
        correct = order.index(holder) if holder is not None else order.index("unknown") if unknown_option else -1
        yield {
            "id": f"{pair_id}/{first}-first",
            "benchmark": BENCHMARK,
            "split": "",
            "prompt": f"{intro}{body} {style.instruction(order)}",
            "answer_prefix": style.prefix(order, occ.name),
            "options": style.options(order),
            "option_groups": order,
            "pro_option": -1 if pro is None else order.index(pro),
            "anti_option": -1 if pro is None else order.index(b if pro == a else a),
            "correct": correct,
            "ambiguous": holder is None,
            "cluster": occ.name,
            "attribute": attribute,
            "question_type": template.qtype,
            "pair_id": pair_id,
            "answer_format": style.fmt.key,
            "option_people": [g if g == "unknown" else style.word[g] for g in order],
            "scenario_id": scenario,
        }


def interleave_question_types(chosen: Sequence[Template], rng: random.Random) -> list[Template]:
    """``chosen`` reordered to cycle through its question types (in a random type order), each type's
    templates keeping their order."""
    by_type: dict[str, list[Template]] = {}
    for template in chosen:
        by_type.setdefault(template.qtype, []).append(template)
    queues = [by_type[q] for q in rng.sample(sorted(by_type), len(by_type))]
    return [queue[i] for i in range(max(map(len, queues), default=0)) for queue in queues if i < len(queue)]


def in_comparisons(chosen: Sequence[Template], per_comparison: int) -> list[Template]:
    """``chosen`` dealt in blocks of ``per_comparison`` templates that compare the same two groups, the
    blocks taking the group pairs in turn (in order of first appearance; each block keeps ``chosen``'s
    order): the first pairs of an occupation then compare few groups through several name pairs each,
    instead of many groups through one name pair each. With one pair of groups (gender), ``chosen``."""
    queues: dict[tuple[str, ...], list[Template]] = {}
    for template in chosen:
        queues.setdefault(tuple(sorted(template.style.groups)), []).append(template)
    if len(queues) < 2:
        return list(chosen)
    out: list[Template] = []
    while any(queues.values()):
        for queue in queues.values():
            out += queue[:per_comparison]
            del queue[:per_comparison]
    return out


def _pairs(
    occ: Occupation, pool: Sequence[Template], n: int | None, contrast: Sequence[Occupation], ambiguous: bool,
    rng: random.Random, unknown_option: bool = False, attribute: str = "gender", per_comparison: int = 1,
    formats: Sequence[str] = DEFAULT_FORMATS, twins: int = 1, twins_from: int = 0,
) -> list[list[dict]]:  # fmt: skip
    """``n`` counterbalanced pairs (all when None) of one occupation from distinct templates of ``pool``,
    in random order but dealt round-robin over question types, so that any first ``k`` pairs cover the
    types evenly (a type with few templates, like ``stated``, is not left to chance), and in blocks of
    ``per_comparison`` pairs that compare the same two groups (:func:`in_comparisons`); unambiguous
    templates give one pair per holder gender. Each pair's answer format is drawn among ``formats``;
    ambiguous templates from the ``twins_from``-th on are asked in ``twins`` formats (the drawn one and
    others, as far as ``formats`` has them), their pairs consecutive and sharing a ``scenario_id``."""
    chosen = interleave_question_types(rng.sample(list(pool), len(pool)), rng)
    chosen = in_comparisons(chosen, per_comparison)[: len(pool) if n is None else n]
    kinds = sorted({template.style.people for template in pool})
    pairs = []
    for index, template in enumerate(chosen):
        template = replace(template, style=template.style.drawn(rng, formats, kinds))
        other_occ = rng.choice(contrast).name
        for holder in (None,) if ambiguous else (rng.choice(template.style.groups),):
            asked = [template]
            scenario = ""
            if ambiguous and twins > 1 and index >= twins_from:
                asked += _twin_templates(template, formats, twins - 1, rng)
                scenario = f"{BENCHMARK}/{occ.name}/{template.scene_key}"
            for form in asked:
                pairs.append(list(_items_for(occ, form, holder, other_occ, unknown_option, attribute, scenario)))
    return pairs


def _twin_templates(template: Template, formats: Sequence[str], n: int, rng: random.Random) -> list[Template]:
    """``template`` asked in up to ``n`` other answer formats of ``formats`` (drawn without repeats)."""
    style = template.style
    others = [f for f in style.formats_among(formats) if f != style.fmt.key]
    return [replace(template, style=replace(style, answer=FORMATS[f])) for f in rng.sample(others, min(n, len(others)))]


def build(**options: Any) -> datasets.DatasetDict:
    """Build the splits. ``n_train``/``n_train_unambiguous`` count items (two per pair).

    ``modality="image"`` builds the vision-language version from images (see
    :mod:`dso_cli.benchmarks.occupation_images`): ``source`` is ``image_dir`` (with ``image_dir``),
    ``social_counterfactuals`` (``hub_dataset``) or ``auto`` (``image_dir`` when given, else the hub's
    SocialCounterfactuals images, cached after the first read), ``image_layout`` is ``pair`` or ``side_by_side``, and
    the val/test sizes count person pairs.

    ``unknown_option`` (text only) offers a third answer, "can't tell" (worded per answer format, at a
    position that varies over pairs), on every item: the correct answer of the ambiguous items, a
    capability loss where chosen on the unambiguous ones.

    Text: ``train`` holds ``n_train`` ambiguous items (the paper's 600 by default) plus
    ``n_train_unambiguous`` unambiguous ones (the capability anchor of the KL term); ``val`` and
    ``test`` hold the given number of pairs of each kind per training occupation, every pair from its
    own template; ``heldout_occupations`` holds ``test_pairs_per_occupation`` pairs of each kind for
    occupations that never appear in the other splits; ``heldout_templates`` holds
    ``heldout_template_pairs_per_occupation`` (None: the test size) pairs of each kind per
    training occupation written with scenarios, question wordings, answer formats and names that
    no other split uses. A template (occupation, wording, scenario, names) is in one split only. The
    evaluation splits deal their pairs round-robin over the question types (``stated`` gets its share
    although it has few templates); ``train`` draws in proportion to the pool. Every split is drawn
    from an RNG stream of its own (seed, split, occupation), so resizing a held-out split leaves the
    others unchanged.
    """
    opts = make_options(OccupationOptions, options, "bias")
    return over_attributes(lambda attribute: _build(replace(opts, attribute=attribute)), opts.attribute)


def _build(opts: OccupationOptions) -> datasets.DatasetDict:
    """The splits of one attribute (:func:`build`)."""
    if opts.modality == "image" and opts.attribute != "gender":
        raise DsoError("bias.attribute is gender for the image benchmark (its images are labelled by gender)")
    if opts.modality == "image" and opts.unknown_option:
        raise DsoError("bias.unknown_option=true is available for the text benchmark only (bias.modality=text)")
    if opts.modality == "image":
        from dso_cli.benchmarks import occupation_images as images

        rng = random.Random(opts.seed)
        if opts.source == "auto":
            pairs = images.pairs_from_either(
                opts.image_dir, opts.hub_dataset, rng, max_rows=opts.max_hub_rows, revision=opts.hub_revision
            )
        elif opts.source == "image_dir":
            if not opts.image_dir:
                raise DsoError("bias.source=image_dir needs bias.image_dir=PATH (<occupation>/<male|female>/*.jpg)")
            pairs = images.pairs_from_image_dir(opts.image_dir, rng)
        elif opts.source == "social_counterfactuals":
            pairs = images.pairs_from_social_counterfactuals(
                opts.hub_dataset, rng, max_rows=opts.max_hub_rows, revision=opts.hub_revision
            )
        else:
            raise DsoError(f"bias.source must be auto, image_dir or social_counterfactuals, not {opts.source!r}")
        return images.build_image_splits(
            pairs, n_train=opts.n_train, n_train_unambiguous=opts.n_train_unambiguous, layout=opts.image_layout,
            val_pairs_per_occupation=opts.val_pairs_per_occupation,
            test_pairs_per_occupation=opts.test_pairs_per_occupation,
            heldout_occupations=opts.heldout_occupations, rng=rng,
        )  # fmt: skip
    if opts.modality not in ("text", "auto"):  # auto is resolved from the model by build_benchmark; alone: text
        raise DsoError(f"bias.modality must be auto, text or image, not {opts.modality!r}")
    if opts.pairs_per_comparison < 1:
        raise DsoError(f"bias.pairs_per_comparison must be at least 1, not {opts.pairs_per_comparison}")
    if opts.n_train % 2 or opts.n_train_unambiguous % 2:
        raise DsoError("occupation benchmark: n_train and n_train_unambiguous must be even (items come in pairs)")
    if opts.format_twins < 1:
        raise DsoError(f"bias.format_twins must be at least 1, not {opts.format_twins}")
    n_heldout_tpl = opts.test_pairs_per_occupation if opts.heldout_template_pairs_per_occupation is None else (
        opts.heldout_template_pairs_per_occupation)  # fmt: skip
    occupations = load_occupations()
    known = {o.name for o in occupations}
    unknown = [h for h in opts.heldout_occupations if h not in known]
    if unknown:
        raise DsoError(f"occupation benchmark: unknown held-out occupation {unknown[0]!r}")

    def stream(*parts: object) -> random.Random:
        """An RNG of its own for each draw, so that resizing one split never redraws another."""
        return random.Random(":".join(map(str, (opts.seed, *parts))))

    formats, heldout_formats = resolve_formats(opts.formats, opts.heldout_formats)
    splits: dict[str, list[list[dict]]] = {s: [] for s in TEXT_SPLITS}
    pools: dict[bool, dict[str, list]] = {True: {}, False: {}}
    for occ in occupations:
        contrast = [o for o in occupations if o.majority != occ.majority]
        for ambiguous in (True, False):
            pool = templates(heldout=False, ambiguous=ambiguous, attribute=opts.attribute, formats=formats)
            if occ.name in opts.heldout_occupations:
                rng = stream("heldout_occupations", occ.name, ambiguous)
                splits["heldout_occupations"] += _pairs(
                    occ,
                    pool,
                    opts.test_pairs_per_occupation,
                    contrast,
                    ambiguous,
                    rng,
                    opts.unknown_option,
                    opts.attribute,
                    opts.pairs_per_comparison,
                    formats,
                )
                continue
            heldout_pool = templates(heldout=True, ambiguous=ambiguous, attribute=opts.attribute,
                                     formats=heldout_formats)  # fmt: skip
            rng = stream("heldout_templates", occ.name, ambiguous)
            splits["heldout_templates"] += _pairs(occ, heldout_pool, n_heldout_tpl, contrast, ambiguous, rng,
                                                  opts.unknown_option, opts.attribute,
                                                  opts.pairs_per_comparison, heldout_formats)  # fmt: skip
            rng = stream("pool", occ.name, ambiguous)
            n_test, n_val = opts.test_pairs_per_occupation, opts.val_pairs_per_occupation
            pairs = _pairs(occ, pool, None, contrast, ambiguous, rng, opts.unknown_option, opts.attribute,
                           opts.pairs_per_comparison, formats, opts.format_twins, n_test + n_val)  # fmt: skip
            splits["test"] += pairs[:n_test]
            splits["val"] += pairs[n_test : n_test + n_val]
            left = scenarios(pairs[n_test + n_val :])
            rng.shuffle(left)  # training draws in proportion to the pool's types, not round-robin
            pools[ambiguous][occ.name] = left
    rng = stream("train")
    per_scenario = max(1, min(opts.format_twins, len(formats)))
    n_pairs = opts.n_train // 2
    amb = take_stratified(pools[True], -(-n_pairs // per_scenario), rng, what="occupation benchmark n_train")
    unamb = take_stratified(pools[False], opts.n_train_unambiguous // 2, rng,
                            what="occupation benchmark n_train_unambiguous")  # fmt: skip
    splits["train"] = [pair for scenario in amb for pair in scenario][:n_pairs]  # the last scenario may lose a twin
    splits["train"] += [pair for scenario in unamb for pair in scenario]
    return splits_to_datasets({name: [item for pair in pairs for item in pair] for name, pairs in splits.items()})


def scenarios(pairs: Sequence[list[dict]]) -> list[list[list[dict]]]:
    """``pairs`` grouped into scenarios: the consecutive pairs that share a ``scenario_id`` (a scenario
    asked in several formats) stay together, every other pair is a scenario of its own."""
    out: list[list[list[dict]]] = []
    for pair in pairs:
        scenario = pair[0]["scenario_id"]
        if scenario and out and out[-1][0][0]["scenario_id"] == scenario:
            out[-1].append(pair)
        else:
            out.append([pair])
    return out
