"""cryoSPARC particle datasets (``.cs``) and result groups (``.csg``): read and write.

A ``.cs`` file is one numpy structured array saved with ``np.save`` (magic ``\\x93NUMPY``),
one row per particle, fields named ``<slot>/<field>`` (``blob/path``, ``ctf/df1_A``,
``alignments3D/pose`` ...) plus ``uid`` (``<u8``). cryosparc-tools ≥ 4.4 can also write a
compressed "CSDAT" container (magic ``\\x95CSDAT``); it is read through the optional
``cryosparc-tools`` package when installed. A ``.csg`` is a small YAML file that lists, per
slot, the ``.cs`` metafile holding it (``'>x.cs'`` = next to the ``.csg``).

Conversion to RELION (the conventions of pyem ``pyem/metadata/cryosparc2.py``, checked
against cryodrgn ``parse_pose_csparc``/``parse_pose_star``; see
``docs/cryosparc_interop.md`` §5 for the sources):

============================  =================================================================
cryoSPARC                     RELION (canonical columns of :func:`cryogan_core.io.star.read_particles`)
============================  =================================================================
``blob/path``, ``blob/idx``   ``rlnImageName`` = ``%06d@path`` with index ``idx + 1``
``blob/psize_A``              ``rlnImagePixelSize`` (Å)
``blob/shape`` ``[ny, nx]``   ``rlnImageSize`` (px; must be square)
``ctf/accel_kv``              ``rlnVoltage`` (kV)
``ctf/cs_mm``                 ``rlnSphericalAberration`` (mm)
``ctf/amp_contrast``          ``rlnAmplitudeContrast``
``ctf/df1_A``, ``df2_A``      ``rlnDefocusU``, ``rlnDefocusV`` (Å)
``ctf/df_angle_rad``          ``rlnDefocusAngle`` = deg(df_angle_rad)
``ctf/phase_shift_rad``       ``rlnPhaseShift`` = deg(phase_shift_rad)
``ctf/bfactor``               ``rlnCtfBfactor`` (Å²)
``ctf/scale``                 ``rlnCtfScalefactor``
``ctf/exp_group_id``          ``rlnOpticsGroup`` (0-based → 1-based; groups renumbered 1..K)
``alignments3D/pose``         ``rlnAngleRot/Tilt/Psi``: RELION's matrix ``A(rot, tilt, psi)`` is
                              ``R(pose)ᵀ``, ``R`` the rotation of the rotation vector ``pose``
                              (rad) (pyem ``expmap`` returns ``R(pose)ᵀ``, then ``rot2euler``)
``alignments3D/shift`` [x,y]  ``rlnOriginX/YAngst`` = shift (px) × ``alignments3D/psize_A``,
                              same sign (pyem ``shift[:,0] → rlnOriginX``)
``alignments3D/split``        ``rlnRandomSubset`` = split + 1
``alignments3D/class``        ``rlnClassNumber`` = class + 1
============================  =================================================================

Without 3D alignments, ``alignments2D/pose`` (a scalar angle in rad) gives ``rlnAnglePsi``
and ``alignments2D/shift`` the origins (pyem's 2D branch).

Paths: a ``blob/path`` that starts with ``>`` is relative to the folder of the ``.cs``/``.csg``
(cryoSPARC exports); any other relative path is relative to the cryoSPARC project directory
(searched in the ``.cs`` file's folder and its parents unless given). The resulting
``rlnImageName`` is relative to the RELION project directory when the stack lies inside it,
else absolute.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from loguru import logger
from scipy.spatial.transform import Rotation

from cryogan_core.errors import InputError
from cryogan_core.io.atomic import atomic_path
from cryogan_core.io.images import ParticleImages, resolve_image_path
from cryogan_core.io.mrc import StackWriter, open_stack
from cryogan_core.io.star import (
    CANONICAL_FLOAT_COLUMNS,
    CANONICAL_INT_COLUMNS,
    ParticleStar,
    format_image_name,
    parse_image_name,
)
from cryogan_core.physics.euler import euler_to_matrix, matrix_to_euler

__all__ = [
    "SLOT_FIELDS",
    "CS_VERSION",
    "CryosparcExport",
    "read_cs",
    "find_passthrough_files",
    "read_cryosparc_particles",
    "write_cryosparc_particles",
    "rotvec_to_euler_deg",
    "euler_deg_to_rotvec",
    "import_signature",
]

NUMPY_MAGIC = b"\x93NUMPY"
CSDAT_MAGIC = b"\x95CSDAT"
#: ``version`` written in ``.csg`` files (the version of the real examples in the doc).
CS_VERSION = "v4.4.1"

#: Fields we write per slot, as ``(name, dtype, shape)``; every field the interop doc lists
#: (§1.2, from real cryoSPARC files). ``blob/path`` is ``S<n>`` (n = longest path).
SLOT_FIELDS: dict[str, tuple[tuple[str, str, tuple[int, ...]], ...]] = {
    "blob": (
        ("blob/path", "S", ()),
        ("blob/idx", "<u4", ()),
        ("blob/shape", "<u4", (2,)),
        ("blob/psize_A", "<f4", ()),
        ("blob/sign", "<f4", ()),
        ("blob/import_sig", "<u8", ()),
    ),
    "ctf": (
        ("ctf/type", "S", ()),
        ("ctf/exp_group_id", "<u4", ()),
        ("ctf/accel_kv", "<f4", ()),
        ("ctf/cs_mm", "<f4", ()),
        ("ctf/amp_contrast", "<f4", ()),
        ("ctf/df1_A", "<f4", ()),
        ("ctf/df2_A", "<f4", ()),
        ("ctf/df_angle_rad", "<f4", ()),
        ("ctf/phase_shift_rad", "<f4", ()),
        ("ctf/scale", "<f4", ()),
        ("ctf/scale_const", "<f4", ()),
        ("ctf/shift_A", "<f4", (2,)),
        ("ctf/tilt_A", "<f4", (2,)),
        ("ctf/trefoil_A", "<f4", (2,)),
        ("ctf/tetra_A", "<f4", (4,)),
        ("ctf/anisomag", "<f4", (4,)),
        ("ctf/bfactor", "<f4", ()),
    ),
    "alignments3D": (
        ("alignments3D/split", "<u4", ()),
        ("alignments3D/shift", "<f4", (2,)),
        ("alignments3D/pose", "<f4", (3,)),
        ("alignments3D/psize_A", "<f4", ()),
        ("alignments3D/error", "<f4", ()),
        ("alignments3D/error_min", "<f4", ()),
        ("alignments3D/resid_pow", "<f4", ()),
        ("alignments3D/slice_pow", "<f4", ()),
        ("alignments3D/image_pow", "<f4", ()),
        ("alignments3D/cross_cor", "<f4", ()),
        ("alignments3D/alpha", "<f4", ()),
        ("alignments3D/alpha_min", "<f4", ()),
        ("alignments3D/weight", "<f4", ()),
        ("alignments3D/pose_ess", "<f4", ()),
        ("alignments3D/shift_ess", "<f4", ()),
        ("alignments3D/class_posterior", "<f4", ()),
        ("alignments3D/class", "<u4", ()),
        ("alignments3D/class_ess", "<f4", ()),
    ),
}
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
_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_DEFAULT_AMPLITUDE_CONTRAST = 0.1
_UNCONVERTED_CTF = ("ctf/shift_A", "ctf/tilt_A", "ctf/trefoil_A", "ctf/tetra_A", "ctf/anisomag")
_UNCONVERTED_RELION = ("rlnBeamTiltX", "rlnBeamTiltY", "rlnOddZernike", "rlnEvenZernike", "rlnMagMat00")
_STEM_PATTERN = re.compile(r"^(?:cryosparc_)?(?:P\d+_)?(J\d+)_(?:\d{3}_)?(.+)$")
_METAFILE_PATTERN = re.compile(r"metafile:\s*['\"]?(>?[^'\"\s,}]+)")
_READ_CHUNK = 1024


# ----------------------------------------------------------------------------- poses


def rotvec_to_euler_deg(pose_rad: np.ndarray) -> np.ndarray:
    """cryoSPARC ``alignments3D/pose`` rotation vectors → RELION Euler angles.

    RELION's matrix ``A(rot, tilt, psi)`` (model → image, :func:`euler_to_matrix`) equals
    ``R(pose)ᵀ`` where ``R(pose)`` is the rotation of the rotation vector (axis × angle,
    Rodrigues; ``scipy`` ``Rotation.from_rotvec``). Sources: pyem
    ``pyem/metadata/cryosparc2.py`` (``rot2euler(expmap(pose))`` with pyem's ``expmap`` =
    ``R(pose)ᵀ``), cryodrgn ``parse_pose_csparc`` (``expmap(pose).T``).

    Args:
        pose_rad: ``(n, 3)`` float rotation vectors in radians.

    Returns:
        ``(n, 3)`` float64 ``[rot, tilt, psi]`` in degrees (RELION's decomposition,
        ``Euler_matrix2angles``: rot, psi in (−180, 180], tilt in [0, 180]).

    Raises:
        ValueError: ``pose_rad`` is not ``(n, 3)``.
    """
    pose = np.asarray(pose_rad, dtype=np.float64)
    if pose.ndim != 2 or pose.shape[1] != 3:
        raise ValueError(f"rotvec_to_euler_deg: expected (n, 3) rotation vectors, got shape {pose.shape}")
    if len(pose) == 0:
        return np.zeros((0, 3))
    a = Rotation.from_rotvec(pose).as_matrix().transpose(0, 2, 1)
    return matrix_to_euler(torch.from_numpy(np.ascontiguousarray(a))).numpy()


def euler_deg_to_rotvec(angles_deg: np.ndarray) -> np.ndarray:
    """RELION Euler angles → cryoSPARC ``alignments3D/pose`` rotation vectors (inverse of
    :func:`rotvec_to_euler_deg`).

    ``pose`` is the rotation vector of ``A(rot, tilt, psi)ᵀ``, which equals
    ``Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_rotvec()`` (doc §5).

    Args:
        angles_deg: ``(n, 3)`` ``[rot, tilt, psi]`` in degrees (RELION ZYZ).

    Returns:
        ``(n, 3)`` float64 rotation vectors in radians (angle in [0, π]).

    Raises:
        ValueError: ``angles_deg`` is not ``(n, 3)``.
    """
    ang = np.asarray(angles_deg, dtype=np.float64)
    if ang.ndim != 2 or ang.shape[1] != 3:
        raise ValueError(f"euler_deg_to_rotvec: expected (n, 3) angles, got shape {ang.shape}")
    if len(ang) == 0:
        return np.zeros((0, 3))
    a = euler_to_matrix(torch.from_numpy(np.ascontiguousarray(ang))).numpy()
    return Rotation.from_matrix(a.transpose(0, 2, 1)).as_rotvec()


def import_signature(path: str | Path) -> int:
    """cryoSPARC's ``blob/import_sig`` of a file: the first 8 bytes of SHA-1 of its
    absolute path, little-endian (cryosparc-tools ``tools.get_import_signatures``).

    Returns:
        An int in [0, 2⁶⁴).
    """
    digest = hashlib.sha1(str(Path(path).absolute()).encode()).digest()
    return int.from_bytes(digest[:8], "little")


# ----------------------------------------------------------------------------- reading


def read_cs(path: str | Path) -> np.ndarray:
    """Read a ``.cs`` file as a 1-D numpy structured array (one row per item).

    Accepts the numpy format (``\\x93NUMPY``, what cryoSPARC writes to disk; loaded with
    ``np.load(max_header_size=2**30)`` because wide files exceed numpy's default header
    limit) and the compressed CSDAT format (``\\x95CSDAT``) when the optional
    ``cryosparc-tools`` is installed (``Dataset.load(...).to_records(fixed=True)``).

    Args:
        path: the ``.cs`` file.

    Returns:
        Structured array ``(n,)``; string fields are bytes (``S``).

    Raises:
        InputError: missing file, CSDAT without cryosparc-tools, not a ``.cs`` file, or not
            a 1-D structured array.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic == NUMPY_MAGIC:
        try:
            arr = np.load(path, allow_pickle=False, max_header_size=2**30)
        except (ValueError, OSError, EOFError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{path}: cannot read the .cs file ({first})") from None
    elif magic == CSDAT_MAGIC:
        arr = _read_csdat(path)
    else:
        raise InputError(f"{path}: not a cryoSPARC .cs file (neither numpy nor CSDAT format)")
    if arr.dtype.names is None or arr.ndim != 1:
        raise InputError(f"{path}: not a cryoSPARC .cs file (not a 1-D table with named fields)")
    return arr


def _read_csdat(path: Path) -> np.ndarray:
    """CSDAT → structured array through cryosparc-tools (optional dependency)."""
    try:
        from cryosparc.dataset import Dataset  # type: ignore[import-not-found]
    except ImportError:
        raise InputError(
            f"{path}: compressed cryoSPARC CSDAT format; install cryosparc-tools "
            f"(pip install cryosparc-tools) to read it, or re-save it in numpy format"
        ) from None
    try:
        return np.asarray(Dataset.load(str(path)).to_records(fixed=True))
    except Exception as exc:  # noqa: BLE001 - any failure of the optional reader
        raise InputError(f"{path}: cannot read the CSDAT .cs file ({exc})") from None


def _columns(arr: np.ndarray) -> dict[str, np.ndarray]:
    """Structured array → {field: column}; byte strings decoded to str (object)."""
    cols: dict[str, np.ndarray] = {}
    for name in arr.dtype.names or ():
        col = arr[name]
        if col.dtype.kind == "S":
            col = np.array([b.decode("utf-8", errors="replace") for b in col.tolist()], dtype=object)
        elif col.dtype.kind == "U":
            col = col.astype(object)
        cols[name] = np.asarray(col)
    return cols


def find_passthrough_files(cs_path: str | Path) -> list[Path]:
    """Passthrough ``.cs`` files that belong with ``cs_path``, found in its folder.

    Two rules (cryoSPARC's job-folder layout, doc §2):

    * a ``.csg`` in the same folder that lists ``cs_path`` as a metafile: its other
      metafiles (``'>x.cs'`` = same folder as the ``.csg``);
    * the naming ``[cryosparc_][P<n>_]J<n>_[NNN_]<name>.cs`` → ``*J<n>_passthrough_<name>.cs``
      (e.g. ``cryosparc_P12_J24_001_particles.cs`` → ``P12_J24_passthrough_particles.cs``).

    Args:
        cs_path: the main ``.cs`` file.

    Returns:
        Existing files other than ``cs_path``, without duplicates, ``.csg`` ones first.
    """
    cs_path = Path(cs_path)
    folder = cs_path.parent
    found: list[Path] = []

    def add(p: Path) -> None:
        """Keep ``p`` if it is an existing file other than the particles ``.cs`` and not already found."""
        if p.is_file() and p.absolute() != cs_path.absolute() and p.absolute() not in [f.absolute() for f in found]:
            found.append(p)

    for csg in sorted(folder.glob("*.csg")):
        try:
            text = csg.read_text(errors="replace")
        except OSError:
            continue
        metas = [m.group(1) for m in _METAFILE_PATTERN.finditer(text)]
        names = [Path(m.lstrip(">")).name for m in metas]
        if cs_path.name in names:
            for m in metas:
                add(csg.parent / m.lstrip(">"))
    m = _STEM_PATTERN.match(cs_path.stem)
    if m and not m.group(2).startswith("passthrough_"):
        for p in sorted(folder.glob(f"*{m.group(1)}_passthrough_{m.group(2)}.cs")):
            add(p)
    return found


def _merge_passthrough(
    main: dict[str, np.ndarray], main_name: str, extras: Sequence[tuple[dict[str, np.ndarray], str]]
) -> dict[str, np.ndarray]:
    """Add the fields of passthrough datasets that the main one lacks, joined on ``uid``."""
    out = dict(main)
    n = len(next(iter(main.values()))) if main else 0
    for cols, name in extras:
        new = [k for k in cols if k not in out and k != "uid"]
        if not new:
            continue
        if "uid" in main and "uid" in cols:
            uids = cols["uid"].astype(np.uint64)
            order = np.argsort(uids, kind="stable")
            sorted_uids = uids[order]
            if np.any(sorted_uids[1:] == sorted_uids[:-1]):
                dup = sorted_uids[1:][sorted_uids[1:] == sorted_uids[:-1]][0]
                raise InputError(f"{name}: uid {int(dup)} appears more than once")
            want = main["uid"].astype(np.uint64)
            pos = np.searchsorted(sorted_uids, want)
            pos_c = np.minimum(pos, max(len(sorted_uids) - 1, 0))
            ok = (pos < len(sorted_uids)) & (sorted_uids[pos_c] == want) if len(sorted_uids) else np.zeros(n, bool)
            if not ok.all():
                r = int(np.flatnonzero(~ok)[0])
                raise InputError(
                    f"{name}: {int((~ok).sum())} of the {n} particles of {main_name} are missing "
                    f"(first: row {r + 1}, uid {int(want[r])}); is it the passthrough of another job?"
                )
            take = order[pos_c]
        else:
            m = len(next(iter(cols.values())))
            if m != n:
                raise InputError(
                    f"{name}: {m} rows where {main_name} has {n}, and no uid column to join them"
                )
            take = np.arange(n)
        for k in new:
            out[k] = cols[k][take]
        logger.info(f"{main_name}: took {', '.join(sorted({k.split('/')[0] for k in new}))} from passthrough {name}")
    return out


def _decimal_float(values: np.ndarray) -> np.ndarray:
    """float32 → float64 through the shortest decimal that round-trips in float32.

    cryoSPARC stores optics values as float32: 300 kV stays 300.0, but Q0 0.07 becomes
    0.07000000029802322 in float64. This returns 0.07 (the value the user typed). Values
    are converted per distinct value (few for optics columns).
    """
    v = np.asarray(values)
    if v.dtype != np.float32:
        return v.astype(np.float64)
    uniq, inverse = np.unique(v, return_inverse=True)
    return uniq.astype(str).astype(np.float64)[inverse.reshape(-1)]


def _float_column(cols: dict[str, np.ndarray], key: str, fname: str) -> np.ndarray:
    """A scalar float field as float64; InputError at the first NaN/inf row."""
    v = np.asarray(cols[key])
    if v.ndim != 1:
        raise InputError(f"{fname}: field {key} has shape {v.shape[1:]} per row; expected a scalar")
    out = v.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        r = int(bad[0])
        raise InputError(f"{fname}: row {r + 1}: {key} is {out[r]} (not a finite number)")
    return out


def _vector_column(cols: dict[str, np.ndarray], key: str, width: int, fname: str) -> np.ndarray:
    """A vector field ``(n, width)`` as float64; InputError on bad shape or NaN/inf."""
    v = np.asarray(cols[key], dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != width:
        raise InputError(f"{fname}: field {key} has shape {v.shape[1:]} per row; expected ({width},)")
    bad = np.flatnonzero(~np.isfinite(v).all(axis=1))
    if bad.size:
        r = int(bad[0])
        raise InputError(f"{fname}: row {r + 1}: {key} {v[r].tolist()} is not finite")
    return v


def _search_bases(cs_dir: Path, cs_project_dir: Path | None) -> list[Path]:
    """Folders a project-relative ``blob/path`` is looked up in, in order."""
    if cs_project_dir is not None:
        return [Path(cs_project_dir).absolute()]
    d = cs_dir.absolute()
    return [d, *d.parents]


def _relion_name(abs_path: Path, project_dir: Path) -> str:
    """Stack path for ``rlnImageName``: relative to ``project_dir`` when inside it, else absolute."""
    proj = project_dir.absolute()
    try:
        return abs_path.relative_to(proj).as_posix()
    except ValueError:
        return abs_path.as_posix()


def _image_names(
    cols: dict[str, np.ndarray],
    fname: str,
    cs_dir: Path,
    cs_project_dir: Path | None,
    project_dir: Path,
    require_images: bool,
) -> np.ndarray:
    """``rlnImageName`` per row from ``blob/path`` and ``blob/idx`` (0-based → 1-based)."""
    paths = cols["blob/path"]
    idx = np.asarray(cols["blob/idx"]).astype(np.int64)
    bases = _search_bases(cs_dir, cs_project_dir)
    codes, uniques = pd.factorize(pd.Series(paths, dtype=object), sort=False)
    stack_names: list[str] = []
    missing: list[tuple[str, str]] = []
    for u, raw in enumerate(uniques):
        raw = str(raw)
        rel = raw[1:] if raw.startswith(">") else raw
        if not rel:
            r = int(np.flatnonzero(codes == u)[0])
            raise InputError(f"{fname}: row {r + 1}: blob/path is empty")
        cand_bases = ([cs_dir.absolute()] if raw.startswith(">") else []) + bases
        hit = None
        if Path(rel).is_absolute():
            hit = Path(rel) if Path(rel).is_file() else None
        else:
            for base in cand_bases:
                if (base / rel).is_file():
                    hit = base / rel
                    break
        if hit is None:
            where = (
                "an absolute path"
                if Path(rel).is_absolute()
                else (f"looked in {cs_project_dir}" if cs_project_dir is not None else f"looked in {cs_dir.absolute()} and its parent folders")
            )
            if require_images:
                r = int(np.flatnonzero(codes == u)[0])
                raise InputError(
                    f"{fname}: row {r + 1}: blob/path {raw}: stack not found ({where}; give the "
                    f"cryoSPARC project directory with --cs_project_dir)"
                )
            missing.append((raw, where))
            stack_names.append(rel)
        else:
            stack_names.append(_relion_name(hit.absolute(), project_dir))
    if missing:
        logger.warning(
            f"{fname}: {len(missing)} of {len(uniques)} stacks not found (first: {missing[0][0]}, "
            f"{missing[0][1]}); rlnImageName keeps the cryoSPARC path"
        )
    if any(n.endswith(".mrc") for n in stack_names):
        logger.info(f"{fname}: stacks end in .mrc; cryogan reads them, RELION programs want .mrcs (symlink them)")
    bad = np.flatnonzero(idx < 0)
    if bad.size:
        r = int(bad[0])
        raise InputError(f"{fname}: row {r + 1}: blob/idx {idx[r]} is negative")
    return np.array(
        [format_image_name(int(i) + 1, stack_names[c]) for i, c in zip(idx.tolist(), codes.tolist())], dtype=object
    )


def _pixel_size(cols: dict[str, np.ndarray], fname: str) -> np.ndarray:
    """Per-row pixel size in Å from blob/psize_A (else alignments3D/2D psize_A)."""
    for key in ("blob/psize_A", "alignments3D/psize_A", "alignments2D/psize_A"):
        if key in cols:
            _float_column(cols, key, fname)  # shape and finiteness
            v = _decimal_float(cols[key])
            bad = np.flatnonzero(~(v > 0))
            if bad.size:
                r = int(bad[0])
                raise InputError(f"{fname}: row {r + 1}: {key} {v[r]} must be > 0 Å")
            return v
    raise InputError(f"{fname}: no pixel size: field blob/psize_A is missing (give the passthrough .cs with the blob slot)")


def _image_size(cols: dict[str, np.ndarray], n: int, fname: str) -> np.ndarray:
    """Per-row box from ``blob/shape`` ``[ny, nx]`` (must be square), or -1 when absent."""
    if "blob/shape" not in cols:
        return np.full(n, -1, dtype=np.int64)
    shape = np.asarray(cols["blob/shape"]).astype(np.int64).reshape(n, -1)
    if shape.shape[1] != 2:
        raise InputError(f"{fname}: field blob/shape has {shape.shape[1]} values per row; expected [ny, nx]")
    bad = np.flatnonzero((shape[:, 0] != shape[:, 1]) | (shape[:, 0] <= 0))
    if bad.size:
        r = int(bad[0])
        raise InputError(f"{fname}: row {r + 1}: blob/shape {shape[r].tolist()}: images must be square with a positive size")
    return shape[:, 0]


def _ctf_columns(
    cols: dict[str, np.ndarray], n: int, fname: str, require_ctf: bool
) -> tuple[dict[str, np.ndarray], list[str]]:
    """RELION CTF columns (Å, degrees, kV, mm, Å²) and the list of defaults synthesised."""
    needed = ("ctf/df1_A", "ctf/df2_A", "ctf/accel_kv", "ctf/cs_mm")
    absent = [k for k in needed if k not in cols]
    out: dict[str, np.ndarray] = {}
    derived: list[str] = []
    if absent and require_ctf:
        raise InputError(
            f"{fname}: field {absent[0]} is missing (CTF needed); give the passthrough .cs that "
            f"holds the ctf slot (--in_parts_passthrough)"
        )
    if absent:
        for col in ("rlnDefocusU", "rlnDefocusV"):
            out[col] = np.full(n, np.nan)
            derived.append(col)
    else:
        out["rlnDefocusU"] = _float_column(cols, "ctf/df1_A", fname)
        out["rlnDefocusV"] = _float_column(cols, "ctf/df2_A", fname)
    for key, col in (("ctf/accel_kv", "rlnVoltage"), ("ctf/cs_mm", "rlnSphericalAberration")):
        out[col] = _decimal_float(cols[key]) if key in cols else np.full(n, np.nan)
    v = out["rlnVoltage"]
    bad = np.flatnonzero(~np.isnan(v) & ~(v > 0))
    if bad.size:
        raise InputError(f"{fname}: row {int(bad[0]) + 1}: ctf/accel_kv {v[bad[0]]} must be > 0 kV")
    if "ctf/amp_contrast" in cols:
        q0 = _decimal_float(cols["ctf/amp_contrast"])
        bad = np.flatnonzero(~((q0 >= 0) & (q0 < 1)))
        if bad.size:
            raise InputError(f"{fname}: row {int(bad[0]) + 1}: ctf/amp_contrast {q0[bad[0]]} must be in [0, 1)")
        out["rlnAmplitudeContrast"] = q0
    else:
        if not absent:
            logger.warning(f"{fname}: no ctf/amp_contrast; using {_DEFAULT_AMPLITUDE_CONTRAST}")
        out["rlnAmplitudeContrast"] = np.full(n, _DEFAULT_AMPLITUDE_CONTRAST)
    for key, col, default, conv in (
        ("ctf/df_angle_rad", "rlnDefocusAngle", 0.0, np.rad2deg),
        ("ctf/phase_shift_rad", "rlnPhaseShift", 0.0, np.rad2deg),
        ("ctf/bfactor", "rlnCtfBfactor", 0.0, None),
        ("ctf/scale", "rlnCtfScalefactor", 1.0, None),
    ):
        if key in cols:
            v = _float_column(cols, key, fname)
            out[col] = conv(v) if conv is not None else v
        else:
            out[col] = np.full(n, default)
            derived.append(col)
    odd = [k for k in _UNCONVERTED_CTF if k in cols and np.any(np.asarray(cols[k], dtype=np.float64) != 0)]
    if odd:
        logger.warning(f"{fname}: {', '.join(odd)} are non-zero and are not converted (RELION columns left out)")
    return out, derived


def _pose_columns(cols: dict[str, np.ndarray], n: int, fname: str, pixel_A: np.ndarray) -> dict[str, np.ndarray]:
    """Angles, origins (Å), half sets and classes from alignments3D (else alignments2D)."""
    out: dict[str, np.ndarray] = {}
    if "alignments3D/pose" in cols:
        slot = "alignments3D"
        pose = _vector_column(cols, "alignments3D/pose", 3, fname)
        angles = rotvec_to_euler_deg(pose)
        for i, col in enumerate(_ANGLES):
            out[col] = angles[:, i]
    elif "alignments2D/pose" in cols:
        slot = "alignments2D"
        psi = np.rad2deg(_float_column(cols, "alignments2D/pose", fname))
        out["rlnAnglePsi"] = 180.0 - np.mod(180.0 - psi, 360.0)  # wrapped to (-180, 180]
    else:
        return out
    if f"{slot}/shift" in cols:
        shift_px = _vector_column(cols, f"{slot}/shift", 2, fname)
        psize = _decimal_float(cols[f"{slot}/psize_A"]) if f"{slot}/psize_A" in cols else pixel_A
        out["rlnOriginXAngst"] = shift_px[:, 0] * psize
        out["rlnOriginYAngst"] = shift_px[:, 1] * psize
    if f"{slot}/split" in cols:
        split = np.asarray(cols[f"{slot}/split"]).astype(np.int64)
        bad = np.flatnonzero((split != 0) & (split != 1))
        if bad.size:
            raise InputError(f"{fname}: row {int(bad[0]) + 1}: {slot}/split {split[bad[0]]} is not 0 or 1")
        out["rlnRandomSubset"] = split + 1
    if f"{slot}/class" in cols:
        out["rlnClassNumber"] = np.asarray(cols[f"{slot}/class"]).astype(np.int64) + 1
    return out


def _optics_groups(
    key: pd.DataFrame, exp_group: np.ndarray
) -> tuple[np.ndarray, pd.DataFrame]:
    """1-based contiguous optics groups from (exp_group_id, optics values); the optics table."""
    frame = key.copy()
    frame.insert(0, "_exp", exp_group)
    codes = frame.groupby(list(frame.columns), sort=True, dropna=False).ngroup().to_numpy(np.int64)
    groups = codes + 1
    first = np.unique(groups, return_index=True)[1]
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": np.arange(1, len(first) + 1, dtype=np.int64),
            "rlnOpticsGroupName": [f"opticsGroup{g}" for g in range(1, len(first) + 1)],
        }
    )
    for col in key.columns:
        optics[col] = key[col].to_numpy()[first]
    optics["rlnImageDimensionality"] = np.int64(2)
    return groups, optics


def read_cryosparc_particles(
    path: str | Path,
    require_ctf: bool = True,
    require_images: bool = False,
    require_poses: bool = False,
    passthrough: Iterable[str | Path] = (),
    cs_project_dir: str | Path | None = None,
    project_dir: str | Path | None = None,
    find_passthrough: bool = True,
) -> ParticleStar:
    """Read a cryoSPARC particle ``.cs`` (plus passthroughs) into a :class:`ParticleStar`.

    The result has the canonical columns and units that
    :func:`cryogan_core.io.star.read_particles` guarantees (see the module docstrings),
    converted with the table of this module's docstring. Fields of the main file win over
    passthrough files; passthroughs are joined on ``uid``: first those given in
    ``passthrough`` (in order), then those :func:`find_passthrough_files` finds beside the
    file. Optics groups are the distinct (``ctf/exp_group_id``, pixel size, kV, Cs, Q0,
    box) combinations, numbered 1..K.

    Args:
        path: the particle ``.cs`` file. Error messages name it as given.
        require_ctf: require the ctf slot (``df1_A``, ``df2_A``, ``accel_kv``, ``cs_mm``).
        require_images: require ``blob/path``/``blob/idx`` and that every stack exists.
        require_poses: require ``alignments3D/pose``.
        passthrough: extra ``.cs`` files joined on ``uid`` (e.g. ``J24_passthrough_particles.cs``).
        cs_project_dir: cryoSPARC project directory that plain ``blob/path`` values are
            relative to. Default: the ``.cs`` file's folder, then its parent folders.
        project_dir: RELION project directory; ``rlnImageName`` is written relative to it
            when the stack is inside it (default: the current directory, as RELION runs jobs).
        find_passthrough: also use the passthrough files found beside ``path``.

    Returns:
        The :class:`ParticleStar` (``source_version`` "cryosparc", ``path`` = the ``.cs``).

    Raises:
        InputError: missing/unreadable file; no rows; a required slot missing (named);
            ``3D poses`` required but the file has no ``alignments3D/pose`` (says which
            alignments it has); a stack not found when ``require_images``; NaN/inf values
            or out-of-range values (field and 1-based row named); non-square ``blob/shape``;
            passthrough rows that cannot be joined.
    """
    path = Path(path)
    fname = str(path)
    arr = read_cs(path)
    if len(arr) == 0:
        raise InputError(f"{fname}: the particle dataset has no rows")
    cols = _columns(arr)
    extras: list[tuple[dict[str, np.ndarray], str]] = []
    seen = {path.absolute()}
    extra_paths = [Path(p) for p in passthrough] + (find_passthrough_files(path) if find_passthrough else [])
    for p in extra_paths:
        if p.absolute() in seen:
            continue
        seen.add(p.absolute())
        extras.append((_columns(read_cs(p)), str(p)))
    cols = _merge_passthrough(cols, fname, extras)
    n = len(arr)

    if require_poses and "alignments3D/pose" not in cols:
        others = sorted({k.split("/")[0] for k in cols if k.startswith("alignments")})
        have = f"it has only {', '.join(others)}" if others else "it has no alignments"
        raise InputError(
            f"{fname}: no 3D alignments (field alignments3D/pose is missing; {have}); this job needs "
            f"3D poses: use the particles of a 3D refinement"
        )
    if require_images and ("blob/path" not in cols or "blob/idx" not in cols):
        raise InputError(
            f"{fname}: field blob/path is missing (the particle images); give the passthrough .cs "
            f"with the blob slot (--in_parts_passthrough)"
        )
    pixel_A = _pixel_size(cols, fname)
    ctf, derived = _ctf_columns(cols, n, fname, require_ctf)
    poses = _pose_columns(cols, n, fname, pixel_A)
    data: dict[str, np.ndarray] = {}
    if "blob/path" in cols and "blob/idx" in cols:
        proj = Path(project_dir) if project_dir is not None else Path.cwd()
        cs_proj = Path(cs_project_dir) if cs_project_dir is not None else None
        data["rlnImageName"] = _image_names(cols, fname, path.parent, cs_proj, proj, require_images)

    optics_key = pd.DataFrame(
        {
            "rlnVoltage": ctf.pop("rlnVoltage"),
            "rlnSphericalAberration": ctf.pop("rlnSphericalAberration"),
            "rlnAmplitudeContrast": ctf.pop("rlnAmplitudeContrast"),
            "rlnImagePixelSize": pixel_A,
            "rlnImageSize": _image_size(cols, n, fname),
        }
    )
    exp = np.asarray(cols["ctf/exp_group_id"]).astype(np.int64) if "ctf/exp_group_id" in cols else np.zeros(n, np.int64)
    groups, optics = _optics_groups(optics_key, exp)
    data["rlnOpticsGroup"] = groups
    data.update(ctf)
    data.update(poses)
    for col in ("rlnOriginXAngst", "rlnOriginYAngst"):
        if col not in data:
            data[col] = np.zeros(n)
            derived.append(col)
    particles = pd.DataFrame(data)
    particle_columns = [c for c in particles.columns if c not in derived]
    for col in optics_key.columns:
        particles[col] = optics_key[col].to_numpy()
    for col in CANONICAL_FLOAT_COLUMNS:
        particles[col] = particles[col].to_numpy(np.float64)
    for col in CANONICAL_INT_COLUMNS:
        particles[col] = particles[col].to_numpy(np.int64)
    return ParticleStar(
        particles=particles,
        optics=optics,
        source_version="cryosparc",
        path=path,
        particle_columns=particle_columns,
        derived_columns=derived,
    )


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
    angles = df[list(_ANGLES)].to_numpy(np.float64)
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
    if all(c in df.columns for c in _ANGLES):
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
