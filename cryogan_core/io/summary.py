"""``summary.json``: the machine-readable numbers every command and job writes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cryogan_core.io.atomic import atomic_path


def _clean(value: Any) -> Any:
    """Make numpy/torch scalars, arrays and non-finite floats JSON-safe (NaN/inf -> None)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_summary(path: str | Path, values: dict[str, Any]) -> None:
    """Write ``values`` as pretty-printed JSON, atomically (temporary name + rename).

    numpy/torch scalars and arrays become plain numbers and lists; NaN and infinities
    become ``null`` so that every JSON reader accepts the file.

    Args:
        path: destination, usually ``<output dir>/summary.json``.
        values: the numbers to record (str keys).
    """
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(_clean(values), indent=2, sort_keys=True) + "\n")
