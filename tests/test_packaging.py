"""A plain (non-editable) install carries its Hydra configs and examples: ``dso`` works outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_non_editable_install_composes_every_verb_outside_the_checkout(tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site),
         str(ROOT)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import dso_cli; print(dso_cli.__file__)"], cwd=tmp_path, env=env,
                           check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert where.startswith(str(site))
    for verb in ("train", "sweep", "compare", "eval"):
        result = subprocess.run([sys.executable, "-m", "dso_cli.cli", verb, "--cfg", "job"], cwd=tmp_path, env=env,
                                capture_output=True, text=True)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"verb: {verb}" in result.stdout
    assert (site / "dso_cli" / "conf" / "steering_method" / "dso.yaml").is_file()
    wrote = subprocess.run([sys.executable, "-m", "dso_cli.cli", "examples"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert wrote.returncode == 0, wrote.stderr
    for example in ("decisions/hiring.jsonl", "lm_eval_tasks/dso_occupation_mc.yaml"):
        assert (tmp_path / "examples" / example).read_bytes() == (ROOT / "examples" / example).read_bytes()
