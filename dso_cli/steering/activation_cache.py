"""A disk cache of recorded activations, keyed by everything that determines them.

An entry is a folder ``<root>/<benchmark>-<split>-<positions>-<key hash>/`` holding safetensors shards
of consecutive items and a ``manifest.json`` written last (its presence marks a complete entry). The
manifest is the key: the model (name and weight fingerprint), the items (count, ids and a hash of
their content), how prompts are rendered (chat template, system prompt, instruction), the recorded
``(where, module)`` keys, the token positions and the storage dtype. A request is served by a complete
entry that matches on everything and records at least the requested modules; otherwise the model runs
and a new entry is written, shard by shard (each shard atomic, so an interrupted extraction resumes at
the first missing shard and memory stays bounded by one shard).

Shards are named by their item range (``items-0000000-0000128.safetensors``). Tensor names in a
shard: ``{where}|{module}|{kind}`` (kind: ``pro``/``anti``, or ``prompt``) with ``rows|{kind}``
holding the number of rows per item (1 except for ``positions="all"``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import safe_open
from torch import Tensor

from dso_cli.errors import DsoError
from dso_cli.io import atomic_write, write_json
from dso_cli.models.fingerprint import model_fingerprint
from dso_cli.scoring import OptionScorer
from dso_cli.steering.activations import POSITIONS, Recorded, position_kinds

MANIFEST = "manifest.json"
FORMAT = 1
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

Key = tuple[str, str]  # ("output" | "input", module name)


def items_digest(items: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of what the model sees of the items and what labels them (order included)."""
    fields = ("id", "prompt", "answer_prefix", "options", "option_groups", "pro_option", "anti_option", "images")
    return _digest([{f: item.get(f) for f in fields} for item in items])


def _digest(data: Any) -> str:
    """sha256 of ``data`` as canonical JSON (sorted keys; anything else as its ``str``)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _tensor_name(key: Key, kind: str) -> str:
    return f"{key[0]}|{key[1]}|{kind}"


@dataclass(frozen=True)
class CacheRequest:
    """What determines the activations, apart from the module set: the lookup key."""

    model: Mapping[str, Any]  # name_or_path, fingerprint, dtype
    items_sha256: str
    rendering: Mapping[str, Any]
    positions: str
    dtype: str
    benchmark: str = ""
    split: str = ""

    def fields(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": dict(self.model),
            "items_sha256": self.items_sha256,
            "rendering": dict(self.rendering),
            "positions": self.positions,
            "dtype": self.dtype,
        }

    def folder_name(self, modules: Sequence[Key]) -> str:
        stem = "-".join(_slug(x) for x in (self.benchmark, self.split, self.positions) if x)
        return f"{stem}-{_digest({**self.fields(), 'modules': sorted(modules)})[:12]}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "_", text).strip("_") or "x"


class CacheEntry:
    """A complete entry on disk: its manifest, and loading of any of its modules."""

    def __init__(self, path: Path, manifest: Mapping[str, Any]) -> None:
        self.path, self.manifest = path, manifest

    @property
    def modules(self) -> list[Key]:
        return [(where, name) for where, name in self.manifest["modules"]]

    def load(self, keys: Sequence[Key]) -> Recorded:
        """The recorded rows of ``keys`` (float32), read only from the tensors asked for."""
        missing = [k for k in keys if k not in set(self.modules)]
        if missing:
            raise DsoError(f"{self.path} does not record {missing[0][1]} ({missing[0][0]})")
        kinds = self.manifest["kinds"]
        parts: dict[str, dict[Key, list[Tensor]]] = {kind: {k: [] for k in keys} for kind in kinds}
        counts: dict[str, list[Tensor]] = {kind: [] for kind in kinds}
        for shard in self.manifest["shards"]:
            with safe_open(str(self.path / shard["file"]), framework="pt") as f:
                for kind in kinds:
                    rows = f.get_tensor(f"rows|{kind}")
                    if len(rows) != shard["items"][1] - shard["items"][0]:
                        raise DsoError(f"{self.path / shard['file']}: holds {len(rows)} items, the manifest says "
                                       f"{shard['items']}; delete the entry and extract again")  # fmt: skip
                    counts[kind].append(rows)
                    for key in keys:
                        parts[kind][key].append(f.get_tensor(_tensor_name(key, kind)).float())
        values = {kind: {k: torch.cat(v) for k, v in per.items()} for kind, per in parts.items()}
        return Recorded(values, {kind: torch.cat(c) for kind, c in counts.items()})


def rendering_of(scorer: OptionScorer) -> dict[str, Any]:
    """How the scorer turns items into tokens (a different template or instruction changes activations)."""
    template = getattr(scorer.templater, "chat_template", None) if scorer.use_chat_template else None
    return {
        "chat_template_sha256": _digest(template) if template else None,
        "system_prompt": scorer.system_prompt,
        "chat_template_kwargs": scorer.chat_template_kwargs,
        "instruction": scorer.instruction,
    }


class ActivationCache:
    """Entries under ``root``; :meth:`get` loads a covering entry or records and writes a new one."""

    def __init__(self, root: str | Path, *, dtype: str = "float32", shard_items: int = 128) -> None:
        if not isinstance(shard_items, int) or isinstance(shard_items, bool) or shard_items < 1:
            raise DsoError(f"extract.shard_items={shard_items!r}: must be a positive integer")
        if dtype not in STORAGE_DTYPES:
            raise DsoError(f"extract.dtype={dtype!r}: expected one of {', '.join(STORAGE_DTYPES)}")
        self.root = Path(root)
        self.dtype = dtype
        self.shard_items = shard_items
        self.hits = 0
        self.writes = 0

    def request(
        self,
        scorer: OptionScorer,
        items: Sequence[Mapping[str, Any]],
        positions: str = "answer",
        *,
        benchmark: str = "",
        split: str = "",
    ) -> CacheRequest:
        """The key of ``items`` run through ``scorer``'s model at ``positions``, stored in this cache's dtype."""
        if positions not in POSITIONS:
            raise DsoError(f"extract.positions={positions!r}: expected one of {', '.join(POSITIONS)}")
        model = {
            "name_or_path": str(getattr(scorer.model, "name_or_path", "")),
            "fingerprint": model_fingerprint(scorer.model),
            "dtype": str(scorer.head.weight.dtype).removeprefix("torch."),
        }
        return CacheRequest(model, items_digest(items), rendering_of(scorer), positions, self.dtype, benchmark, split)

    def entries(self) -> list[CacheEntry]:
        """Complete entries, newest first."""
        found = []
        for manifest in self.root.glob(f"*/{MANIFEST}"):
            try:
                found.append(CacheEntry(manifest.parent, json.loads(manifest.read_text())))
            except (OSError, json.JSONDecodeError):
                continue  # a foreign or damaged file is not an entry
        return sorted(found, key=lambda e: e.path.stat().st_mtime, reverse=True)

    def find(self, request: CacheRequest, keys: Sequence[Key]) -> CacheEntry | None:
        """A complete entry with the same request that records every key in ``keys``."""
        fields = request.fields()
        for entry in self.entries():
            if all(entry.manifest.get(k) == v for k, v in fields.items()) and set(keys) <= set(entry.modules):
                return entry
        return None

    def get(
        self, request: CacheRequest, keys: Sequence[Key], n_items: int, record: Callable[[range], Recorded]
    ) -> tuple[Recorded, CacheEntry, bool]:
        """``(rows, entry, hit)``: from a covering entry, or recorded with ``record(item range)`` shard
        by shard into a new entry (resuming from the shards an interrupted run left)."""
        entry = self.find(request, keys)
        if entry is not None:
            self.hits += 1
            return entry.load(keys), entry, True
        entry = self.write(request, keys, n_items, record)
        return entry.load(keys), entry, False

    def write(
        self,
        request: CacheRequest,
        keys: Sequence[Key],
        n_items: int,
        record: Callable[[range], Recorded],
        extra: Mapping[str, Any] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> CacheEntry:
        """Record ``keys`` for ``n_items`` items shard by shard (skipping shards already on disk), then
        the manifest (the request, the modules, ``extra``): the entry is complete once it exists."""
        dtype = STORAGE_DTYPES[request.dtype]
        keys = list(dict.fromkeys(keys))
        path = self.root / request.folder_name(keys)
        kinds = list(position_kinds(request.positions))
        shards = []
        starts = list(range(0, n_items, self.shard_items))
        for number, start in enumerate(starts):
            span = range(start, min(n_items, start + self.shard_items))
            name = f"items-{span.start:07d}-{span.stop:07d}.safetensors"  # a resumed run reuses same spans only
            if not (path / name).is_file():  # shards of an interrupted run are kept
                rows = record(span)
                tensors = {f"rows|{kind}": rows.counts[kind].contiguous() for kind in kinds}
                for kind in kinds:
                    for key in keys:
                        tensors[_tensor_name(key, kind)] = rows.values[kind][key].to(dtype).contiguous()
                atomic_write(path / name, lambda tmp, t=tensors: safetensors.torch.save_file(t, str(tmp)))
            shards.append({"file": name, "items": [span.start, span.stop]})
            if progress:
                progress(number + 1, len(starts))
        manifest = {
            **request.fields(),
            "modules": [list(k) for k in keys],
            "kinds": kinds,
            "n_items": n_items,
            "benchmark": request.benchmark,
            "split": request.split,
            "shards": shards,
            **dict(extra or {}),
        }
        write_json(path / MANIFEST, manifest)
        self.writes += 1
        return CacheEntry(path, manifest)
