"""cryoSPARC particles (``.cs`` + passthrough files, or ``.csg``) → RELION's canonical particle table.

The conversion table and its sources are in :mod:`cryogan_core.io.cryosparc`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from loguru import logger

from cryogan_core.errors import InputError
from cryogan_core.io.cryosparc.format import read_cs, rotvec_to_euler_deg
from cryogan_core.io.star import (
    ANGLE_COLUMNS,
    CANONICAL_FLOAT_COLUMNS,
    CANONICAL_INT_COLUMNS,
    ParticleStar,
    format_image_name,
)

_DEFAULT_AMPLITUDE_CONTRAST = 0.1
_UNCONVERTED_CTF = ("ctf/shift_A", "ctf/tilt_A", "ctf/trefoil_A", "ctf/tetra_A", "ctf/anisomag")
_STEM_PATTERN = re.compile(r"^(?:cryosparc_)?(?:P\d+_)?(J\d+)_(?:\d{3}_)?(.+)$")
_METAFILE_PATTERN = re.compile(r"metafile:\s*['\"]?(>?[^'\"\s,}]+)")


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
        for i, col in enumerate(ANGLE_COLUMNS):
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
