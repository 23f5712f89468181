"""The work of ``scripts/gpu_check.sh``: tiny models -> train/sweep in bf16 on CUDA -> throughput.

Prints one JSON line per model (train and sweep wall seconds through the CLI, scoring items/s in
process) and a summary; exits non-zero when CUDA is missing or any step fails. ``DSO_GPU_CHECK_DEVICE=cpu``
runs the same steps in float32 on the CPU (a dry run of the script itself).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dso_cli.benchmarks import build_benchmark, split_items  # noqa: E402
from dso_cli.models.loading import load_model  # noqa: E402
from dso_cli.scoring import OptionScorer  # noqa: E402
from tests.conftest import build_tiny_model, build_tokenizer  # noqa: E402
from tests.vlm_fixtures import VLM_FAMILIES, _bpe, save_tiny_vlm  # noqa: E402

OCCUPATIONS = ("nurse", "carpenter", "secretary", "mechanic", "cook", "janitor")
DEVICE = os.environ.get("DSO_GPU_CHECK_DEVICE", "cuda")
DTYPE = "bfloat16" if DEVICE.startswith("cuda") else "float32"
TRAIN = ["optimizer.steps=5", "optimizer.occupations_per_batch=2", "optimizer.unambiguous_per_batch=4",
         f"model.device={DEVICE}", f"model.dtype={DTYPE}", "scoring.batch_size=16"]  # fmt: skip


def image_dir(root: Path) -> Path:
    from PIL import Image

    for o, occupation in enumerate(OCCUPATIONS):
        for g, gender in enumerate(("male", "female")):
            folder = root / occupation / gender
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(4):
                Image.new("RGB", (64, 64), (40 * o % 255, 120 * g, 50 * i)).save(folder / f"{i}.png")
    return root


def dso(*args: str) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dso_cli.cli", *args], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"dso {args[0]} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def throughput(path: Path, bias: dict) -> float:
    """Items per second scored in bf16 on the GPU (three timed passes after a warm-up)."""
    loaded = load_model(str(path), device=DEVICE, dtype=DTYPE)
    scorer = OptionScorer(loaded.model, loaded.tokenizer, processor=loaded.processor, batch_size=32)
    items = split_items(build_benchmark(bias, {"name_or_path": str(path)}), "test")
    scorer.logprobs(items)
    synchronize()
    started = time.perf_counter()
    for _ in range(3):
        scorer.logprobs(items)
    synchronize()
    return 3 * len(items) / (time.perf_counter() - started)


def synchronize() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def main(out: Path) -> None:
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device")
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if DEVICE.startswith("cuda") else "cpu"
    print(f"gpu_check: {name}, {DTYPE}, torch {torch.__version__}", flush=True)
    images = image_dir(out / "people")
    bpe = _bpe()
    models = {family: save_tiny_vlm(family, out / family, bpe=bpe) for family in VLM_FAMILIES}
    tokenizer = build_tokenizer()
    build_tiny_model("llama", tokenizer).save_pretrained(out / "llama")
    tokenizer.save_pretrained(out / "llama")
    models["llama"] = out / "llama"
    results = []
    for family, path in models.items():
        is_vlm = family != "llama"
        sizes = (["bias.n_train=48", "bias.n_train_unambiguous=24", "bias.test_pairs_per_occupation=1",
                  "bias.val_pairs_per_occupation=1", f"bias.image_dir={images}"] if is_vlm
                 else ["bias.n_train=64", "bias.n_train_unambiguous=32"])  # fmt: skip
        run = out / f"run_{family}"
        train_s = dso("train", "model=hf", f"model.name_or_path={path}", f"run_dir={run}", *TRAIN, *sizes)
        sweep_s = dso("sweep", "alpha=[0,0.5,1]", f"run_dir={run}")
        bias = {"_target_": "dso_cli.benchmarks.occupation.build", "name": "occupation", "modality": "auto",
                "image_dir": str(images), "test_pairs_per_occupation": 1, "val_pairs_per_occupation": 1,
                "n_train": 48, "n_train_unambiguous": 24}  # fmt: skip
        row = {"model": family, "train_s": round(train_s, 1), "sweep_s": round(sweep_s, 1),
               "items_per_s": round(throughput(path, bias), 1)}  # fmt: skip
        print(json.dumps(row), flush=True)
        results.append(row)
    print(f"gpu_check: all {len(results)} models trained and swept in {DTYPE} on {DEVICE}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/gpu_check"))
