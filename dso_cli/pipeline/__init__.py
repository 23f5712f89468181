"""The layer the verbs are thin wrappers over: a model and scorer from a config, a trained run located
and checked, the inputs a fit or an evaluation reads, and the result CSVs written row by row.
Verbs import from here (never from each other or from the CLI)."""
