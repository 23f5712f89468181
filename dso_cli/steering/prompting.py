"""The ``prompting`` baseline: a debiasing instruction prepended to every prompt.

It has no continuous knob: any strength > 0 prepends the instruction, 0 is the base model. The
instruction travels inside the artifact (as UTF-8 bytes in the safetensors file, and readable in the
manifest), so a run directory states exactly what was prompted.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from dso_cli.errors import DsoError
from dso_cli.models.loading import LoadedModel
from dso_cli.scoring import ACTIVE_INSTRUCTION
from dso_cli.steering.affine import SteeringHandle
from dso_cli.steering.artifact import APPLIERS, MODULE_FREE, Artifact

DEFAULT_INSTRUCTION = (
    "Treat people of all genders equally. Do not assume anyone's occupation, skills or role from their "
    "gender; when the text gives no evidence, do not favour either person."
)
STRENGTH = {
    "semantics": "0 = base prompt, > 0 = instruction prepended (on/off)",
    "range": [0, 1],
    "default_grid": "0:1:1",
}
KEY = "instruction.utf8"


def fit_prompting(loaded: LoadedModel, instruction: str | None = None) -> Artifact:
    text = (instruction or DEFAULT_INSTRUCTION).strip()
    if not text:
        raise DsoError("prompting needs a non-empty instruction")
    tensors = {KEY: torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)}
    return Artifact.create(
        "prompting", tensors, model=loaded.describe(), hyperparameters={"instruction": text}, strength=STRENGTH
    )


@contextmanager
def apply_instruction(
    model: nn.Module, tensors: Mapping[str, Tensor], strength: float = 1.0
) -> Iterator[SteeringHandle]:
    text = bytes(tensors[KEY].to("cpu", torch.uint8).tolist()).decode("utf-8")
    token = ACTIVE_INSTRUCTION.set(text if strength > 0 else None)
    try:
        yield SteeringHandle(min(strength, 1.0))
    finally:
        ACTIVE_INSTRUCTION.reset(token)


APPLIERS["prompting"] = apply_instruction
MODULE_FREE.add("prompting")
