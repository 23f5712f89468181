"""The one check before a ``trust_remote_code`` load of a local checkpoint: a dso export's modeling file
(written by :mod:`dso_cli.steering.export_modeling`) runs on load, so it must be the file exported."""

from __future__ import annotations

import json
from pathlib import Path

from dso_cli.errors import DsoError
from dso_cli.io import sha256_of

MODELING_FILE = "modeling_dso_export.py"


BIAS_MODULES_KEY = "dso_norm_bias_modules"  # config.json: the norms that get an added bias


RECORD_KEY = "dso_export"  # config.json: what was folded, from where, and how well it was verified


MODELING_SHA_KEY = "modeling_sha256"  # in the record: the modeling file as exported (checked before loading it)


def check_modeling_file(path: str | Path) -> None:
    """Refuse an exported checkpoint whose modeling file is not the one dso wrote: loading it runs it
    (``trust_remote_code``), so a copy changed after export must not be executed."""
    path = Path(path).expanduser()
    record = read_json(path / "config.json").get(RECORD_KEY)
    recorded = record.get(MODELING_SHA_KEY) if isinstance(record, dict) else None
    if recorded is None:
        return
    modeling = path / MODELING_FILE
    if not modeling.is_file() or sha256_of(modeling) != recorded:
        raise DsoError(
            f"{modeling} is not the modeling file dso exported (sha256 differs from config.json's "
            f"{RECORD_KEY}.{MODELING_SHA_KEY}); refusing to run it"
        )


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
