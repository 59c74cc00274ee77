"""The one planning cache: plain records (batch searches, dataset plans) stored as JSON by one key, a hash of
everything that changes the result."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medseg.atomic import write_text_atomic
from medseg.errors import MedsegError


def cache_key(parts: Mapping[str, Any]) -> str:
    """Return the cache key of a result made from ``parts`` (plain data: model, patch, precision, device, budget, ...)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PlanningCache:
    """Planning results stored as JSON by key, so that a rerun with the same inputs does not plan again.

    Batch searches and dataset plans share it; DDP ranks share its file, so every write replaces it atomically.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError as err:
            raise MedsegError(f"planning cache {self.path} is not valid JSON ({err}): delete it to re-plan") from None

    def get(self, key: str) -> dict[str, Any] | None:
        """Return the record stored under ``key``, or None."""
        return self._read().get(key)

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        """Store ``record`` under ``key``, keeping the other entries."""
        entries = self._read()
        entries[key] = dict(record)
        write_text_atomic(self.path, json.dumps(entries, indent=2))
