"""Fairness-vs-capability reports: Pareto tables (CSV, Markdown) and plots (PNG)."""
