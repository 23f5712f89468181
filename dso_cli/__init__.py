"""dso: controllable bias mitigation for language models by Direct Steering Optimization."""

__version__ = "0.1.0"
