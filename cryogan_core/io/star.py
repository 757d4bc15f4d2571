"""RELION particle STAR files (3.0 legacy, 3.1, 4.0, 5.0): read and normalise
(:mod:`cryogan_core.io.star_write` writes them).

Reading gives one pandas frame with a row per particle in which the optics values have been
merged in per particle, with canonical columns in fixed units (Å, degrees, kV, mm, Å²), so
that the rest of the code never has to know which RELION version wrote the file:

=========================== ========= ==================================================
column                      dtype     meaning (default when absent from the file)
=========================== ========= ==================================================
``rlnOpticsGroup``          int64     1-based optics group (3.0: one per distinct optics)
``rlnImagePixelSize``       float64   Å/px (3.0: ``rlnDetectorPixelSize``·1e4/``rlnMagnification``)
``rlnImageSize``            int64     box in px (-1: unknown; ParticleImages fills it)
``rlnVoltage``              float64   kV (NaN only if absent and ``require_ctf=False``)
``rlnSphericalAberration``  float64   mm (as above)
``rlnAmplitudeContrast``    float64   Q0 (0.1, with a warning)
``rlnOriginXAngst/YAngst``  float64   Å (0; 3.0: ``rlnOriginX/Y`` px × pixel size, same sign)
``rlnDefocusU/V``           float64   Å, positive = underfocus (NaN if ``require_ctf=False``)
``rlnDefocusAngle``         float64   degrees (0)
``rlnPhaseShift``           float64   degrees (0)
``rlnCtfBfactor``           float64   Å² (0)
``rlnCtfScalefactor``       float64   (1)
``rlnAngleRot/Tilt/Psi``    float64   degrees, RELION ZYZ (only when present)
=========================== ========= ==================================================

Sources: RELION 5 ``src/jaz/single_particle/obs_model.cpp`` (``ObservationModel::loadSafely``;
required optics columns), ``src/ctf.cpp`` ``CTF::readByGroup`` (a value in the particle row
wins over the optics row), ``src/jaz/single_particle/io/star_converter.cpp`` (3.0 → 3.1:
optics groups from distinct voltage/Cs/Q0/pixel size, ``origin_Å = origin_px · angpix``),
``src/filename.cpp`` ``FileName::compose`` (``%06d@stack``, 1-based).
Parsing and writing use the ``starfile`` library; its errors become one-line
:class:`~cryogan_core.errors.InputError` messages.
"""

from __future__ import annotations

import linecache
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
from loguru import logger

from cryogan_core.errors import InputError

__all__ = [
    "ANGLE_COLUMNS",
    "pose_angles_deg",
    "ParticleStar",
    "read_particles",
    "PARTICLE_DEFAULTS",
    "constant_per_group",
    "parse_image_name",
    "format_image_name",
    "CANONICAL_FLOAT_COLUMNS",
    "CANONICAL_INT_COLUMNS",
]

#: Canonical float64 columns present in every ``ParticleStar.particles``.
CANONICAL_FLOAT_COLUMNS: tuple[str, ...] = (
    "rlnImagePixelSize",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnOriginXAngst",
    "rlnOriginYAngst",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnPhaseShift",
    "rlnCtfBfactor",
    "rlnCtfScalefactor",
)
#: Canonical int64 columns present in every ``ParticleStar.particles``.
CANONICAL_INT_COLUMNS: tuple[str, ...] = ("rlnOpticsGroup", "rlnImageSize")

#: RELION's Euler-angle columns (degrees, ZYZ), in the order of ``euler_to_matrix``'s input.
ANGLE_COLUMNS: tuple[str, ...] = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_DEFAULT_AMPLITUDE_CONTRAST = 0.1
#: Per-particle canonical columns synthesised when absent, with their default value (the
#: writer leaves such a column out again when every value is still the default).
PARTICLE_DEFAULTS: dict[str, float] = {
    "rlnOriginXAngst": 0.0,
    "rlnOriginYAngst": 0.0,
    "rlnDefocusAngle": 0.0,
    "rlnPhaseShift": 0.0,
    "rlnCtfBfactor": 0.0,
    "rlnCtfScalefactor": 1.0,
    "rlnDefocusU": np.nan,
    "rlnDefocusV": np.nan,
}
#: Columns that must hold numbers wherever they appear (checked row by row on read).
_NUMERIC_COLUMNS = frozenset(
    CANONICAL_FLOAT_COLUMNS
    + CANONICAL_INT_COLUMNS
    + ANGLE_COLUMNS
    + (
        "rlnOriginX",
        "rlnOriginY",
        "rlnMagnification",
        "rlnDetectorPixelSize",
        "rlnRandomSubset",
        "rlnImageDimensionality",
        "rlnCtfDataAreCtfPremultiplied",
        "rlnCtfDataArePhaseFlipped",
        "rlnCoordinateX",
        "rlnCoordinateY",
        "rlnClassNumber",
    )
)
#: 3.0 per-particle columns that move to the optics table on conversion.
_LEGACY_OPTICS_COLUMNS = (
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnMagnification",
    "rlnDetectorPixelSize",
    "rlnOpticsGroup",
)
#: A loop block with one of these columns is taken for a particle table.
_PARTICLE_SIGNATURE = frozenset(
    {"rlnImageName", "rlnDefocusU", "rlnAngleRot", "rlnAnglePsi", "rlnOriginX", "rlnOriginXAngst"}
)


@dataclass
class ParticleStar:
    """A particle table with its optics, as read from (or to be written to) a STAR file.

    Attributes:
        particles: one row per particle, ``RangeIndex``. Every column of the input particle
            table (after 3.0 → 3.1 conversion) plus every optics column merged in per
            particle, plus the canonical columns listed in this module's docstring.
        optics: one row per optics group (``rlnOpticsGroup`` 1-based int, ``rlnImagePixelSize``,
            ``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast``,
            ``rlnImageSize`` (-1 if unknown), plus any other optics columns of the file).
            For a 3.0 file it is synthesised: one group per distinct (pixel size, voltage,
            Cs, Q0, box).
        source_version: "3.0" (no ``data_optics``: RELION ≤ 3.0 layout), "3.1" (optics +
            particles; RELION 3.1 and 4.0) or "5.0" (the file says ``# version 50001``).
        path: the file it was read from.
        particle_columns: columns that belong in the particle table when writing, in order
            (the input's particle columns after 3.0 → 3.1 conversion: ``rlnOriginX/Y``
            became ``rlnOriginXAngst/YAngst``; voltage, Cs, Q0, magnification and detector
            pixel size moved to optics; ``rlnOpticsGroup`` added).
        derived_columns: canonical per-particle columns that the reader synthesised with
            their default values (e.g. ``rlnPhaseShift`` = 0). They are written only if the
            caller changed them.
    """

    particles: pd.DataFrame
    optics: pd.DataFrame
    source_version: str
    path: Path
    particle_columns: list[str]
    derived_columns: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        """Number of particles."""
        return len(self.particles)

    def with_particles(self, df: pd.DataFrame) -> "ParticleStar":
        """Same optics, version, path and column bookkeeping with new particle rows.

        Use it for subsets (``star.with_particles(star.particles[mask])``) and for added or
        modified columns. Columns the caller added are written as particle columns; changed
        optics-merged values are written to the optics table when they are constant within
        each optics group, else as particle columns (which RELION reads first).

        Args:
            df: the new particle table; must contain ``rlnOpticsGroup``. Its index is reset
                to a ``RangeIndex``.

        Raises:
            ValueError: ``rlnOpticsGroup`` is missing from ``df``.
        """
        if "rlnOpticsGroup" not in df.columns:
            raise ValueError("with_particles: the new table has no rlnOpticsGroup column")
        return ParticleStar(
            particles=df.reset_index(drop=True),
            optics=self.optics,
            source_version=self.source_version,
            path=self.path,
            particle_columns=list(self.particle_columns),
            derived_columns=list(self.derived_columns),
        )


def pose_angles_deg(particles: pd.DataFrame) -> np.ndarray:
    """The particles' RELION Euler angles as one array.

    Args:
        particles: table with ``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi`` (degrees,
            RELION ZYZ; e.g. ``ParticleStar.particles`` or a slice of it).

    Returns:
        ``(N, 3)`` float64 array ``[rot, tilt, psi]`` in degrees, the order
        ``physics.euler.euler_to_matrix`` takes.

    Raises:
        InputError: a column is missing (named). Readers check this with the file's name
            first (``read_particles(..., require_poses=True)``); this is the safety net.
    """
    missing = [c for c in ANGLE_COLUMNS if c not in particles.columns]
    if missing:
        raise InputError(f"particle table: no column {', '.join(missing)} (3D poses are needed)")
    return particles[list(ANGLE_COLUMNS)].to_numpy(np.float64)


# ----------------------------------------------------------------------------- image names


def parse_image_name(name: str) -> tuple[int, str]:
    """Split a RELION image name into its 1-based index and stack path.

    ``"000123@Extract/job007/a.mrcs"`` → ``(123, "Extract/job007/a.mrcs")``; a name without
    ``@`` is a single-image file: ``"img.mrc"`` → ``(1, "img.mrc")``
    (RELION ``FileName::decompose``, ``src/filename.cpp``).

    Raises:
        InputError: the index is not a positive integer (``abc@x.mrcs``, ``0@x.mrcs``) or the
            path is empty. The message starts with ``rlnImageName <name>:``; callers prefix
            the file and row.
    """
    text = str(name).strip()
    if "@" not in text:
        if not text:
            raise InputError("rlnImageName is empty")
        return 1, text
    idx_text, path = text.split("@", 1)
    if not path:
        raise InputError(f"rlnImageName {text}: no stack path after '@'")
    if not idx_text.isdigit() or int(idx_text) < 1:
        raise InputError(
            f"rlnImageName {text}: image index '{idx_text}' is not a positive integer "
            f"(expected NNNNNN@stack.mrcs, 1-based)"
        )
    return int(idx_text), path


def format_image_name(index_1based: int, path: str) -> str:
    """RELION image name ``"%06d@%s"`` for a 1-based index (``FileName::compose``).

    Raises:
        ValueError: ``index_1based`` < 1.
    """
    if int(index_1based) < 1:
        raise ValueError(f"format_image_name: index must be >= 1 (RELION is 1-based), got {index_1based}")
    return "%06d@%s" % (int(index_1based), path)


# ----------------------------------------------------------------------------- reading


def _read_blocks(path: Path, fname: str) -> dict[str, object]:
    """All data blocks of a STAR file (``starfile.read``), errors as InputError."""
    if not path.exists():
        raise InputError(f"{fname}: file not found")
    if not path.is_file():
        raise InputError(f"{fname}: not a file")
    # starfile reads lines through linecache and clears it only after a successful parse, so
    # a failed parse would leave stale lines that a later read of the same path would reuse.
    linecache.clearcache()
    try:
        blocks = starfile.read(path.absolute(), always_dict=True)
    except pd.errors.ParserError as exc:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        detail = (
            f"data row {m.group(2)} of a loop has {m.group(3)} fields where the rows above have {m.group(1)}"
            if m
            else str(exc).strip().splitlines()[-1]
        )
        raise InputError(f"{fname}: cannot parse the STAR file: {detail}") from None
    except UnicodeDecodeError:
        raise InputError(f"{fname}: not a STAR file (not text)") from None
    except ValueError as exc:
        if "Length mismatch" in str(exc):
            raise InputError(
                f"{fname}: cannot parse the STAR file: the first data row of a loop has a "
                f"different number of fields than the loop has columns ({exc})"
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "ValueError"
        raise InputError(f"{fname}: cannot parse the STAR file ({first})") from None
    except Exception as exc:  # noqa: BLE001 - starfile raises many types for bad syntax
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{fname}: cannot parse the STAR file ({msg})") from None
    finally:
        linecache.clearcache()
    if not blocks:
        raise InputError(f"{fname}: empty or not a STAR file (no data_ block)")
    return blocks


def _version_tag(path: Path, max_lines: int = 200) -> int | None:
    """The number in the first ``# version NNNNN`` comment (RELION writes it before blocks)."""
    pattern = re.compile(r"#\s*version\s+(\d+)")
    with open(path, encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh):
            if i >= max_lines:
                break
            m = pattern.match(line.strip())
            if m:
                return int(m.group(1))
    return None


def _as_frame(block: object) -> pd.DataFrame | None:
    """A loop block as is; a key-value block as a one-row frame; else None."""
    if isinstance(block, pd.DataFrame):
        return block
    if isinstance(block, dict) and block:
        return pd.DataFrame([block])
    return None


def _select_tables(blocks: dict[str, object], fname: str) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    """Pick (optics, particles) tables; optics is None for a legacy (≤ 3.0) file."""
    listed = [f"data_{k}" for k in blocks]
    names = ", ".join(listed[:6]) + (f", ... ({len(listed)} blocks)" if len(listed) > 6 else "")
    optics = _as_frame(blocks.get("optics"))
    particles = _as_frame(blocks.get("particles"))
    if optics is not None and particles is not None:
        return optics, particles
    if "optics" in blocks:
        raise InputError(f"{fname}: not a particle STAR file: it has data_optics but no data_particles table ({names})")
    loops = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    cands = [k for k, v in loops.items() if _PARTICLE_SIGNATURE & set(v.columns)]
    if len(cands) > 1:
        with_images = [k for k in cands if "rlnImageName" in loops[k].columns]
        cands = with_images if len(with_images) == 1 else cands
    if not cands:
        raise InputError(
            f"{fname}: not a particle STAR file: no table with particle columns such as "
            f"rlnImageName or rlnDefocusU ({names or 'no tables'})"
        )
    if len(cands) > 1:
        listed = ", ".join(f"data_{k}" for k in cands)
        raise InputError(
            f"{fname}: ambiguous particle STAR file: several particle tables ({listed}) and no "
            f"data_optics; expected data_optics + data_particles, or a single table"
        )
    return None, loops[cands[0]]


def _check_no_missing(df: pd.DataFrame, fname: str, table: str) -> None:
    """InputError at the first missing/NaN cell (starfile fills short rows with NaN)."""
    mask = df.isna().to_numpy()
    if not mask.any():
        return
    row, col = np.argwhere(mask)[0]
    where = "row" if table == "particles" else "data_optics row"
    raise InputError(
        f"{fname}: {where} {row + 1}: {df.columns[col]}: value is missing or NaN "
        f"(does that row have too few fields?)"
    )


def _numeric(df: pd.DataFrame, col: str, fname: str, where: str) -> np.ndarray:
    """Column as float64; InputError naming the first row that is not a number."""
    series = df[col]
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=np.float64)
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isnan(values))
    if bad.size:
        r = int(bad[0])
        raise InputError(f"{fname}: {where} {r + 1}: {col} {series.iloc[r]!r} is not a number")
    return values


def _integers(values: np.ndarray, col: str, fname: str, where: str) -> np.ndarray:
    """float64 → int64, InputError naming the first non-integral row."""
    bad = np.flatnonzero(values != np.round(values))
    if bad.size:
        r = int(bad[0])
        raise InputError(f"{fname}: {where} {r + 1}: {col} {values[r].item()!r} is not an integer")
    return values.astype(np.int64)


def _check_numeric_columns(df: pd.DataFrame, fname: str, where: str) -> pd.DataFrame:
    """Check that known numeric RELION columns hold numbers (else InputError naming the row).

    Numeric columns keep their dtype (int stays int) except the canonical int columns,
    which become int64 (InputError if a value is not integral).
    """
    out = df.copy()
    for col in df.columns:
        if col not in _NUMERIC_COLUMNS:
            continue
        vals = _numeric(df, col, fname, where)
        if col in CANONICAL_INT_COLUMNS:
            out[col] = _integers(vals, col, fname, where)
        elif not pd.api.types.is_numeric_dtype(df[col]):
            out[col] = vals
    return out


def _require(df: pd.DataFrame, cols: tuple[str, ...] | list[str], fname: str, why: str) -> None:
    """InputError naming the first of ``cols`` missing from ``df``."""
    for col in cols:
        if col not in df.columns:
            raise InputError(f"{fname}: column {col} is missing ({why})")


def _check_range(
    values: np.ndarray, ok: np.ndarray, col: str, fname: str, where: str, rule: str
) -> None:
    """InputError at the first row where ``ok`` is False."""
    bad = np.flatnonzero(~ok)
    if bad.size:
        r = int(bad[0])
        raise InputError(f"{fname}: {where} {r + 1}: {col} {values[r].item()!r} {rule}")


def _check_optics_values(table: pd.DataFrame, fname: str, where: str) -> None:
    """Physical sanity of optics-type columns wherever they live (row named)."""
    if "rlnImagePixelSize" in table.columns:
        v = table["rlnImagePixelSize"].to_numpy(np.float64)
        _check_range(v, np.isfinite(v) & (v > 0), "rlnImagePixelSize", fname, where, "must be > 0 Å")
    if "rlnVoltage" in table.columns:
        v = table["rlnVoltage"].to_numpy(np.float64)
        _check_range(v, np.isnan(v) | (v > 0), "rlnVoltage", fname, where, "must be > 0 kV")
    if "rlnAmplitudeContrast" in table.columns:
        v = table["rlnAmplitudeContrast"].to_numpy(np.float64)
        _check_range(v, (v >= 0) & (v < 1), "rlnAmplitudeContrast", fname, where, "must be in [0, 1)")
    if "rlnImageSize" in table.columns:
        v = table["rlnImageSize"].to_numpy(np.int64)
        _check_range(v, (v > 0) | (v == -1), "rlnImageSize", fname, where, "must be > 0 px")


def _merge_optics(particles: pd.DataFrame, optics: pd.DataFrame) -> pd.DataFrame:
    """Append every optics column not already in ``particles`` (particle value wins)."""
    table = optics.set_index("rlnOpticsGroup")
    cols = [c for c in table.columns if c not in particles.columns]
    if not cols:
        return particles
    extra = table.reindex(particles["rlnOpticsGroup"].to_numpy())[cols]
    extra.index = particles.index
    return pd.concat([particles, extra], axis=1)


def _read_v31(
    optics: pd.DataFrame, particles: pd.DataFrame, fname: str, require_ctf: bool
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """3.1+ layout → (particles with optics merged, optics, particle_columns)."""
    _require(optics, ["rlnOpticsGroup"], fname, "data_optics")
    optics = optics.copy()
    particles = particles.copy()
    particle_columns = list(particles.columns)
    ogroups = optics["rlnOpticsGroup"].to_numpy(np.int64)
    if len(np.unique(ogroups)) != len(ogroups):
        raise InputError(f"{fname}: data_optics: rlnOpticsGroup values are not unique ({list(ogroups)})")
    if "rlnOpticsGroup" not in particles.columns:
        if len(optics) != 1:
            raise InputError(
                f"{fname}: column rlnOpticsGroup is missing from data_particles "
                f"(the file has {len(optics)} optics groups)"
            )
        logger.warning(f"{fname}: data_particles has no rlnOpticsGroup; using the only optics group {ogroups[0]}")
        particles["rlnOpticsGroup"] = np.int64(ogroups[0])
        particle_columns.append("rlnOpticsGroup")
    pgroups = particles["rlnOpticsGroup"].to_numpy(np.int64)
    unknown = np.flatnonzero(~np.isin(pgroups, ogroups))
    if unknown.size:
        r = int(unknown[0])
        raise InputError(
            f"{fname}: row {r + 1}: rlnOpticsGroup {pgroups[r]} is not in data_optics "
            f"(groups {', '.join(map(str, ogroups))})"
        )
    for col, label in (("rlnImagePixelSize", "pixel size"), ("rlnVoltage", "kV"), ("rlnSphericalAberration", "mm")):
        if col in optics.columns or col in particles.columns:
            continue
        if col == "rlnImagePixelSize" or require_ctf:
            raise InputError(f"{fname}: data_optics: column {col} is missing ({label})")
        optics[col] = np.nan
    if "rlnAmplitudeContrast" not in optics.columns and "rlnAmplitudeContrast" not in particles.columns:
        logger.warning(f"{fname}: no rlnAmplitudeContrast; using {_DEFAULT_AMPLITUDE_CONTRAST}")
        optics["rlnAmplitudeContrast"] = _DEFAULT_AMPLITUDE_CONTRAST
    if "rlnImageSize" not in optics.columns and "rlnImageSize" not in particles.columns:
        optics["rlnImageSize"] = np.int64(-1)
    _check_optics_values(optics, fname, "data_optics row")
    return _merge_optics(particles, optics), optics, particle_columns


def constant_per_group(values: pd.Series, groups: np.ndarray) -> bool:
    """True when ``values`` takes a single value within each group (NaN counts as a value).

    Args:
        values: ``(n,)`` one column of the particle table (any dtype).
        groups: ``(n,)`` int group of each row (e.g. ``rlnOpticsGroup``).

    Returns:
        Whether the column could live in a per-group (optics) table.
    """
    return bool((values.groupby(groups).nunique(dropna=False) <= 1).all())


def _read_legacy(
    particles: pd.DataFrame, fname: str, require_ctf: bool
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """RELION ≤ 3.0 single-table layout → 3.1 (RELION ``star_converter.cpp``)."""
    n = len(particles)
    cols = particles.columns
    if "rlnImagePixelSize" in cols:
        pixel_A = particles["rlnImagePixelSize"].to_numpy(np.float64)
    elif "rlnDetectorPixelSize" in cols and "rlnMagnification" in cols:
        det_um = particles["rlnDetectorPixelSize"].to_numpy(np.float64)
        mag = particles["rlnMagnification"].to_numpy(np.float64)
        _check_range(mag, mag > 0, "rlnMagnification", fname, "row", "must be > 0")
        pixel_A = det_um * 1e4 / mag
    else:
        raise InputError(
            f"{fname}: no pixel size: a file without data_optics needs column rlnImagePixelSize, "
            f"or rlnDetectorPixelSize and rlnMagnification"
        )
    per_particle: dict[str, np.ndarray] = {"rlnImagePixelSize": pixel_A}
    for col in ("rlnVoltage", "rlnSphericalAberration"):
        if col in cols:
            per_particle[col] = particles[col].to_numpy(np.float64)
        elif require_ctf:
            raise InputError(f"{fname}: column {col} is missing (no data_optics, so it must be per particle)")
        else:
            per_particle[col] = np.full(n, np.nan)
    if "rlnAmplitudeContrast" in cols:
        per_particle["rlnAmplitudeContrast"] = particles["rlnAmplitudeContrast"].to_numpy(np.float64)
    else:
        logger.warning(f"{fname}: no rlnAmplitudeContrast; using {_DEFAULT_AMPLITUDE_CONTRAST}")
        per_particle["rlnAmplitudeContrast"] = np.full(n, _DEFAULT_AMPLITUDE_CONTRAST)
    if "rlnImageSize" in cols:
        per_particle["rlnImageSize"] = particles["rlnImageSize"].to_numpy(np.int64)
    else:
        per_particle["rlnImageSize"] = np.full(n, -1, dtype=np.int64)
    key = pd.DataFrame(per_particle)
    _check_optics_values(key, fname, "row")
    groups = key.groupby(list(key.columns), sort=False, dropna=False).ngroup().to_numpy(np.int64) + 1
    first = np.unique(groups, return_index=True)[1]
    # Column order = what _read_v31 gives when it re-reads the written file: columns absent
    # from the input (NaN voltage/Cs) go last, like the ones _read_v31 synthesises.
    present = {c: c in cols for c in ("rlnVoltage", "rlnSphericalAberration")}
    table: dict[str, np.ndarray | list[str]] = {
        "rlnOpticsGroup": np.arange(1, len(first) + 1, dtype=np.int64),
        "rlnOpticsGroupName": [f"opticsGroup{g}" for g in range(1, len(first) + 1)],
    }
    table.update({c: per_particle[c][first] for c in present if present[c]})
    table["rlnAmplitudeContrast"] = per_particle["rlnAmplitudeContrast"][first]
    table["rlnImagePixelSize"] = pixel_A[first]
    table["rlnImageDimensionality"] = np.full(len(first), 2, dtype=np.int64)
    optics = pd.DataFrame(table)
    for col in ("rlnMagnification", "rlnDetectorPixelSize"):
        if col not in cols:
            continue
        if constant_per_group(particles[col], groups):
            optics[col] = particles[col].to_numpy()[first]
        else:
            logger.warning(f"{fname}: {col} varies within an optics group; dropped (the pixel size is kept)")
    for col in present:
        if not present[col]:
            optics[col] = per_particle[col][first]
    optics["rlnImageSize"] = per_particle["rlnImageSize"][first]

    pieces: list[pd.Series] = []
    for col in cols:
        if col in _LEGACY_OPTICS_COLUMNS:
            continue
        if col in ("rlnOriginX", "rlnOriginY"):
            angst = col + "Angst"
            if angst in cols:
                continue
            # RELION star_converter.cpp: origin_Å = origin_px · angpix, same sign.
            origin_A = particles[col].to_numpy(np.float64) * pixel_A
            pieces.append(pd.Series(origin_A, index=particles.index, name=angst))
            continue
        pieces.append(particles[col])
    pieces.append(pd.Series(groups, index=particles.index, name="rlnOpticsGroup"))
    out = pd.concat(pieces, axis=1)
    particle_columns = list(out.columns)
    return _merge_optics(out, optics), optics, particle_columns


def _add_defaults(particles: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Add missing per-particle canonical columns with their defaults; cast canonical dtypes."""
    derived = [c for c in PARTICLE_DEFAULTS if c not in particles.columns]
    if derived:
        extra = pd.DataFrame({c: np.full(len(particles), PARTICLE_DEFAULTS[c]) for c in derived}, index=particles.index)
        particles = pd.concat([particles, extra], axis=1)
    for col in CANONICAL_FLOAT_COLUMNS + tuple(c for c in ANGLE_COLUMNS if c in particles.columns):
        particles[col] = particles[col].to_numpy(np.float64)
    for col in CANONICAL_INT_COLUMNS:
        particles[col] = particles[col].to_numpy(np.int64)
    return particles, derived


def read_particles(
    path: str | Path,
    require_ctf: bool = True,
    require_images: bool = False,
    require_poses: bool = False,
) -> ParticleStar:
    """Read a RELION particle STAR file of any version into a normalised :class:`ParticleStar`.

    Accepted layouts: RELION 3.1/4.0/5.0 (``data_optics`` + ``data_particles``, any block
    order, any number of optics groups) and RELION ≤ 3.0 (a single particle table such as
    ``data_``, ``data_images``, ``data_particles`` or ``data_model_class_1``, with voltage,
    Cs, Q0 and ``rlnMagnification``/``rlnDetectorPixelSize`` per particle and
    ``rlnOriginX/Y`` in pixels). See the module docstring for the canonical columns, units
    and defaults. Optics values are merged per particle; a value in the particle row wins
    over the optics row (RELION ``CTF::readByGroup``).

    Args:
        path: the STAR file. Error messages name it as given.
        require_ctf: require ``rlnDefocusU``/``rlnDefocusV`` per particle and voltage/Cs.
        require_images: require ``rlnImageName``.
        require_poses: require ``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi``.

    Returns:
        The :class:`ParticleStar`.

    Raises:
        InputError: missing/empty file; unparsable STAR (e.g. a row with an extra field);
            not a particle STAR (job.star, model.star, micrographs); a required column
            missing (named); a value that is missing (short row), NaN or not a number
            (file, column and 1-based particle row named); non-positive pixel size or
            voltage; Q0 outside [0, 1); an ``rlnOpticsGroup`` not in ``data_optics``; no
            particles.
    """
    path = Path(path)
    fname = str(path)
    blocks = _read_blocks(path, fname)
    optics_raw, particles_raw = _select_tables(blocks, fname)
    if len(particles_raw) == 0:
        raise InputError(f"{fname}: the particle table has no rows")
    _check_no_missing(particles_raw, fname, "particles")
    if optics_raw is not None:
        if len(optics_raw) == 0:
            raise InputError(f"{fname}: data_optics has no rows")
        _check_no_missing(optics_raw, fname, "optics")
    if require_images:
        _require(particles_raw, ["rlnImageName"], fname, "the particle images")
    if require_poses:
        _require(particles_raw, list(ANGLE_COLUMNS), fname, "3D poses")
    if require_ctf:
        _require(particles_raw, ["rlnDefocusU", "rlnDefocusV"], fname, "CTF, Å")
    particles_num = _check_numeric_columns(particles_raw, fname, "row")
    if optics_raw is not None:
        optics_num = _check_numeric_columns(optics_raw, fname, "data_optics row")
        particles, optics, particle_columns = _read_v31(optics_num, particles_num, fname, require_ctf)
        version = "5.0" if _version_tag(path) == 50001 else "3.1"
    else:
        particles, optics, particle_columns = _read_legacy(particles_num, fname, require_ctf)
        version = "3.0"
    _check_optics_values(particles_num, fname, "row")
    particles, derived = _add_defaults(particles)
    optics = optics.reset_index(drop=True)
    return ParticleStar(
        particles=particles.reset_index(drop=True),
        optics=optics,
        source_version=version,
        path=path,
        particle_columns=particle_columns,
        derived_columns=derived,
    )
