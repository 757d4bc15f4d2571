"""RELION particles → a cryoSPARC ``.cs`` dataset, its ``.csg`` result group and float32 stacks.

The conversion table and its sources are in :mod:`cryogan_core.io.cryosparc`.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from loguru import logger

from cryogan_core.errors import InputError
from cryogan_core.io.atomic import atomic_path
from cryogan_core.io.cryosparc.format import (
    CS_VERSION,
    SLOT_FIELDS,
    euler_deg_to_rotvec,
    import_signature,
)
from cryogan_core.io.images import ParticleImages, resolve_image_path
from cryogan_core.io.mrc import StackWriter, open_stack
from cryogan_core.io.star import (
    ANGLE_COLUMNS,
    ParticleStar,
    parse_image_name,
)

#: alignments3D fields without a RELION counterpart, with the value we write (the doc's
#: "0 except alpha = 1 and class_posterior = 1"; class_ess = 1 as in real refinements).
_ALIGN_CONSTANTS = {
    "alignments3D/error": 0.0,
    "alignments3D/error_min": 0.0,
    "alignments3D/resid_pow": 0.0,
    "alignments3D/slice_pow": 0.0,
    "alignments3D/image_pow": 0.0,
    "alignments3D/cross_cor": 0.0,
    "alignments3D/alpha": 1.0,
    "alignments3D/alpha_min": 0.0,
    "alignments3D/weight": 0.0,
    "alignments3D/pose_ess": 0.0,
    "alignments3D/shift_ess": 0.0,
    "alignments3D/class_posterior": 1.0,
    "alignments3D/class_ess": 1.0,
}
_UNCONVERTED_RELION = ("rlnBeamTiltX", "rlnBeamTiltY", "rlnOddZernike", "rlnEvenZernike", "rlnMagMat00")
_READ_CHUNK = 1024




# ----------------------------------------------------------------------------- writing


@dataclass
class CryosparcExport:
    """What :func:`write_cryosparc_particles` wrote.

    Attributes:
        cs_path: the particle ``.cs`` (numpy format).
        csg_path: the ``.csg`` result group pointing to it (``metafile: '>name.cs'``).
        slots: the slots written, e.g. ``["blob", "ctf", "alignments3D"]``.
        n_particles: rows.
        stacks_written: float32 ``.mrcs`` stacks written for the export.
        stacks_reused: float32 ``.mrcs`` stacks already inside the output folder, referenced as they are.
    """

    cs_path: Path
    csg_path: Path
    slots: list[str]
    n_particles: int
    stacks_written: list[Path] = field(default_factory=list)
    stacks_reused: list[Path] = field(default_factory=list)


def _unique_stack_name(src: Path, used: set[str]) -> str:
    """``<stem>.mrcs`` for a source stack, with ``_2``, ``_3`` ... on name collisions."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", src.stem) or "stack"
    name, k = f"{stem}.mrcs", 1
    while name in used:
        k += 1
        name = f"{stem}_{k}.mrcs"
    used.add(name)
    return name


def _is_reusable(stack: Path, out_dir: Path) -> bool:
    """True for a float32 ``.mrcs`` that already lies inside ``out_dir``."""
    if stack.suffix != ".mrcs":
        return False
    try:
        stack.resolve().relative_to(out_dir.resolve())
    except ValueError:
        return False
    return open_stack(stack).dtype == np.float32


def _blob_columns(
    df: pd.DataFrame, star_name: str, project_dir: Path, out_dir: Path, stacks_dir: str
) -> tuple[dict[str, np.ndarray], list[Path], list[Path]]:
    """Write/reuse float32 stacks; return the blob slot columns and the stacks written/reused."""
    images = ParticleImages(df.copy(), project_dir, star_name)
    n = len(df)
    parsed = [parse_image_name(s) for s in df["rlnImageName"].astype(str).tolist()]
    index0 = np.array([p[0] - 1 for p in parsed], dtype=np.int64)
    codes, uniques = pd.factorize(pd.Series([p[1] for p in parsed], dtype=object), sort=False)
    pixel_A = df["rlnImagePixelSize"].to_numpy(np.float64)
    blob_path = np.empty(n, dtype=object)
    blob_idx = np.empty(n, dtype=np.int64)
    sig = np.empty(n, dtype=np.uint64)
    written: list[Path] = []
    reused: list[Path] = []
    used: set[str] = set()
    for u, rel in enumerate(uniques):
        rows = np.flatnonzero(codes == u)
        src = resolve_image_path(str(rel), project_dir)
        if _is_reusable(src, out_dir):
            target = src
            blob_idx[rows] = index0[rows]
            reused.append(src)
        else:
            target = out_dir / stacks_dir / _unique_stack_name(src, used)
            uniq, first = np.unique(index0[rows], return_index=True)
            reps = rows[first]
            with StackWriter(target, len(uniq), images.box, float(pixel_A[rows[0]])) as w:
                for start in range(0, len(reps), _READ_CHUNK):
                    w.write(start, images.read(reps[start : start + _READ_CHUNK]))
            blob_idx[rows] = np.searchsorted(uniq, index0[rows])
            written.append(target)
        rel_out = target.resolve().relative_to(out_dir.resolve())
        blob_path[rows] = ">" + rel_out.as_posix()
        sig[rows] = np.uint64(import_signature(target))
    cols = {
        "blob/path": blob_path,
        "blob/idx": blob_idx,
        "blob/shape": np.tile(np.array([images.box, images.box], dtype=np.int64), (n, 1)),
        "blob/psize_A": pixel_A,
        "blob/sign": np.full(n, -1.0),
        "blob/import_sig": sig,
    }
    return cols, written, reused


def _has_ctf(df: pd.DataFrame, star_name: str) -> bool:
    """True when every particle has a CTF (defocus, kV, Cs); InputError when only some do."""
    keys = ("rlnDefocusU", "rlnDefocusV", "rlnVoltage", "rlnSphericalAberration")
    if any(k not in df.columns for k in keys):
        return False
    vals = df[list(keys)].to_numpy(np.float64)
    nan = np.isnan(vals)
    if nan.all():
        return False
    if nan.any():
        column_empty = nan.all(axis=0)
        empty = np.flatnonzero(column_empty)
        if empty.size:  # a whole column (the reader adds absent ones as NaN)
            present = ", ".join(k for k, e in zip(keys, column_empty) if not e)
            raise InputError(f"{star_name}: column {keys[empty[0]]} is missing while {present} are given: a CTF needs all of them")
        r, c = np.argwhere(nan)[0]
        raise InputError(f"{star_name}: row {r + 1}: {keys[c]} is missing while other particles have a CTF")
    return True


def _ctf_slot(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """ctf slot columns from the canonical RELION columns (doc §5, CTF)."""
    n = len(df)
    odd = [c for c in _UNCONVERTED_RELION if c in df.columns]
    if odd:
        logger.warning(f"{', '.join(odd)} are not converted to cryoSPARC (ctf/tilt_A etc. are written as 0)")
    return {
        "ctf/type": np.full(n, "imported", dtype=object),
        "ctf/exp_group_id": df["rlnOpticsGroup"].to_numpy(np.int64) - 1,
        "ctf/accel_kv": df["rlnVoltage"].to_numpy(np.float64),
        "ctf/cs_mm": df["rlnSphericalAberration"].to_numpy(np.float64),
        "ctf/amp_contrast": df["rlnAmplitudeContrast"].to_numpy(np.float64),
        "ctf/df1_A": df["rlnDefocusU"].to_numpy(np.float64),
        "ctf/df2_A": df["rlnDefocusV"].to_numpy(np.float64),
        "ctf/df_angle_rad": np.deg2rad(df["rlnDefocusAngle"].to_numpy(np.float64)),
        "ctf/phase_shift_rad": np.deg2rad(df["rlnPhaseShift"].to_numpy(np.float64)),
        "ctf/scale": df["rlnCtfScalefactor"].to_numpy(np.float64),
        "ctf/scale_const": np.zeros(n),
        "ctf/shift_A": np.zeros((n, 2)),
        "ctf/tilt_A": np.zeros((n, 2)),
        "ctf/trefoil_A": np.zeros((n, 2)),
        "ctf/tetra_A": np.zeros((n, 4)),
        "ctf/anisomag": np.zeros((n, 4)),
        "ctf/bfactor": df["rlnCtfBfactor"].to_numpy(np.float64),
    }


def _alignments_slot(df: pd.DataFrame, star_name: str) -> dict[str, np.ndarray]:
    """alignments3D slot columns from RELION angles, origins (Å), half sets and classes."""
    n = len(df)
    angles = df[list(ANGLE_COLUMNS)].to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(angles).all(axis=1))
    if bad.size:
        raise InputError(f"{star_name}: row {int(bad[0]) + 1}: rlnAngleRot/Tilt/Psi are not finite")
    psize = df["rlnImagePixelSize"].to_numpy(np.float64)
    shift = np.stack([df["rlnOriginXAngst"].to_numpy(np.float64), df["rlnOriginYAngst"].to_numpy(np.float64)], axis=1)
    if "rlnRandomSubset" in df.columns:
        subset = pd.to_numeric(df["rlnRandomSubset"], errors="coerce").to_numpy(np.float64)
        bad = np.flatnonzero((subset != 1) & (subset != 2))
        if bad.size:
            r = int(bad[0])
            raise InputError(f"{star_name}: row {r + 1}: rlnRandomSubset {df['rlnRandomSubset'].iloc[r]} is not 1 or 2")
        split = subset.astype(np.int64) - 1
    else:
        logger.info(f"{star_name}: no rlnRandomSubset; alignments3D/split alternates 0, 1")
        split = np.arange(n, dtype=np.int64) % 2
    if "rlnClassNumber" in df.columns:
        cls = pd.to_numeric(df["rlnClassNumber"], errors="coerce").to_numpy(np.float64)
        bad = np.flatnonzero(~(cls >= 1) | (cls != np.round(cls)))
        if bad.size:
            r = int(bad[0])
            raise InputError(f"{star_name}: row {r + 1}: rlnClassNumber {df['rlnClassNumber'].iloc[r]} is not an integer >= 1")
        klass = cls.astype(np.int64) - 1
    else:
        klass = np.zeros(n, dtype=np.int64)
    cols = {
        "alignments3D/split": split,
        "alignments3D/shift": shift / psize[:, None],
        "alignments3D/pose": euler_deg_to_rotvec(angles),
        "alignments3D/psize_A": psize,
        "alignments3D/class": klass,
    }
    for key, value in _ALIGN_CONSTANTS.items():
        cols[key] = np.full(n, value)
    return cols


def _structured(columns: dict[str, np.ndarray], slots: list[str], n: int, rng: np.random.Generator) -> np.ndarray:
    """Assemble the structured array: ``uid`` then each slot's fields in :data:`SLOT_FIELDS` order."""
    descr: list[tuple] = [("uid", "<u8")]
    for slot in slots:
        for name, dtype, shape in SLOT_FIELDS[slot]:
            if dtype == "S":
                width = max(1, max((len(str(s).encode()) for s in columns[name]), default=1))
                dtype = f"|S{width}"
            descr.append((name, dtype, shape) if shape else (name, dtype))
    arr = np.zeros(n, dtype=np.dtype(descr))
    uid = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    while len(np.unique(uid)) != n:  # cryosparc-tools generate_uids: random, unique
        uid = np.concatenate([np.unique(uid), rng.integers(0, 2**64, size=n - len(np.unique(uid)), dtype=np.uint64)])
    arr["uid"] = uid
    for slot in slots:
        for name, dtype, _ in SLOT_FIELDS[slot]:
            values = columns[name]
            if dtype == "S":
                arr[name] = np.array([str(s).encode() for s in values], dtype=arr.dtype[name])
            else:
                arr[name] = values
    return arr


def _csg_text(name: str, cs_name: str, slots: list[str], n: int, title: str) -> str:
    """The ``.csg`` YAML (doc §2, "Complete particle example")."""
    created = datetime.datetime.now().isoformat(sep=" ")
    title = title.replace("'", "''")  # YAML single-quoted scalar
    lines = [
        f"created: {created}",
        "group:",
        f"  description: '{title}'",
        f"  name: {name}",
        f"  title: '{title}'",
        "  type: particle",
        "results:",
    ]
    for slot in sorted(slots):
        lines += [
            f"  {slot}:",
            f"    metafile: '>{cs_name}'",
            f"    num_items: {n}",
            f"    type: particle.{slot}",
        ]
    lines.append(f"version: {CS_VERSION}")
    return "\n".join(lines) + "\n"


def write_cryosparc_particles(
    star: ParticleStar,
    output_dir: str | Path,
    project_dir: str | Path | None = None,
    name: str = "particles",
    stacks_dir: str = "cryosparc_stacks",
    title: str = "Particles from cryogan",
    seed: int | None = None,
) -> CryosparcExport:
    """Write ``<name>.cs`` + ``<name>.csg`` (and float32 stacks) for cryoSPARC's Import Result Group.

    Slots: ``blob`` (always), ``ctf`` (when every particle has defocus, kV and Cs) and
    ``alignments3D`` (when ``rlnAngleRot/Tilt/Psi`` exist), each with every field of
    :data:`SLOT_FIELDS` and the dtypes of real cryoSPARC files (doc §1.2); conversions of
    doc §5 (pose = rotation vector of ``A(rot, tilt, psi)ᵀ``; ``shift`` px =
    ``rlnOrigin{X,Y}Angst`` / pixel size, same sign; ``split`` = ``rlnRandomSubset`` − 1,
    alternating 0/1 when absent; ``df_angle_rad``/``phase_shift_rad`` in radians;
    ``exp_group_id`` = ``rlnOpticsGroup`` − 1; ``ctf/type`` "imported"; ``blob/sign`` −1 as
    in every cryoSPARC dataset seen). Every stack becomes a float32 ``.mrcs`` in
    ``output_dir/stacks_dir`` holding only the images used (in index order); stacks that are
    already float32 ``.mrcs`` inside ``output_dir`` are referenced as they are.
    ``blob/path`` is ``'>'`` + the path relative to ``output_dir`` (relative to the
    ``.csg``, as in cryoSPARC exports), so the folder can be copied into the cryoSPARC
    project as a whole. The ``.cs`` is a plain numpy structured array (``np.save`` on a
    file object; strings ``|S<n>``; random unique 64-bit uids); the ``.csg`` is YAML with
    ``metafile: '>name.cs'``, ``num_items`` and ``type: particle.<slot>`` per slot. Files
    are written atomically, stacks first and the ``.csg`` last.

    Args:
        star: the particles (canonical columns of :func:`read_particles`) with ``rlnImageName``.
        output_dir: folder to write into (created).
        project_dir: RELION project directory that ``rlnImageName`` is relative to
            (default: the current directory).
        name: base name of the ``.cs``/``.csg`` files and of the output group.
        stacks_dir: sub-folder of ``output_dir`` for the stacks written.
        title: title/description of the result group.
        seed: seed of the uids (default: random, as cryoSPARC).

    Returns:
        A :class:`CryosparcExport`.

    Raises:
        InputError: no particles; no ``rlnImageName``; a stack missing or an index out of
            range (row named, from :class:`ParticleImages`); CTF present for only some
            particles; non-finite angles; ``rlnRandomSubset`` not 1/2; ``rlnClassNumber`` < 1.
        ValueError: ``name`` is not made of letters, digits and ``_``.
    """
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"write_cryosparc_particles: name must be letters, digits or '_', got {name!r}")
    out_dir = Path(output_dir)
    proj = Path(project_dir) if project_dir is not None else Path.cwd()
    star_name = str(star.path)
    df = star.particles
    if len(df) == 0:
        raise InputError(f"{star_name}: no particles to export")
    if "rlnImageName" not in df.columns:
        raise InputError(f"{star_name}: column rlnImageName is missing (needed: the particle images)")
    out_dir.mkdir(parents=True, exist_ok=True)
    columns, written, reused = _blob_columns(df, star_name, proj, out_dir, stacks_dir)
    slots = ["blob"]
    if _has_ctf(df, star_name):
        columns.update(_ctf_slot(df))
        slots.append("ctf")
    else:
        logger.warning(f"{star_name}: no CTF; the cryoSPARC export has no ctf slot")
    if all(c in df.columns for c in ANGLE_COLUMNS):
        columns.update(_alignments_slot(df, star_name))
        slots.append("alignments3D")
    arr = _structured(columns, slots, len(df), np.random.default_rng(seed))
    cs_path = out_dir / f"{name}.cs"
    csg_path = out_dir / f"{name}.csg"
    with atomic_path(cs_path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
    with atomic_path(csg_path) as tmp:
        tmp.write_text(_csg_text(name, cs_path.name, slots, len(df), title))
    logger.info(
        f"Wrote {cs_path} and {csg_path}: {len(df)} particles, slots {', '.join(slots)}, "
        f"{len(written)} stacks written, {len(reused)} reused"
    )
    return CryosparcExport(
        cs_path=cs_path,
        csg_path=csg_path,
        slots=slots,
        n_particles=len(df),
        stacks_written=written,
        stacks_reused=reused,
    )
