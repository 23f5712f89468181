"""A run directory from someone else executes nothing, and a run never writes over another one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dso_cli import targets
from dso_cli.errors import DsoError
from dso_cli.pipeline.runs import claim_run_dir, load_train_config, new_train_dir
from dso_cli.rl.checkpoint import load_checkpoint, save_checkpoint


class _Touch:
    """Unpickling this creates a file: what a hostile pickle would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture(autouse=True)
def _only_built_in_targets():
    targets.trust([])
    yield
    targets.trust([])


def test_checkpoint_with_code_is_refused_and_runs_nothing(tmp_path):
    pwned = tmp_path / "pwned"
    torch.save({"step": 1, "evil": _Touch(pwned)}, tmp_path / "checkpoint.pt")
    with pytest.raises(DsoError, match="refusing to load"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert not pwned.exists()


def test_own_checkpoint_round_trips_with_the_weights_only_loader(tmp_path):
    import random

    import numpy as np

    state = {
        "step": 3,
        "params": {"a": torch.randn(4)},
        "rng": {"python": random.Random(1).getstate(), "torch": torch.Generator().manual_seed(2).get_state()},
        "numpy": np.random.default_rng(0).bit_generator.state,
        "config": {"betas": (0.9, 0.999), "strength_mode": "fixed", "kl_text_coef": None},
    }
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")
    assert loaded["step"] == 3 and torch.equal(loaded["params"]["a"], state["params"]["a"])
    assert loaded["rng"]["python"] == state["rng"]["python"] and loaded["config"] == state["config"]


def test_a_garbled_checkpoint_is_one_line(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DsoError, match="not a readable checkpoint") as err:
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert "\n" not in str(err.value)


def test_targets_outside_dso_cli_need_the_users_trust():
    cfg = {"bias_benchmark": {"name": "x", "_target_": "dso_cli.benchmarks.occupation.build"},
           "reward": {"inner": [{"_target_": "torch.load", "_args_": ["evil.pt"]}]}}  # fmt: skip
    with pytest.raises(DsoError, match=r"reward\.inner\[0\]\._target_='torch.load'.*allow_targets=\[torch\]"):
        targets.check_targets(cfg)
    targets.trust(["mypkg"])
    assert targets.trusted("mypkg.bench.build") and targets.trusted("dso_cli.x")
    assert not targets.trusted("mypkgx.build") and not targets.trusted("torch.load")
    targets.trust(["torch"])
    targets.check_targets(cfg)  # trusted now: no error


def test_instantiate_checked_refuses_before_calling(tmp_path):
    pwned = tmp_path / "pwned"
    with pytest.raises(DsoError, match="outside dso_cli"):
        targets.instantiate_checked({"_target_": "os.system", "_args_": [f"touch {pwned}"]}, "reward")
    assert not pwned.exists()


def _write_run_config(run_dir: Path, **sections) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"model": {"name": "hf", "trust_remote_code": True}, "bias_benchmark": {"name": "occupation"}} | sections
    OmegaConf.save(OmegaConf.create(cfg), run_dir / "config.yaml")


def test_run_config_is_data(tmp_path):
    _write_run_config(tmp_path / "ok")
    assert load_train_config(tmp_path / "ok").model.trust_remote_code is False  # only from the command line
    _write_run_config(tmp_path / "hostile", bias_benchmark={"_target_": "torch.load", "_args_": ["x.pt"]})
    with pytest.raises(DsoError, match="outside dso_cli"):
        load_train_config(tmp_path / "hostile")
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "config.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(DsoError, match="not a config mapping"):
        load_train_config(tmp_path / "list")


def test_a_named_run_dir_is_never_written_over(tmp_path):
    fresh = tmp_path / "a" / "fresh"
    claim_run_dir(fresh, resume=False, overwrite=False)
    assert fresh.is_dir()
    claim_run_dir(fresh, resume=False, overwrite=False)  # empty: fine
    _write_run_config(fresh)
    (fresh / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(DsoError, match=r"interrupted run .*resume=true"):
        claim_run_dir(fresh, resume=False, overwrite=False)
    claim_run_dir(fresh, resume=True, overwrite=False)
    assert (fresh / "checkpoint.pt").is_file()
    claim_run_dir(fresh, resume=False, overwrite=True)  # a dso run: emptied
    assert not any(fresh.iterdir())
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    (other / "train.log").write_text("the output of this very command")
    claim_run_dir(other, resume=False, overwrite=False)  # files of no run: nothing to write over
    (other / "train_log.csv").write_text("step\n1\n")  # a run's file, without its config
    with pytest.raises(DsoError, match="is not empty: it holds a run"):
        claim_run_dir(other, resume=False, overwrite=False)
    with pytest.raises(DsoError, match="not a dso run directory"):
        claim_run_dir(other, resume=False, overwrite=True)
    assert (other / "thesis.tex").read_text() == "precious"


def test_new_run_dirs_started_together_are_distinct(tmp_path):
    cfg = OmegaConf.create({"outputs_root": str(tmp_path), "model": {"name": "m"}, "bias_benchmark": {"name": "b"}})
    made = [new_train_dir(cfg) for _ in range(3)]
    assert len(set(made)) == 3 and all(p.is_dir() for p in made)


def _items(ids):
    return [{"id": i} for i in ids]


def test_leakage_is_refused_and_named():
    from dso_cli.pipeline.leakage import check_no_leakage, training_record

    manifest = {"train_items": training_record(_items(["a", "b", "c"]))}
    assert check_no_leakage(manifest, {"test": _items(["x", "y"])}, [], _items(["c", "b", "a"])) is None
    with pytest.raises(DsoError, match=r"split test shares 1 of its 2 items .*bias.seed=1 redraws"):
        check_no_leakage(manifest, {"test": _items(["x", "a"])}, ["bias.seed=1"])
    with pytest.raises(DsoError, match="changes the training split"):  # no overlap, but another training split
        check_no_leakage(manifest, {"test": _items(["x"])}, ["bias_benchmark.n_train=8"], _items(["a", "d"]))
    note = check_no_leakage(manifest, {"test": _items(["x"])}, [], _items(["a", "d"]))
    assert note and "other training items" in note
    assert "records no training items" in check_no_leakage({}, {"test": _items(["a"])})


def test_a_larger_heldout_templates_split_is_allowed_a_larger_test_split_refused():
    """Each occupation split has its own RNG stream: more held-out templates leave the training split
    alone, while a larger test split takes pairs from the training pool and is refused."""
    from dso_cli.benchmarks.occupation import build
    from dso_cli.pipeline.leakage import check_no_leakage, training_record

    manifest = {"train_items": training_record(build()["train"].to_list())}
    wider = build(heldout_template_pairs_per_occupation=20)
    override = ["bias.heldout_template_pairs_per_occupation=20"]
    assert check_no_leakage(manifest, {"heldout_templates": wider["heldout_templates"].to_list()}, override,
                            wider["train"].to_list()) is None  # fmt: skip
    bigger = build(test_pairs_per_occupation=6)
    with pytest.raises(DsoError, match=r"bias\.test_pairs_per_occupation=6"):
        check_no_leakage(manifest, {"test": bigger["test"].to_list()}, ["bias.test_pairs_per_occupation=6"],
                         bigger["train"].to_list())  # fmt: skip


def _write_rows(path: str, split: str, n: int) -> None:
    import pandas as pd

    from dso_cli.pipeline.results import merge_into_csv

    rows = []
    for i in range(n):
        rows.append({"split": split, "alpha": i / n, "pob": float(i)})
        merge_into_csv(Path(path), pd.DataFrame(rows), ["split", "alpha"])


def test_two_writers_of_one_csv_keep_each_others_rows(tmp_path):
    """Two verbs recording rows into one run directory's CSV at once (e.g. sweeps of two splits):
    each rewrite re-reads the file under its lock, so no row is lost."""
    import multiprocessing

    import pandas as pd

    path = tmp_path / "sweep.csv"
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_write_rows, args=(str(path), split, 25)) for split in ("test", "val")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0]
    frame = pd.read_csv(path)
    assert sorted(frame.groupby("split").size().items()) == [("test", 25), ("val", 25)]
