"""scripts/results_tables.py: every results table in the docs is what its CSV says, with where, when and
how it was measured; tables are formatted as the docs write numbers."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.cli_runner import load_script


@pytest.fixture(scope="module")
def tables():
    return load_script("results_tables")


def test_every_page_shows_what_its_data_says(tables):
    stale = [p.name for p in tables.pages() if tables.rendered(p) != p.read_text()]
    assert not stale, f"{stale}: run scripts/results_tables.py (make docs)"


def test_every_table_has_its_provenance_and_a_page(tables):
    shown = {m.group("name") for p in tables.pages() for m in tables.BLOCK.finditer(p.read_text())}
    names = {p.stem for p in tables.DATA.glob("*.yaml")}
    assert shown == names, "a results table without a page, or a page's table without data"
    for name in names:
        meta, rows = tables.load_table(name)
        assert not rows.empty and all(meta[key] for key in tables.PROVENANCE)


def test_cells_follow_the_docs_style(tables):
    row = {"pob": 0.1994, "pob_se": 0.0261, "ratio": 0.998, "label": "a |b| c", "gap": float("nan")}
    assert tables.format_cell("{pob:.3f}", row, se="pob_se") == ".199 ± .026"
    assert tables.format_cell("{ratio:.3f}", row, leading_zero=True) == "0.998"
    assert tables.format_cell("{label}", row) == "a \\|b\\| c"
    assert tables.format_cell("{pob:.3f} / {gap:.3f}", row) == "", "a cell with an unmeasured value is empty"
    assert tables.format_cell("{pob:.3f}", row, se="gap") == ".199", "an unmeasured SE is left out"


def test_collect_takes_a_runs_rows_and_provenance(tables, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "sweep.csv").write_text("alpha,split,pob,text_ppl\n0,test,0.2,40\n1,test,0.01,44\n1,val,0.3,41\n")
    env = {"git_commit": "0123456789abcdef", "torch_threads": 2, "platform": "Linux-x86_64", "gpu": None,
           "dtype": "torch.float32", "packages": {"torch": "2.13.0"}}  # fmt: skip
    (run / "env.json").write_text(json.dumps({**env, "git_commit": "fedcba9876543210"}))  # training's
    (run / "sweep_env.json").write_text(json.dumps(env))  # the sweep's own, preferred
    (run / "config.yaml").write_text("seed: 7\n")
    data = tmp_path / "data"
    data.mkdir()
    columns = [{"header": "ω", "cell": "{alpha:g}"}, {"header": "ppl ratio", "cell": "{text_ppl_ratio:.2f}"}]
    (data / "t.yaml").write_text(yaml.safe_dump({"ratios": ["text_ppl"], "columns": columns}))
    tables.collect("t", run / "sweep.csv", ["split=test"], "dso sweep", None, data=data)
    meta, rows = tables.load_table("t", data)
    assert list(rows["alpha"]) == [0, 1] and list(rows["text_ppl_ratio"]) == [1.0, 1.1]
    assert meta["commit"] == "`0123456`" and "seed=7" in meta["seeds"] and "float32" in meta["hardware"]
    page = tmp_path / "page.md"
    page.write_text("x\n<!-- results:t -->\nold\n<!-- /results:t -->\ny\n")
    text = tables.rendered(page, data)
    assert "| 1 | 1.10 |" in text and "[t.csv](data/t.csv)" in text and "old" not in text
    assert text.startswith("x\n<!-- results:t -->\n| ω |") and text.endswith("<!-- /results:t -->\ny\n")
    with pytest.raises(SystemExit, match="no row"):
        tables.collect("t", run / "sweep.csv", ["split=nope"], "dso sweep", None, data=data)
    (data / "t-view.yaml").write_text(yaml.safe_dump({"view_of": "t", "where": {"alpha": 1}, "columns": columns[:1]}))
    meta, rows = tables.load_table("t-view", data)
    assert list(rows["alpha"]) == [1] and meta["commit"] == "`0123456`", "a view: some rows, the source's provenance"
