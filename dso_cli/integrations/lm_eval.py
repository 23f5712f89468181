"""``lm_eval --model dso``: lm-evaluation-harness's Hugging Face model with a ``dso`` artifact applied.

    lm_eval --model dso --model_args pretrained=MODEL,artifact=RUN/artifact,strength=0.5 --tasks ...

Any steering method works, not only DSO: a method that steers the model (DSO's ``a⊙h + b``, CAA, ITI,
LEACE, ...) is hooked in for the model's lifetime, and one that steers prompts (``prompting``) has its
instruction put before every request's context. lm-eval's own ``steered`` model type can only add
vectors. Registered under lm-eval's ``lm_eval.models`` entry point, and as ``dso`` in lm-eval's
registry when this module is imported (``dso_cli.integrations.lm_eval_plugin`` does that for
lm-eval versions that do not read entry points).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from dso_cli.errors import DsoError
from dso_cli.steering.artifact import Artifact

NAME = "dso"


class _Steered:
    """What :meth:`Artifact.steer` needs of a scorer: the model, and a way to put an instruction before
    every prompt (how a prompt-steering method applies)."""

    def __init__(self, lm: DsoLM) -> None:
        self.model = lm.model
        self._lm = lm

    @contextmanager
    def instructed(self, instruction: str | None) -> Iterator[None]:
        before, self._lm.instruction = self._lm.instruction, instruction
        try:
            yield
        finally:
            self._lm.instruction = before


@register_model(NAME)
class DsoLM(HFLM):
    """HFLM with a ``dso`` artifact applied at ``strength`` (``artifact=None`` or strength 0: the base
    model). The artifact is checked against the model (a tensor that does not fit is refused)."""

    def __init__(self, pretrained: Any, artifact: str | Artifact | None = None, strength: float = 1.0, **kwargs: Any):
        super().__init__(pretrained=pretrained, **kwargs)
        self.instruction: str | None = None
        self.strength = float(strength)
        self._steering = ExitStack()
        self.artifact = Artifact.load(artifact) if isinstance(artifact, str) else artifact
        if self.artifact is not None and self.strength != 0.0:
            if not self.artifact.method_class().module_free:
                self.artifact.check_fits(self.model)
            self._steering.enter_context(self.artifact.steer(_Steered(self), self.strength))

    def close(self) -> None:
        """Remove the steering (hooks or instruction); the model is the base model again."""
        self._steering.close()

    def _instructed(self, requests: list) -> list:
        if not self.instruction:
            return requests
        for request in requests:
            context, *rest = request.arguments
            request.arguments = (f"{self.instruction}\n\n{context}", *rest)
        return requests

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list:
        return super().loglikelihood(self._instructed(requests), disable_tqdm=disable_tqdm)

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list:
        return super().generate_until(self._instructed(requests), disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list:
        if self.instruction:
            raise DsoError("a prompt-steering artifact has no meaning for rolling log-likelihood (perplexity) tasks")
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
