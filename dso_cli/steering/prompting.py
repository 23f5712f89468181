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

from dso_cli.config.group_schemas import PromptingOptions
from dso_cli.errors import DsoError
from dso_cli.models.loading import LoadedModel
from dso_cli.scoring import OptionScorer
from dso_cli.steering.affine import SteeringHandle
from dso_cli.steering.artifact import Artifact
from dso_cli.steering.method import FitJob, SteeringMethod

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


def instruction_of(tensors: Mapping[str, Tensor]) -> str:
    return bytes(tensors[KEY].to("cpu", torch.uint8).tolist()).decode("utf-8")


@contextmanager
def apply_instruction(
    scorer: OptionScorer, tensors: Mapping[str, Tensor], strength: float = 1.0
) -> Iterator[SteeringHandle]:
    """Prepend the instruction to every prompt ``scorer`` renders while the block runs (strength > 0)."""
    with scorer.instructed(instruction_of(tensors) if strength > 0 else None):
        yield SteeringHandle(min(strength, 1.0))


class Prompting(SteeringMethod):
    """A debiasing instruction prepended to every prompt (option: ``instruction``; null: the built-in one).

    It steers the prompt, not the model: it applies through the scorer (:meth:`OptionScorer.instructed`)."""

    name = "prompting"
    options_class = PromptingOptions
    strength = STRENGTH
    module_free = True

    def fit(self, job: FitJob) -> Artifact:
        return fit_prompting(job.loaded, self.options.instruction)

    @classmethod
    def apply(cls, model: nn.Module, tensors: Mapping[str, Tensor], strength: float):
        raise DsoError(
            "prompting changes the prompt, not the model: evaluate it through a scorer "
            "(dso_cli.evaluate, or artifact.steer(scorer, strength))"
        )

    @classmethod
    def steer(cls, scorer: OptionScorer, tensors: Mapping[str, Tensor], strength: float):
        return apply_instruction(scorer, tensors, strength)
