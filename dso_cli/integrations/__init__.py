"""Integrations with other tools (lm-evaluation-harness); each imports its tool only when used."""
