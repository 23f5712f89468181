"""One evaluator over strengths × item sets × metrics, shared by ``dso sweep``, ``compare``, ``eval``,
``prune``, the trainer's validation and the library's :func:`dso_cli.evaluate`.

It scores the option policy once per strength, hands every metric the same :class:`Scores`, and
writes one row per strength whose columns are the metrics' own: a metric added to the list is a new
column everywhere, with no edit to the verbs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from dso_cli.benchmarks.neutral_text import TextCorpus
from dso_cli.benchmarks.schema import DecisionItem
from dso_cli.evaluation.association import PronounAssociation
from dso_cli.evaluation.decisions import DECISION_METRICS, ItemCounts
from dso_cli.evaluation.metric import Metric, ProbeScores, Scores, SequenceScores, compute_all
from dso_cli.evaluation.text import TEXT_METRICS, corpus_sequences, prompt_sequences, sequence_scores
from dso_cli.scoring import OptionScorer, policy
from dso_cli.steering.artifact import Artifact

OnRow = Callable[[dict[str, Any], Scores], None]


def default_metrics(*, text: bool = True, extra: Sequence[Metric] = ()) -> list[Metric]:
    """The built-in metrics of a result row (decision metrics, with ``text`` the text cost, the pronoun
    association outside the decision format), then the item counts, then ``extra`` (a user's own, after
    the built-in columns)."""
    return [*DECISION_METRICS, *(TEXT_METRICS if text else ()), PronounAssociation(), ItemCounts(), *extra]


class Evaluator:
    """Evaluates an artifact (None: the base model) at strengths on decision items with ``metrics``.

    ``prompt_items``: how many of each item set's prompts join the full-vocabulary KL (the ``prompts``
    sequences of :class:`Scores`); ``text_batch_size``: sequences per forward pass of the text cost.
    """

    def __init__(
        self,
        scorer: OptionScorer,
        metrics: Sequence[Metric] | None = None,
        *,
        bootstrap_reps: int = 1000,
        seed: int = 0,
        prompt_items: int = 0,
        text_batch_size: int = 8,
    ) -> None:
        self.scorer = scorer
        self.metrics = list(metrics) if metrics is not None else default_metrics(text=False)
        self.bootstrap_reps, self.seed = bootstrap_reps, seed
        self.prompt_items, self.text_batch_size = prompt_items, text_batch_size

    def base_policy(self, items: Sequence[DecisionItem], desc: str = "eval") -> Tensor:
        """The unsteered model's option probabilities on ``items`` (shared by every method's ω = 0)."""
        return self._policy(None, items, 0.0, f"{desc} base")

    def text_scores(
        self, artifact: Artifact | None, corpus: TextCorpus | None, strengths: Sequence[float], desc: str = "text"
    ) -> dict[float, SequenceScores]:
        """Per ω, the held-out neutral passages' scores (the ``text`` sequences); the same for every item
        set, so a verb measures them once per artifact. Empty without a corpus."""
        if corpus is None:
            return {}
        seqs = corpus_sequences(self.scorer, corpus)
        return sequence_scores(self.scorer, artifact, seqs, strengths, batch_size=self.text_batch_size,
                               desc=f"{desc} text")  # fmt: skip

    def evaluate(
        self,
        artifact: Artifact | None,
        items: Sequence[DecisionItem],
        strengths: Sequence[float],
        *,
        base: Tensor | None = None,
        text: Mapping[float, SequenceScores] | None = None,
        on_row: OnRow = lambda row, scores: None,
        desc: str = "eval",
    ) -> list[dict[str, Any]]:
        """One row per ω in ``strengths``: ``alpha`` and every metric's columns. ``base``: the base model's
        option probabilities on ``items`` when already known; ``text``: :meth:`text_scores` of this
        artifact. ``on_row(row, scores)`` runs as each row is measured (a verb writes it at once)."""
        if base is None:
            base = self.base_policy(items, desc)
        prompts = self._prompt_scores(artifact, items, strengths, desc)
        probes = {m.name: found for m in self.metrics if (found := m.probe_items(items))}
        rows = []
        for strength in tqdm(strengths, desc=desc, unit="strength"):
            probs = base if strength == 0.0 or artifact is None else self._policy(artifact, items, strength, desc)
            sequences = {}
            if text and strength in text:
                sequences["text"] = text[strength]
            if strength in prompts:
                sequences["prompts"] = prompts[strength]
            probed = {name: ProbeScores(found, self._policy(artifact, found, strength, f"{desc} {name}"))
                      for name, found in probes.items()}  # fmt: skip
            scores = Scores(items, probs, base, strength=strength, sequences=sequences, probes=probed,
                            bootstrap_reps=self.bootstrap_reps, seed=self.seed)  # fmt: skip
            row = {"alpha": strength, **compute_all(self.metrics, scores)}
            rows.append(row)
            on_row(row, scores)
        return rows

    def _policy(self, artifact: Artifact | None, items: Sequence[DecisionItem], strength: float, desc: str) -> Tensor:
        """The option policy on ``items`` at ``strength`` (the base model at 0 or without an artifact)."""
        if strength == 0.0 or artifact is None:
            return policy(self.scorer.logprobs(items, progress=desc)).cpu()  # the base model's
        with artifact.steer(self.scorer, strength):
            return policy(self.scorer.logprobs(items, progress=f"{desc} w={strength:g}")).cpu()

    def _prompt_scores(
        self, artifact: Artifact | None, items: Sequence[DecisionItem], strengths: Sequence[float], desc: str
    ) -> dict[float, SequenceScores]:
        if self.prompt_items <= 0:
            return {}
        seqs = prompt_sequences(self.scorer, items, self.prompt_items)
        if not seqs:
            return {}
        return sequence_scores(self.scorer, artifact, seqs, strengths, batch_size=self.text_batch_size,
                               desc=f"{desc} prompts")  # fmt: skip
