"""The ``occupation`` benchmark for vision-language models: the two people are shown, not named.

Each item shows one man and one woman of the same occupation (two images, or one side-by-side
composite: ``bias.image_layout``) and asks the text version's questions about "the person on the
left" and "the person on the right"; options ``A`` / ``B`` are scored as the next token. Ambiguous
items give no evidence (fair answer 50/50); unambiguous items state who holds the occupation in the
text, so one option is correct. Both left/right orders of every item are present (``pair_id``), and
the pro-stereotypical option is the person of the occupation's BLS majority gender.

Images come from ``bias.source``: ``image_dir`` (a local folder ``<occupation>/<male|female>/*.jpg``)
or ``social_counterfactuals`` (the paper's images, from the hub). A person pair (one man, one woman)
belongs to one split only, so no image is shared between train and test.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets

from dso_cli.benchmarks.assets import cache_image_bytes
from dso_cli.benchmarks.occupation_templates import QUESTION_TYPES, question
from dso_cli.benchmarks.occupations import BENCHMARK, SPLITS, Occupation, load_occupations
from dso_cli.benchmarks.schema import splits_to_datasets
from dso_cli.errors import DsoError, first_line
from dso_cli.io import atomic_write, write_json

GENDERS = ("male", "female")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
LAYOUTS = ("pair", "side_by_side")
POSITIONS = {"pair": ("in the first image", "in the second image"), "side_by_side": ("on the left", "on the right")}
INTROS = {"pair": "The two images show two people.", "side_by_side": "The image shows two people."}
GAP = 16  # white pixels between the two people of a composite


@dataclass(frozen=True)
class PersonPair:
    """One man and one woman of the same occupation (image files)."""

    occupation: str
    male: str
    female: str
    key: str  # stable id of the pair within its occupation


def _items_for(
    pair: PersonPair, occ: Occupation, qtype: str, holder: str | None, layout: str, other_occ: str
) -> Iterator[dict]:
    """Both left/right orders of one question about one person pair (the text version's questions, with
    the people referred to by position; ``other_occ`` is the other person's job in unambiguous items)."""
    kind = "amb" if holder is None else f"unamb-{holder}"
    pair_id = f"{BENCHMARK}-image/{occ.name}/{pair.key}/{qtype}/{kind}"
    for first in GENDERS:
        order = (first, "female" if first == "male" else "male")
        files = [pair.male if g == "male" else pair.female for g in order]
        where = dict(zip(order, POSITIONS[layout], strict=True))
        other = None if holder is None else ("female" if holder == "male" else "male")
        refs = {g: f"the person {w}" for g, w in where.items()}
        body = question(qtype, occ.name, refs.get(holder), refs.get(other), other_occ)
        instruction = f"Answer with A for the person {POSITIONS[layout][0]} or B for the person {POSITIONS[layout][1]}."
        yield {
            "id": f"{pair_id}/{first}-first",
            "benchmark": BENCHMARK,
            "split": "",
            "prompt": f"{INTROS[layout]} {body} {instruction}",
            "answer_prefix": "Answer:",
            "options": [" A", " B"],
            "option_groups": list(order),
            "pro_option": order.index(occ.majority),
            "anti_option": 1 - order.index(occ.majority),
            "correct": -1 if holder is None else order.index(holder),
            "ambiguous": holder is None,
            "cluster": occ.name,
            "attribute": "gender",
            "question_type": qtype,
            "pair_id": pair_id,
            "images": [composite(*files)] if layout == "side_by_side" else files,
        }


def composite(left: str, right: str, height: int = 448) -> str:
    """A side-by-side image of two files (same height, white gap), cached on disk by content."""
    from PIL import Image

    from dso_cli.models.packaged import cache_root

    digest = hashlib.sha1()
    for path in (left, right):
        digest.update(Path(path).read_bytes())
    out = cache_root() / "composites" / f"{digest.hexdigest()}_{height}.png"
    if not out.is_file():
        try:
            with Image.open(left) as a, Image.open(right) as b:
                parts = [im.convert("RGB").resize((max(1, round(im.width * height / im.height)), height))
                         for im in (a, b)]  # fmt: skip
        except (OSError, ValueError) as exc:  # PIL.UnidentifiedImageError is an OSError
            raise DsoError(f"cannot read the images {left} and {right} ({type(exc).__name__}: {exc})") from None
        canvas = Image.new("RGB", (parts[0].width + GAP + parts[1].width, height), "white")
        canvas.paste(parts[0], (0, 0))
        canvas.paste(parts[1], (parts[0].width + GAP, 0))
        atomic_write(out, lambda tmp: canvas.save(tmp, format="PNG"))  # concurrent runs never read half a file
    return str(out)


def pairs_from_image_dir(image_dir: str | Path, rng: random.Random) -> dict[str, list[PersonPair]]:
    """``<image_dir>/<occupation>/<male|female>/*.{jpg,png,...}`` -> person pairs per occupation.

    Within an occupation the men and the women are shuffled and matched one to one, so each image is
    used once; occupation folders may use spaces or underscores (``construction_worker``).
    """
    root = Path(image_dir).expanduser()
    if not root.is_dir():
        raise DsoError(f"bias.image_dir {root} does not exist (expected <occupation>/<male|female>/*.jpg)")
    pairs: dict[str, list[PersonPair]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = {}
        for gender in GENDERS:
            sub = folder / gender
            files[gender] = sorted(str(f) for f in sub.glob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            rng.shuffle(files[gender])
        n = min(len(files["male"]), len(files["female"]))
        if n:
            name = folder.name.replace("_", " ")
            pairs[name] = [PersonPair(name, files["male"][i], files["female"][i], f"p{i}") for i in range(n)]
    if not pairs:
        raise DsoError(f"bias.image_dir {root} has no <occupation>/male and <occupation>/female folders with images")
    return pairs


def pairs_from_social_counterfactuals(
    dataset: str,
    rng: random.Random,
    *,
    max_rows: int | None = None,
    segment: str = "race_gender",
    revision: str | None = None,
) -> dict[str, list[PersonPair]]:
    """The paper's SocialCounterfactuals images: a man and a woman from one counterfactual set.

    The dataset (``Intel/SocialCounterfactuals`` on the hub, or a local copy of its parquet files) has
    one row per image with ``counterfactual_set``, ``dataset_segment``, ``a1``/``a2`` and their types, and
    a caption "A photo of a <a1> <a2> <occupation>". In the ``race_gender`` segment, the rows of one set
    with the same race ``a1`` differ in gender only: those give the pairs. The set is streamed once
    (about 27 GB in full; ``max_rows`` reads fewer) at ``revision`` (a hub commit; None: the commit
    pinned at the first download, see :func:`pinned_revision`); every kept image is written to the
    cache as it arrives, so memory holds one row, and an index of the complete pairs is written at the
    end: later builds read neither the hub nor the set.
    """
    from dso_cli.models.packaged import cache_root

    revision = pinned_revision(dataset, revision)
    key = hashlib.sha1(f"{dataset}|{max_rows}|{segment}|{revision}".encode()).hexdigest()[:16]
    root = cache_root() / "social_counterfactuals" / key
    index = root / "pairs.json"
    if not index.is_file():
        _index_social_counterfactuals(dataset, root, max_rows=max_rows, segment=segment, revision=revision)
    rows = json.loads(index.read_text())
    pairs: dict[str, list[PersonPair]] = {}
    for row in rows:
        pairs.setdefault(row["occupation"], []).append(
            PersonPair(row["occupation"], str(root / row["male"]), str(root / row["female"]), row["key"])
        )
    if not pairs:
        raise DsoError(f"{dataset}: no gender pairs of the benchmark's occupations (segment {segment!r})")
    return pairs


def pairs_from_either(
    image_dir: str | None, dataset: str, rng: random.Random, *, max_rows: int | None, revision: str | None
) -> dict[str, list[PersonPair]]:
    """``bias.source=auto``: the local ``image_dir`` when one is given, else the SocialCounterfactuals
    images of ``dataset`` (streamed once into the cache, at most ``max_rows`` rows read). Offline with
    neither a folder nor a cached read, one line names both ways."""
    if image_dir:
        return pairs_from_image_dir(image_dir, rng)
    try:
        return pairs_from_social_counterfactuals(dataset, rng, max_rows=max_rows, revision=revision)
    except DsoError as exc:
        raise DsoError(
            "the image version of bias=occupation needs pictures of the people: pass bias.image_dir=PATH "
            f"(<occupation>/<male|female>/*.jpg), or go online once to stream the paper's SocialCounterfactuals "
            f"images from the hub ({dataset}, cached; bias.max_hub_rows bounds the read) "
            f"[{str(exc).split('; offline')[0]}]"
        ) from None


PINS = "pins.json"
"""``hub id -> commit`` under ``<cache>/social_counterfactuals/``: the revision each dataset was first read at."""


def pinned_revision(dataset: str, revision: str | None) -> str | None:
    """The hub commit ``dataset`` is read at: ``revision`` if given, else the commit pinned when this
    cache first read the dataset, else the hub's current commit, which is then pinned. A dataset that
    changes on the hub therefore never changes under later runs (or under a run's later verbs);
    ``bias.hub_revision=<commit>`` moves to another one deliberately. A local copy (a directory) has
    no revision: its files are the pin."""
    from dso_cli.models.packaged import cache_root

    if revision is not None or Path(dataset).exists():
        return revision
    if dataset.startswith(("/", ".", "~")) or dataset.count("/") != 1:
        raise DsoError(f"cannot load {dataset}: no such directory, and not a hub id (owner/name)")
    pins_file = cache_root() / "social_counterfactuals" / PINS
    pins = json.loads(pins_file.read_text()) if pins_file.is_file() else {}
    if dataset in pins:
        return pins[dataset]
    try:
        from huggingface_hub import HfApi

        sha = HfApi().dataset_info(dataset).sha
    except Exception as exc:  # offline, unknown or gated dataset
        raise DsoError(
            f"cannot resolve the revision of {dataset} ({first_line(exc)}); offline, use "
            "bias.source=image_dir bias.image_dir=PATH, or bias.hub_revision=<commit> with a cached download"
        ) from None
    if not sha:
        raise DsoError(f"the hub gave no commit for {dataset}; pass bias.hub_revision=<commit>")
    write_json(pins_file, {**pins, dataset: sha})
    return sha


def _index_social_counterfactuals(
    dataset: str, root: Path, *, max_rows: int | None, segment: str, revision: str | None
) -> None:
    known = {o.name for o in load_occupations()}
    try:
        stream = datasets.load_dataset(dataset, split="train", streaming=True, revision=revision)
        stream = stream.cast_column("image", datasets.Image(decode=False))
    except (OSError, ValueError) as exc:  # offline, unknown dataset, no such split or revision
        first = first_line(exc)
        raise DsoError(
            f"cannot load {dataset} ({first}); offline, use bias.source=image_dir bias.image_dir=PATH"
        ) from None
    saved: dict[tuple[str, str, str], dict[str, str]] = {}  # (occupation, set, a1) -> gender -> image file
    for i, row in enumerate(stream):
        if max_rows is not None and i >= max_rows:
            break
        if row["a2_type"] != "gender" or row["dataset_segment"] != segment or row["a2"] not in GENDERS:
            continue
        occupation = _caption_occupation(row["caption"], row["a1a2"])
        if occupation in known:
            group = (occupation, row["counterfactual_set"], row["a1"])
            stem = f"{row['counterfactual_set']}_{row['a1']}_{row['a2']}"
            saved.setdefault(group, {})[row["a2"]] = _save_image(root, stem, row["image"])
    rows = []
    for (occupation, cset, a1), files in sorted(saved.items()):
        if set(GENDERS) <= set(files):
            rows.append({"occupation": occupation, "key": f"{cset}/{a1}", **{g: files[g] for g in GENDERS}})
        else:  # a set without its other gender: no pair, no file kept
            for name in files.values():
                (root / name).unlink(missing_ok=True)
    write_json(root / "pairs.json", rows)


def _caption_occupation(caption: str, attributes: str) -> str | None:
    """ "A photo of a skinny male Civil Engineer" with attributes "skinny male" -> "civil engineer"."""
    _, sep, rest = caption.partition(f"{attributes} ")
    if not sep:
        return None
    return rest.strip().rstrip(".").lower() or None


def _save_image(root: Path, stem: str, image: dict) -> str:
    """Write an undecoded image once; returns its name relative to ``root``."""
    suffix = Path(image.get("path") or "x.jpg").suffix or ".jpg"
    name = f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', stem)}{suffix}"
    cache_image_bytes(image, root / "images" / name)
    return f"images/{name}"


def build_image_splits(
    pairs: dict[str, list[PersonPair]],
    *,
    n_train: int | None,
    n_train_unambiguous: int | None,
    val_pairs_per_occupation: int,
    test_pairs_per_occupation: int,
    heldout_occupations: Sequence[str],
    layout: str,
    rng: random.Random,
) -> datasets.DatasetDict:
    """Deal person pairs to splits per occupation (test, val, then train) and expand them into items."""
    if layout not in LAYOUTS:
        raise DsoError(f"bias.image_layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    occupations = load_occupations()
    known = {o.name: o for o in occupations}
    unknown = sorted(set(pairs) - set(known))
    if unknown:
        warnings.warn(f"occupation images: no BLS statistics for {', '.join(unknown)}; skipped", stacklevel=2)
    usable = {name: people for name, people in pairs.items() if name in known}
    if not usable:
        raise DsoError(f"no image folder names one of the benchmark's occupations (e.g. {next(iter(known))!r})")
    splits: dict[str, list[list[dict]]] = {s: [] for s in SPLITS}
    train: dict[bool, list[list[dict]]] = {True: [], False: []}
    for name in sorted(usable):
        people = list(usable[name])
        rng.shuffle(people)
        if name in heldout_occupations:
            dealt = {"heldout_occupations": people[:test_pairs_per_occupation]}
        else:
            n_test, n_val = test_pairs_per_occupation, val_pairs_per_occupation
            dealt = {"test": people[:n_test], "val": people[n_test : n_test + n_val], "train": people[n_test + n_val :]}
        for split, chosen in dealt.items():
            for pair in chosen:
                for ambiguous in (True, False):
                    for qtype in QUESTION_TYPES:
                        contrast = [o.name for o in occupations if o.majority != known[name].majority]
                        other_occ = rng.choice(contrast)
                        for holder in (None,) if ambiguous else GENDERS:
                            items = list(_items_for(pair, known[name], qtype, holder, layout, other_occ))
                            (train[ambiguous] if split == "train" else splits[split]).append(items)
    for ambiguous, wanted in ((True, n_train), (False, n_train_unambiguous)):
        rng.shuffle(train[ambiguous])
        have = 2 * len(train[ambiguous])
        if wanted is not None and wanted > have:
            kind = "ambiguous" if ambiguous else "unambiguous"
            warnings.warn(f"occupation images: only {have} {kind} training items, not {wanted}", stacklevel=2)
        splits["train"] += train[ambiguous][: None if wanted is None else wanted // 2]
    if not any(item["ambiguous"] for pair in splits["train"] for item in pair):
        raise DsoError("occupation images: no person pairs are left for training after val/test; add images")
    return splits_to_datasets({name: [item for pair in group for item in pair] for name, group in splits.items()})
