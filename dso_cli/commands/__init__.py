"""The verbs of the `dso` command, as plain functions of a composed config."""
