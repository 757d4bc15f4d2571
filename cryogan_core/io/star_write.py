"""Write RELION 3.1 / 4.0 / 5.0 particle STAR files (``data_optics`` then ``data_particles``).

The inverse of :func:`cryogan_core.io.star.read_particles`: a :class:`~cryogan_core.io.star.ParticleStar`
read from any RELION version is written back with the optics table RELION 3.1+ expects,
every input column kept, and floats in Python's shortest exact representation, so that
reading the file back gives the same values and dtypes. Layout as RELION's
``MetaDataTable::write`` (``src/metadata_table.cpp``): ``# version 30001`` (3.1, 4.0) or
``# version 50001`` (5.0) before each block. Uses the ``starfile`` library for the blocks;
the file is written to a temporary name and renamed (:func:`cryogan_core.io.atomic.atomic_path`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryogan_core.errors import InputError
from cryogan_core.io.atomic import atomic_path
from cryogan_core.io.star import PARTICLE_DEFAULTS, ParticleStar, constant_per_group

__all__ = ["INT_LABELS", "VERSION_TAGS", "write_particles"]

#: RELION labels of integer type: float columns with integral values are written as ints.
INT_LABELS = frozenset(
    {
        "rlnOpticsGroup",
        "rlnImageSize",
        "rlnImageDimensionality",
        "rlnRandomSubset",
        "rlnClassNumber",
        "rlnGroupNumber",
        "rlnNrOfSignificantSamples",
        "rlnCtfDataAreCtfPremultiplied",
        "rlnCtfDataArePhaseFlipped",
        "rlnNrOfFrames",
        "rlnHelicalTubeID",
    }
)
#: The ``# version`` tag RELION writes before each block, by RELION version.
VERSION_TAGS = {"3.1": 30001, "4.0": 30001, "5.0": 50001}


def _float_text(values: np.ndarray, col: str, table: str) -> list[str]:
    """Shortest exact text for each float (Python ``repr``: always has '.', 'e' or 'inf')."""
    bad = np.flatnonzero(np.isnan(values))
    if bad.size:
        raise ValueError(f"write_particles: {table} row {int(bad[0]) + 1}: {col} is NaN (RELION cannot read NaN)")
    return [float.__repr__(v) for v in values.tolist()]


def _object_text(series: pd.Series, col: str, table: str) -> list[object]:
    """Text for an object/string column: floats exact, bools as 0/1, the rest as ``str``."""
    out: list[object] = []
    for i, v in enumerate(series.tolist()):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            raise ValueError(f"write_particles: {table} row {i + 1}: {col} is missing")
        if isinstance(v, (bool, np.bool_)):
            out.append(int(v))
        elif isinstance(v, (float, np.floating)):
            out.append(float.__repr__(float(v)))
        elif isinstance(v, (int, np.integer)):
            out.append(int(v))
        else:
            out.append(str(v))
    return out


def _format_table(df: pd.DataFrame, table: str) -> pd.DataFrame:
    """Convert every column to ints or exact text so that starfile writes no rounding."""
    out: dict[str, object] = {}
    for col in df.columns:
        s = df[col]
        if pd.api.types.is_bool_dtype(s):
            out[col] = s.to_numpy().astype(np.int64)
        elif pd.api.types.is_integer_dtype(s):
            out[col] = s.to_numpy(np.int64)
        elif pd.api.types.is_float_dtype(s):
            v = s.to_numpy(np.float64)
            if col in INT_LABELS and np.isfinite(v).all() and (v == np.round(v)).all():
                out[col] = v.astype(np.int64)
            else:
                out[col] = np.array(_float_text(v, col, table), dtype=object)
        else:
            out[col] = np.array(_object_text(s, col, table), dtype=object)
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


def _block_text(name: str, df: pd.DataFrame) -> str:
    """One STAR loop block (``data_<name>``) via starfile, without its 'Created by' line."""
    text = starfile.to_string({name: df}, sep="\t")
    lines = text.splitlines()
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)
    return "\n".join(lines) + "\n"


def _differs_from_default(values: pd.Series, default: float) -> bool:
    """True when any value differs from ``default`` (NaN-aware)."""
    v = values.to_numpy(np.float64)
    if np.isnan(default):
        return bool((~np.isnan(v)).any())
    return bool((v != default).any())


def _split_for_writing(star: ParticleStar) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(optics table, particle table) to write, following the rules of :func:`write_particles`."""
    parts = star.particles
    if "rlnOpticsGroup" not in parts.columns:
        raise ValueError("write_particles: particles have no rlnOpticsGroup column")
    groups = parts["rlnOpticsGroup"].to_numpy(np.int64)
    optics = star.optics.copy().reset_index(drop=True)
    ogroups = optics["rlnOpticsGroup"].to_numpy(np.int64)
    missing = np.setdiff1d(np.unique(groups), ogroups)
    if missing.size:
        raise ValueError(f"write_particles: optics groups {list(missing)} are not in the optics table")
    optics_cols = [c for c in optics.columns if c != "rlnOpticsGroup"]
    as_particle: set[str] = set()
    for col in optics_cols:
        if col in star.particle_columns or col not in parts.columns:
            continue
        if not constant_per_group(parts[col], groups):
            as_particle.add(col)
            continue
        firsts = parts[["rlnOpticsGroup", col]].drop_duplicates("rlnOpticsGroup")
        value_of = dict(zip(firsts["rlnOpticsGroup"].to_numpy(np.int64).tolist(), firsts[col].tolist()))
        old = optics[col].tolist()
        new = [value_of.get(g, o) for g, o in zip(ogroups.tolist(), old)]
        if any(not (a == b or (a != a and b != b)) for a, b in zip(new, old)):
            optics[col] = pd.Series(new, index=optics.index)
    drop = [c for c in optics_cols if pd.api.types.is_float_dtype(optics[c]) and optics[c].isna().all()]
    if "rlnImageSize" in optics.columns and (optics["rlnImageSize"].to_numpy(np.float64) <= 0).all():
        drop.append("rlnImageSize")
    optics = optics.drop(columns=drop)

    out_cols = [c for c in star.particle_columns if c in parts.columns]
    derived = set(star.derived_columns)
    for col in parts.columns:
        if col in out_cols:
            continue
        if col in optics_cols and col not in as_particle:
            continue
        if col in derived and not _differs_from_default(parts[col], PARTICLE_DEFAULTS[col]):
            continue
        out_cols.append(col)
    return optics, parts[out_cols]


def write_particles(path: str | Path, star: ParticleStar, version: str = "3.1") -> None:
    """Write a RELION 3.1+ particle STAR file (``data_optics`` then ``data_particles``), atomically.

    Layout: ``# version 30001`` ("3.1", "4.0") or ``# version 50001`` ("5.0") before each
    block, as RELION writes. The optics table is ``star.optics`` (for a 3.0 input the
    synthesised one), with optics-merged values the caller changed copied back when they
    are constant within each group; columns that are NaN for every group and an unknown
    ``rlnImageSize`` (-1) are left out. The particle table is ``star.particle_columns``, then
    every other column of ``star.particles`` that is not optics-merged (caller-added
    columns, optics values that now vary within a group, and synthesised defaults the
    caller changed). Floats are written with Python's shortest exact representation, so
    reading the file back gives the same values and dtypes.

    Args:
        path: destination file (parent directories are created).
        star: the particle set.
        version: "3.1", "4.0" or "5.0".

    Raises:
        InputError: unsupported ``version``.
        ValueError: NaN or missing values in a column to be written, or particle optics
            groups missing from the optics table (a programming error).
    """
    if version not in VERSION_TAGS:
        raise InputError(f"unsupported STAR version '{version}' (use 3.1, 4.0 or 5.0)")
    tag = VERSION_TAGS[version]
    optics, particles = _split_for_writing(star)
    text = (
        f"\n# version {tag}\n\n"
        + _block_text("optics", _format_table(optics, "data_optics"))
        + f"\n# version {tag}\n\n"
        + _block_text("particles", _format_table(particles, "data_particles"))
    )
    with atomic_path(path) as tmp:
        tmp.write_text(text)
