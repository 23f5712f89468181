"""Evaluation: :class:`Metric` objects over :class:`Scores`, and the one :class:`Evaluator` that runs
them over strengths and item sets (:mod:`.metric`, :mod:`.decisions`, :mod:`.text`, :mod:`.evaluator`)."""

from dso_cli.evaluation.decisions import DECISION_COLUMNS, DECISION_METRICS, decision_metrics
from dso_cli.evaluation.evaluator import Evaluator, default_metrics
from dso_cli.evaluation.metric import Metric, Scores, SequenceScores, load_metrics, metric_columns
from dso_cli.evaluation.text import (
    TEXT_METRICS,
    evaluate_sequences,
    evaluate_text,
    perplexity,
    prompt_sequences,
    sequence_scores,
)

__all__ = [
    "DECISION_COLUMNS", "DECISION_METRICS", "TEXT_METRICS", "Evaluator", "Metric", "Scores", "SequenceScores",
    "decision_metrics", "default_metrics", "evaluate_sequences", "evaluate_text", "load_metrics",
    "metric_columns", "perplexity", "prompt_sequences", "sequence_scores",
]  # fmt: skip
