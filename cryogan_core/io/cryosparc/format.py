"""The cryoSPARC file format: ``.cs`` fields, pose conversion to RELION Euler angles, reading.

A ``.cs`` file is one numpy structured array saved with ``np.save`` (magic ``\\x93NUMPY``),
one row per particle, fields named ``<slot>/<field>`` plus ``uid`` (``<u8``); cryosparc-tools
≥ 4.4 can also write a compressed "CSDAT" container (magic ``\\x95CSDAT``), read through the
optional ``cryosparc-tools`` package. The conversion table and its sources are in
:mod:`cryogan_core.io.cryosparc`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from cryogan_core.errors import InputError
from cryogan_core.physics.euler import euler_to_matrix, matrix_to_euler

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


