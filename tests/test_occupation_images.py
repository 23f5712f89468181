"""The image version of the occupation benchmark: local folders and a SocialCounterfactuals-style set."""

import io
import random

import datasets
import pytest
from PIL import Image

from dso_cli.benchmarks.occupation import build
from dso_cli.benchmarks.occupation_images import _caption_occupation
from dso_cli.errors import DsoError

SIZES = dict(n_train=24, n_train_unambiguous=12, test_pairs_per_occupation=1, val_pairs_per_occupation=1)


def png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def social_counterfactuals(tmp_path):
    """A local parquet copy with the hub dataset's columns: 3 race sets x 4 occupations x 2 genders."""
    rows = {k: [] for k in ("image", "dataset_segment", "a1_type", "a2_type", "counterfactual_set", "caption",
                            "a1", "a2", "a1a2")}  # fmt: skip
    for o, occupation in enumerate(("Nurse", "carpenter", "secretary", "Mechanic", "astronaut")):
        for s, race in enumerate(("Asian", "Black", "White")):
            cset = f"a_photo_of_race_gender_{occupation.lower()}_{s}_1234"
            for g, gender in enumerate(("male", "female")):
                rows["image"].append({"bytes": png((40 * o, 90 * s, 120 * g)), "path": f"{cset}_{g}.png"})
                rows["dataset_segment"].append("race_gender")
                rows["a1_type"].append("race")
                rows["a2_type"].append("gender")
                rows["counterfactual_set"].append(cset)
                rows["caption"].append(f"A photo of a {race} {gender} {occupation}")
                rows["a1"].append(race)
                rows["a2"].append(gender)
                rows["a1a2"].append(f"{race} {gender}")
    # a physical-trait row (no gender partner in the race_gender segment): ignored
    extra = {"image": {"bytes": png((1, 2, 3)), "path": "x.png"}, "dataset_segment": "physical_gender",
             "a1_type": "physical", "a2_type": "gender", "counterfactual_set": "a_photo_of_physical_nurse_0_1",
             "caption": "A photo of a skinny male nurse", "a1": "skinny", "a2": "male",
             "a1a2": "skinny male"}  # fmt: skip
    for key, value in extra.items():
        rows[key].append(value)
    data = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    (tmp_path / "sc" / "data").mkdir(parents=True)
    data.to_parquet(str(tmp_path / "sc" / "data" / "train-00000-of-00001.parquet"))
    return tmp_path / "sc"


def test_social_counterfactuals_pairs_differ_in_gender_only(social_counterfactuals, tmp_path, monkeypatch):
    monkeypatch.setenv("DSO_CACHE", str(tmp_path / "cache"))
    splits = build(modality="image", source="social_counterfactuals", hub_dataset=str(social_counterfactuals),
                   heldout_occupations=[], **SIZES)  # fmt: skip
    test = splits["test"].to_list()
    assert {item["cluster"] for item in test} == {"nurse", "carpenter", "secretary", "mechanic"}  # no astronaut
    for item in test:
        male, female = (item["images"][item["option_groups"].index(g)] for g in ("male", "female"))
        assert male.endswith("_male.png") and female.endswith("_female.png")
        assert male.rsplit("_", 1)[0] == female.rsplit("_", 1)[0]  # same counterfactual set and race
    # the second build reads the cached index and images, not the dataset
    (social_counterfactuals / "data" / "train-00000-of-00001.parquet").unlink()
    again = build(modality="image", source="social_counterfactuals", hub_dataset=str(social_counterfactuals),
                  heldout_occupations=[], **SIZES)  # fmt: skip
    assert again["test"].to_list() == test


def test_social_counterfactuals_streams_to_disk_and_keeps_only_complete_pairs(social_counterfactuals, tmp_path,
                                                                               monkeypatch):  # fmt: skip
    """Images are written as rows arrive (memory holds one row, not the stream), and a set cut off by
    ``max_rows`` before its other gender leaves no file behind."""
    from dso_cli.benchmarks import occupation_images

    monkeypatch.setenv("DSO_CACHE", str(tmp_path / "cache"))
    written: list[str] = []
    save = occupation_images._save_image
    monkeypatch.setattr(occupation_images, "_save_image", lambda *a: written.append(a[1]) or save(*a))
    pairs = occupation_images.pairs_from_social_counterfactuals(str(social_counterfactuals), random.Random(0),
                                                                max_rows=7)  # fmt: skip
    assert sum(len(p) for p in pairs.values()) == 3 and len(written) == 7  # the 7th row is a lone male
    kept = sorted(f.name for f in (tmp_path / "cache").rglob("*.png"))
    assert len(kept) == 6 and not any(written[-1] in name for name in kept)


def test_a_file_that_is_not_an_image_is_one_line(tmp_path, monkeypatch):
    from dso_cli.benchmarks.occupation_images import composite

    monkeypatch.setenv("DSO_CACHE", str(tmp_path / "cache"))
    good, bad = tmp_path / "a.png", tmp_path / "b.jpg"
    good.write_bytes(png((1, 2, 3)))
    bad.write_text("not a picture")
    with pytest.raises(DsoError, match=r"cannot read the images .*b\.jpg \(UnidentifiedImageError"):
        composite(str(good), str(bad))


def test_image_benchmark_bad_input(tmp_path):
    with pytest.raises(DsoError, match=r"needs bias\.image_dir"):
        build(modality="image", source="image_dir", **SIZES)
    with pytest.raises(DsoError, match="does not exist"):
        build(modality="image", image_dir=str(tmp_path / "nope"), **SIZES)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DsoError, match="no <occupation>/male"):
        build(modality="image", image_dir=str(tmp_path / "empty"), **SIZES)
    with pytest.raises(DsoError, match=r"bias\.source"):
        build(modality="image", source="flickr", **SIZES)
    with pytest.raises(DsoError, match="cannot load"):
        build(modality="image", source="social_counterfactuals", hub_dataset=str(tmp_path / "missing"), **SIZES)
    with pytest.raises(DsoError, match="modality"):
        build(modality="audio", **SIZES)


def test_source_auto_takes_the_folder_else_the_hub(social_counterfactuals, tmp_path, monkeypatch):
    monkeypatch.setenv("DSO_CACHE", str(tmp_path / "cache"))
    from_hub = build(modality="image", hub_dataset=str(social_counterfactuals), heldout_occupations=[], **SIZES)
    explicit = build(modality="image", source="social_counterfactuals", hub_dataset=str(social_counterfactuals),
                     heldout_occupations=[], **SIZES)  # fmt: skip
    assert from_hub["test"].to_list() == explicit["test"].to_list()  # auto without a folder: the hub's images
    folder = tmp_path / "faces"
    for occupation in ("nurse", "carpenter"):
        for g, gender in enumerate(("male", "female")):
            (folder / occupation / gender).mkdir(parents=True)
            for k in range(3):
                (folder / occupation / gender / f"{k}.png").write_bytes(png((10 * k, 10 * g, 0)))
    local = build(modality="image", image_dir=str(folder), hub_dataset=str(tmp_path / "unused"),
                  heldout_occupations=[], **SIZES)  # fmt: skip
    assert all(path.startswith(str(folder)) for item in local["test"] for path in item["images"])


def test_source_auto_with_neither_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("DSO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DsoError) as caught:
        build(modality="image", hub_dataset=str(tmp_path / "unreachable"), **SIZES)
    message = str(caught.value)
    assert "bias.image_dir=PATH" in message and "SocialCounterfactuals" in message and "hub" in message
    assert "\n" not in message


def test_caption_occupation():
    assert _caption_occupation("A photo of a skinny male Civil Engineer", "skinny male") == "civil engineer"
    assert _caption_occupation("A photo of a nurse.", "Asian female") is None


def test_mmmu_from_local_parquet(tmp_path, monkeypatch):
    from dso_cli.benchmarks.mmmu import build as build_mmmu

    monkeypatch.setenv("DSO_CACHE", str(tmp_path / "cache"))
    rows = {
        "id": ["validation_Art_Theory_1", "validation_Math_2", "validation_Math_3"],
        "question": ["Which style is <image 2>, compared with <image 1>?", "2+2=?", "Explain <image 1>."],
        "options": ["['Baroque', 'Cubism', 'Pop art']", "['3', '4']", "[]"],
        "answer": ["B", "B", "x"],
        "question_type": ["multiple-choice", "multiple-choice", "open"],
        "image_1": [{"bytes": png((1, 2, 3)), "path": "a.png"}, None, {"bytes": png((3, 2, 1)), "path": "c.png"}],
        "image_2": [{"bytes": png((9, 9, 9)), "path": "b.png"}, None, None],
    }
    features = datasets.Features({k: datasets.Value("string") for k in ("id", "question", "options", "answer",
                                                                         "question_type")}
                                 | {"image_1": datasets.Image(), "image_2": datasets.Image()})  # fmt: skip
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "mmmu.parquet"))
    items = build_mmmu(data_files=str(tmp_path / "mmmu.parquet"))["test"].to_list()
    assert [item["id"] for item in items] == ["mmmu/validation_Art_Theory_1", "mmmu/validation_Math_2"]
    art, math = items
    assert art["cluster"] == "Art_Theory" and art["correct"] == 1 and art["options"] == [" A", " B", " C"]
    assert "(image 1)" in art["prompt"] and "(image 2)" in art["prompt"] and "<image" not in art["prompt"]
    with Image.open(art["images"][0]) as first:  # images in the order the question names them
        assert first.getpixel((0, 0)) == (9, 9, 9)
    assert math["images"] == [] and math["options"] == [" A", " B"]


def test_a_hub_dataset_is_pinned_to_the_commit_of_its_first_read(tmp_path, monkeypatch):
    """The first read pins the hub's current commit; later reads use the pin even when the hub moved
    on (or is unreachable); an explicit revision wins; a local copy has no revision."""
    import huggingface_hub

    from dso_cli.benchmarks.occupation_images import PINS, pinned_revision

    monkeypatch.setenv("DSO_CACHE", str(tmp_path / "cache"))
    hub = {"sha": "a" * 40}

    class FakeApi:
        def dataset_info(self, repo_id):
            if hub["sha"] is None:
                raise OSError("offline")
            return type("Info", (), {"sha": hub["sha"]})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert pinned_revision("Intel/SocialCounterfactuals", None) == "a" * 40
    hub["sha"] = "b" * 40  # the dataset changed on the hub
    assert pinned_revision("Intel/SocialCounterfactuals", None) == "a" * 40
    assert pinned_revision("Intel/SocialCounterfactuals", "c" * 40) == "c" * 40
    hub["sha"] = None
    assert pinned_revision("Intel/SocialCounterfactuals", None) == "a" * 40
    with pytest.raises(DsoError, match=r"cannot resolve the revision of other/set \(offline\)"):
        pinned_revision("other/set", None)
    assert pinned_revision(str(tmp_path), None) is None
    assert (tmp_path / "cache" / "social_counterfactuals" / PINS).is_file()
