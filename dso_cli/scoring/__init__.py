"""Scoring: the option log-probabilities of decision items in one forward pass per batch (prompt
rendering, prefix trees over shared prompt tokens, tree attention, batched option paths).

``OptionScorer`` and ``policy`` are the package's interface; the modules beside them are its parts."""

from dso_cli.scoring.scorer import OptionScorer, ScoringStats, policy

__all__ = ["OptionScorer", "ScoringStats", "policy"]
