"""cryoSPARC particles in and out: .cs/.csg reading, writing and the RELION conventions.

References are written here independently of the code under test: the rotation-vector
matrix is Rodrigues' formula in numpy, RELION's Euler matrix is ``Euler_angles2matrix``
(``src/euler.cpp``) typed out in numpy, and the expected values of hand-made ``.cs`` files
are computed by hand. The worked examples come from docs/cryosparc_interop.md §5.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cryogan_core.commands.export_cryosparc import cli_command, run_export_cryosparc
from cryogan_core.errors import InputError
from cryogan_core.io.cryosparc import (
    SLOT_FIELDS,
    euler_deg_to_rotvec,
    find_passthrough_files,
    import_signature,
    read_cryosparc_particles,
    read_cs,
    rotvec_to_euler_deg,
    write_cryosparc_particles,
)
from cryogan_core.io.images import ParticleImages
from cryogan_core.io.particles import load_particles
from cryogan_core.io.star import read_particles
from conftest import shared_path

ANGLES = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]

# ----------------------------------------------------------------------------- references


def relion_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """RELION Euler_angles2matrix (src/euler.cpp), typed out in numpy: (n, 3) deg → (n, 3, 3)."""
    a, b, g = np.deg2rad(np.asarray(angles_deg, dtype=np.float64)).T
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty((len(a), 3, 3))
    m[:, 0] = np.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1)
    m[:, 1] = np.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1)
    m[:, 2] = np.stack([sc, ss, cb], -1)
    return m


def rodrigues(rotvec: np.ndarray) -> np.ndarray:
    """Rotation matrix of rotation vectors (axis × angle), Rodrigues' formula: (n, 3) → (n, 3, 3)."""
    v = np.asarray(rotvec, dtype=np.float64)
    theta = np.linalg.norm(v, axis=1)
    k = np.where(theta[:, None] > 0, v / np.maximum(theta, 1e-300)[:, None], 0.0)
    kx = np.zeros((len(v), 3, 3))
    kx[:, 0, 1], kx[:, 0, 2], kx[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    kx[:, 1, 0], kx[:, 2, 0], kx[:, 2, 1] = k[:, 2], -k[:, 1], k[:, 0]
    s, c = np.sin(theta)[:, None, None], np.cos(theta)[:, None, None]
    return np.eye(3)[None] + s * kx + (1 - c) * (kx @ kx)


def relion_from_pose(pose: np.ndarray) -> np.ndarray:
    """RELION's A for a cryoSPARC pose: pyem expmap(pose) = R(pose)ᵀ (doc §5)."""
    return rodrigues(pose).transpose(0, 2, 1)


def rotation_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Geodesic angle between rotation matrices, in degrees (stable for small angles)."""
    frob = np.linalg.norm(a - b, axis=(1, 2))
    return np.rad2deg(2 * np.arcsin(np.clip(frob / (2 * np.sqrt(2)), 0, 1)))


def random_rotvecs(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random rotation vectors, plus the special cases tilt = 0 and tilt = 180."""
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    v = axis * rng.uniform(0, np.pi, size=(n, 1))
    special = np.array([[0, 0, 0.7], [0, 0, -2.5], [np.pi, 0, 0], [0, np.pi, 0], [0.3, 0.4, 0], [0, 0, 0]])
    return np.concatenate([v, special])


# ----------------------------------------------------------------------------- fixtures


def write_mrcs(path: Path, images: np.ndarray, pixel_A: float = 1.0) -> None:
    """Stack written with mrcfile directly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(images)
        mrc.set_image_stack()
        mrc.voxel_size = pixel_A


def save_cs(path: Path, fields: dict[str, np.ndarray]) -> None:
    """A .cs file from columns (plain numpy; bytes/str become |S)."""
    n = len(next(iter(fields.values())))
    descr = []
    for k, v in fields.items():
        v = np.asarray(v)
        if v.dtype.kind in "OUS":
            descr.append((k, f"|S{max(len(str(x)) for x in v.tolist())}"))
        else:
            descr.append((k, v.dtype.str, v.shape[1:]) if v.ndim > 1 else (k, v.dtype.str))
    arr = np.zeros(n, dtype=descr)
    for k, v in fields.items():
        arr[k] = np.array([str(x).encode() for x in v]) if np.asarray(v).dtype.kind in "OU" else v
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.save(fh, arr)


def make_relion_project(root: Path, box: int, n: int = 12, seed: int = 0, dtype=np.float16) -> tuple[Path, dict]:
    """A RELION project: two stacks (float16 by default) and a hand-written 3.1 STAR with
    poses, origins, CTF, two optics groups, half sets and classes."""
    rng = np.random.default_rng(seed)
    stacks = {"Extract/job007/Movies/a.mrcs": 7, "Extract/job007/Movies/b.mrcs": 8}
    data = {}
    for name, m in stacks.items():
        imgs = rng.normal(size=(m, box, box)).astype(dtype)
        imgs[:, 0, 1] = np.arange(m)  # asymmetric marker
        write_mrcs(root / name, imgs, 1.5)
        data[name] = imgs
    rows = []
    truth = {"name": [], "angles": [], "origin": [], "dfu": [], "dfv": [], "dfa": [], "ps": [], "subset": [], "og": []}
    names = list(stacks)
    for i in range(n):
        stack = names[i % 2]
        idx = int(rng.integers(1, stacks[stack] + 1))
        ang = [rng.uniform(-180, 180), rng.uniform(0, 180), rng.uniform(-180, 180)]
        org = rng.uniform(-6, 6, size=2).round(6)
        dfu = round(rng.uniform(8000, 25000), 6)
        dfv = round(dfu - rng.uniform(0, 500), 6)
        dfa, ps, sub, og = round(rng.uniform(-90, 90), 6), 0.0 if i % 3 else 12.5, 1 + i % 2, 1 + (i >= n // 2)
        rows.append(
            f"{idx:06d}@{stack} {og} {dfu:.6f} {dfv:.6f} {dfa:.6f} {ps:.6f} {ang[0]:.6f} {ang[1]:.6f} {ang[2]:.6f} "
            f"{org[0]:.6f} {org[1]:.6f} {sub} {1 + i % 3}"
        )
        for k, v in zip(truth, [f"{idx:06d}@{stack}", [float(f"{a:.6f}") for a in ang], org, dfu, dfv, dfa, ps, sub, og]):
            truth[k].append(v)
    text = (
        "\n# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\n"
        "_rlnVoltage #3\n_rlnSphericalAberration #4\n_rlnAmplitudeContrast #5\n_rlnImagePixelSize #6\n"
        f"_rlnImageSize #7\n_rlnImageDimensionality #8\nopticsGroup1 1 300.0 2.7 0.1 1.5 {box} 2\n"
        f"opticsGroup2 2 200.0 1.4 0.07 1.5 {box} 2\n\n# version 30001\n\ndata_particles\n\nloop_\n"
        "_rlnImageName #1\n_rlnOpticsGroup #2\n_rlnDefocusU #3\n_rlnDefocusV #4\n_rlnDefocusAngle #5\n"
        "_rlnPhaseShift #6\n_rlnAngleRot #7\n_rlnAngleTilt #8\n_rlnAnglePsi #9\n_rlnOriginXAngst #10\n"
        "_rlnOriginYAngst #11\n_rlnRandomSubset #12\n_rlnClassNumber #13\n" + "\n".join(rows) + "\n"
    )
    star = root / "Refine3D/job010/run_data.star"
    star.parent.mkdir(parents=True, exist_ok=True)
    star.write_text(text)
    truth["stacks"] = data
    return star, truth


def assert_same_particles(a, b, proj_a: Path, proj_b: Path, exact_images: bool = True) -> None:
    """Poses (as matrices, 1e-4°), origins (1e-4 Å), CTF (defocus exact at float32), images."""
    pa, pb = a.particles, b.particles
    assert len(pa) == len(pb)
    err = rotation_error_deg(relion_matrix(pa[ANGLES].to_numpy()), relion_matrix(pb[ANGLES].to_numpy()))
    assert err.max() < 1e-4
    for col in ("rlnOriginXAngst", "rlnOriginYAngst"):
        np.testing.assert_allclose(pb[col], pa[col], atol=1e-4, rtol=0)
    for col in ("rlnDefocusU", "rlnDefocusV"):
        # float32 is cryoSPARC's storage type: the value stored is exactly float32(RELION's)
        np.testing.assert_array_equal(pb[col].to_numpy().astype(np.float32), pa[col].to_numpy().astype(np.float32))
    for col in ("rlnDefocusAngle", "rlnPhaseShift"):
        np.testing.assert_allclose(pb[col], pa[col], atol=1e-4, rtol=0)
    for col in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize"):
        np.testing.assert_allclose(pb[col], pa[col], rtol=1e-7)
    if "rlnRandomSubset" in pa.columns:
        np.testing.assert_array_equal(pb["rlnRandomSubset"], pa["rlnRandomSubset"])
    ia = ParticleImages(pa, proj_a, "a").read(slice(None))
    ib = ParticleImages(pb, proj_b, "b").read(slice(None))
    if exact_images:
        np.testing.assert_array_equal(ia, ib)


# ----------------------------------------------------------------------------- poses


def test_pose_worked_examples_from_the_doc():
    np.testing.assert_allclose(rotvec_to_euler_deg(np.array([[0.1, 0.2, 0.3]])), [[-17.934858, 12.763496, 35.195245]], atol=1e-5)
    np.testing.assert_allclose(euler_deg_to_rotvec(np.array([[30.0, 60.0, -45.0]])), [[-0.63917846, 0.83299359, -0.23737408]], atol=1e-7)


def test_pose_conversion_matches_pyem_convention_and_round_trips():
    pose = random_rotvecs(500, np.random.default_rng(1))
    angles = rotvec_to_euler_deg(pose)
    assert angles.shape == (len(pose), 3) and angles.dtype == np.float64
    assert (angles[:, 1] >= 0).all() and (angles[:, 1] <= 180).all()
    assert rotation_error_deg(relion_matrix(angles), relion_from_pose(pose)).max() < 1e-9
    back = euler_deg_to_rotvec(angles)
    assert rotation_error_deg(rodrigues(back), rodrigues(pose)).max() < 1e-9
    assert np.linalg.norm(back, axis=1).max() <= np.pi + 1e-12
    # the wrong convention (R instead of Rᵀ) must be detectably different
    assert rotation_error_deg(relion_matrix(angles), rodrigues(pose))[:500].max() > 1.0
    assert rotvec_to_euler_deg(np.zeros((0, 3))).shape == (0, 3)
    with pytest.raises(ValueError):
        rotvec_to_euler_deg(np.zeros((4, 2)))
    with pytest.raises(ValueError):
        euler_deg_to_rotvec(np.zeros(3))


def test_import_signature_is_sha1_of_the_absolute_path(tmp_path):
    import hashlib

    p = tmp_path / "s.mrcs"
    want = int.from_bytes(hashlib.sha1(str(p).encode()).digest()[:8], "little")
    assert import_signature(p) == want


# ----------------------------------------------------------------------------- reading


def hand_made_cs(root: Path, box: int = 9) -> tuple[Path, np.ndarray]:
    """A 4-particle .cs with known values, and its stack."""
    stack = np.stack([np.full((box, box), k, np.float32) for k in range(5)])
    write_mrcs(root / "J3/extract/mic_particles.mrc", stack)
    fields = {
        "uid": np.array([11, 22, 33, 44], np.uint64),
        "blob/path": ["J3/extract/mic_particles.mrc"] * 4,
        "blob/idx": np.array([0, 4, 2, 0], np.uint32),
        "blob/shape": np.array([[box, box]] * 4, np.uint32),
        "blob/psize_A": np.array([1.5] * 4, np.float32),
        "blob/sign": np.full(4, -1.0, np.float32),
        "ctf/type": ["imported"] * 4,
        "ctf/exp_group_id": np.array([3, 3, 7, 3], np.uint32),
        "ctf/accel_kv": np.full(4, 300, np.float32),
        "ctf/cs_mm": np.full(4, 2.7, np.float32),
        "ctf/amp_contrast": np.full(4, 0.07, np.float32),
        "ctf/df1_A": np.array([10000.5, 12000, 14000, 16000], np.float32),
        "ctf/df2_A": np.array([9000, 11000, 13000, 15000], np.float32),
        "ctf/df_angle_rad": np.deg2rad([5.28, -30, 90, 0]).astype(np.float32),
        "ctf/phase_shift_rad": np.deg2rad([0, 90, 0, 45]).astype(np.float32),
        "ctf/scale": np.ones(4, np.float32),
        "ctf/bfactor": np.array([0, 0, 50, 0], np.float32),
        "alignments3D/split": np.array([0, 1, 1, 0], np.uint32),
        "alignments3D/shift": np.array([[2, -3], [0, 0], [-1.5, 0.25], [4, 4]], np.float32),
        "alignments3D/pose": np.array([[0.1, 0.2, 0.3], [0, 0, 0], [0, 0, 1.0], [-1, 2, 0.5]], np.float32),
        "alignments3D/psize_A": np.full(4, 1.5, np.float32),
        "alignments3D/class": np.zeros(4, np.uint32),
    }
    path = root / "J5" / "J5_particles.cs"
    save_cs(path, fields)
    return path, stack


def test_hand_made_cs_gives_the_relion_values(tmp_path):
    path, stack = hand_made_cs(tmp_path)
    star = load_particles(path, require_images=True, require_poses=True, project_dir=tmp_path)
    p = star.particles
    assert p["rlnImageName"].tolist() == [
        "000001@J3/extract/mic_particles.mrc", "000005@J3/extract/mic_particles.mrc",
        "000003@J3/extract/mic_particles.mrc", "000001@J3/extract/mic_particles.mrc",
    ]
    imgs = ParticleImages(p, tmp_path, "x").read(slice(None))
    np.testing.assert_array_equal(imgs[:, 0, 0], [0, 4, 2, 0])
    np.testing.assert_array_equal(p["rlnOriginXAngst"], np.float32([2, 0, -1.5, 4]) * 1.5)
    np.testing.assert_array_equal(p["rlnOriginYAngst"], np.float32([-3, 0, 0.25, 4]) * 1.5)
    np.testing.assert_allclose(p["rlnDefocusAngle"], [5.28, -30, 90, 0], atol=1e-5)
    np.testing.assert_allclose(p["rlnPhaseShift"], [0, 90, 0, 45], atol=1e-5)
    np.testing.assert_array_equal(p["rlnDefocusU"], np.float32([10000.5, 12000, 14000, 16000]))
    np.testing.assert_array_equal(p["rlnCtfBfactor"], [0, 0, 50, 0])
    assert p["rlnRandomSubset"].tolist() == [1, 2, 2, 1]
    assert p["rlnOpticsGroup"].tolist() == [1, 1, 2, 1]
    assert star.optics["rlnOpticsGroup"].tolist() == [1, 2]
    # float32 optics values come back as the decimals that were stored
    assert p["rlnAmplitudeContrast"].tolist() == [0.07] * 4 and p["rlnSphericalAberration"].tolist() == [2.7] * 4
    assert p["rlnImageSize"].tolist() == [9] * 4 and p["rlnImagePixelSize"].tolist() == [1.5] * 4
    pose = np.array([[0.1, 0.2, 0.3], [0, 0, 0], [0, 0, 1.0], [-1, 2, 0.5]], np.float32)
    assert rotation_error_deg(relion_matrix(p[ANGLES].to_numpy()), relion_from_pose(pose)).max() < 1e-6
    np.testing.assert_allclose(p[ANGLES].to_numpy()[0], [-17.934858, 12.763496, 35.195245], atol=1e-4)
    for col in ("rlnImagePixelSize", "rlnDefocusU", "rlnVoltage", "rlnOriginXAngst", "rlnCtfScalefactor"):
        assert p[col].dtype == np.float64
    assert p["rlnOpticsGroup"].dtype == np.int64 and p["rlnImageSize"].dtype == np.int64


def test_project_dir_search_and_explicit_cs_project_dir(tmp_path):
    path, _ = hand_made_cs(tmp_path / "csproj")
    # found through the .cs file's parents; name relative to the RELION project dir when inside it
    s = load_particles(path, require_images=True, project_dir=tmp_path)
    assert s.particles["rlnImageName"][0] == "000001@csproj/J3/extract/mic_particles.mrc"
    # outside the RELION project dir: absolute
    other = tmp_path / "relion"
    other.mkdir()
    s = load_particles(path, require_images=True, project_dir=other)
    assert s.particles["rlnImageName"][0] == f"000001@{(tmp_path / 'csproj/J3/extract/mic_particles.mrc').as_posix()}"
    s = load_particles(path, require_images=True, cs_project_dir=tmp_path / "csproj", project_dir=tmp_path / "csproj")
    assert s.particles["rlnImageName"][0] == "000001@J3/extract/mic_particles.mrc"
    with pytest.raises(InputError, match=r"J5_particles\.cs: row 1: blob/path J3/extract/mic_particles\.mrc: stack not found \(looked in"):
        load_particles(path, require_images=True, cs_project_dir=other)
    # without require_images the set still loads (the path is kept)
    s = load_particles(path, cs_project_dir=other)
    assert s.particles["rlnImageName"][1] == "000005@J3/extract/mic_particles.mrc"


def test_passthrough_found_beside_and_given_explicitly(tmp_path):
    main, _ = hand_made_cs(tmp_path)
    full = np.load(main)
    align = [n for n in full.dtype.names if n.startswith("alignments3D/") or n == "uid"]
    rest = [n for n in full.dtype.names if not n.startswith("alignments3D/")]
    save_cs(main, {n: full[n] for n in align})
    # passthrough in another order, with an extra particle; found by name
    order = [3, 1, 0, 2]
    extra = {n: np.concatenate([full[n][order], full[n][:1]]) for n in rest}
    extra["uid"][-1] = 99
    pt = tmp_path / "J5" / "J5_passthrough_particles.cs"
    save_cs(pt, extra)
    assert find_passthrough_files(main) == [pt]
    s = load_particles(main, require_images=True, project_dir=tmp_path)
    assert s.particles["rlnDefocusU"].tolist() == np.float32([10000.5, 12000, 14000, 16000]).tolist()
    assert s.particles["rlnImageName"].str.slice(0, 6).tolist() == ["000001", "000005", "000003", "000001"]
    # the same file under another name: only when given
    other = tmp_path / "elsewhere" / "ctf_and_blob.cs"
    other.parent.mkdir()
    pt.rename(other)
    with pytest.raises(InputError, match="field ctf/df1_A is missing"):
        load_particles(main, project_dir=tmp_path)
    s = load_particles(main, passthrough=[other], require_images=True, project_dir=tmp_path)
    assert s.particles["rlnOpticsGroup"].tolist() == [1, 1, 2, 1]
    # found through a .csg listing both files
    (tmp_path / "J5" / "particles.csg").write_text(
        "results:\n  alignments3D: {metafile: '>J5_particles.cs', num_items: 4, type: particle.alignments3D}\n"
        "  blob: {metafile: '>../elsewhere/ctf_and_blob.cs', num_items: 5, type: particle.blob}\n"
    )
    assert [p.resolve() for p in find_passthrough_files(main)] == [other.resolve()]
    # a passthrough that lacks particles of the main file
    short = {n: extra[n][:2] for n in rest}
    save_cs(other, short)
    with pytest.raises(InputError, match=r"ctf_and_blob\.cs: 2 of the 4 particles of .*J5_particles\.cs are missing"):
        load_particles(main, project_dir=tmp_path)


def test_bad_cs_input_gives_one_line_errors(tmp_path, monkeypatch):
    path, _ = hand_made_cs(tmp_path)
    full = np.load(path)

    def variant(name: str, drop=(), **change) -> Path:
        """A copy of the good ``.cs`` without the ``drop`` field prefixes and with ``change``'s fields replaced (``__`` stands for ``/``)."""
        cols = {n: full[n].copy() for n in full.dtype.names if not any(n.startswith(d) for d in drop)}
        for k, v in change.items():
            cols[k.replace("__", "/")] = v
        p = tmp_path / "bad" / name
        save_cs(p, cols)
        return p

    msgs = {
        "no poses": (variant("a.cs", drop=("alignments3D",)), dict(require_poses=True), r"a\.cs: no 3D alignments \(field alignments3D/pose is missing; it has no alignments\)"),
        "no ctf": (variant("b.cs", drop=("ctf",)), {}, r"b\.cs: field ctf/df1_A is missing \(CTF needed\)"),
        "no blob": (variant("c.cs", drop=("blob/path",)), dict(require_images=True), r"c\.cs: field blob/path is missing"),
        "nan defocus": (variant("d.cs", ctf__df2_A=np.float32([1, 2, np.nan, 4])), {}, r"d\.cs: row 3: ctf/df2_A is nan"),
        "not square": (variant("e.cs", blob__shape=np.array([[9, 9], [9, 8], [9, 9], [9, 9]], np.uint32)), {}, r"e\.cs: row 2: blob/shape \[9, 8\]"),
        "bad split": (variant("f.cs", alignments3D__split=np.uint32([0, 1, 2, 0])), {}, r"f\.cs: row 3: alignments3D/split 2 is not 0 or 1"),
        "bad psize": (variant("g.cs", blob__psize_A=np.float32([1.5, 0, 1.5, 1.5])), {}, r"g\.cs: row 2: blob/psize_A 0\.0 must be > 0"),
        "bad q0": (variant("h.cs", ctf__amp_contrast=np.float32([0.1, 0.1, 1.5, 0.1])), {}, r"h\.cs: row 3: ctf/amp_contrast 1\.5"),
    }
    for what, (p, kw, pattern) in msgs.items():
        with pytest.raises(InputError, match=pattern) as info:
            load_particles(p, project_dir=tmp_path, **kw)
        assert "\n" not in str(info.value), what
    # without CTF but not required: NaN defocus, CTF defaults
    s = load_particles(variant("b2.cs", drop=("ctf",)), require_ctf=False, project_dir=tmp_path)
    assert np.isnan(s.particles["rlnDefocusU"]).all() and np.isnan(s.particles["rlnVoltage"]).all()
    assert "rlnDefocusU" in s.derived_columns
    empty = tmp_path / "bad" / "empty.cs"
    with open(empty, "wb") as fh:
        np.save(fh, full[:0])
    with pytest.raises(InputError, match=r"empty\.cs: the particle dataset has no rows"):
        load_particles(empty)
    text = tmp_path / "bad" / "text.cs"
    text.write_text("hello")
    with pytest.raises(InputError, match=r"text\.cs: not a cryoSPARC \.cs file"):
        load_particles(text)
    with pytest.raises(InputError, match=r"nothere\.cs: file not found"):
        load_particles(tmp_path / "nothere.cs")
    with pytest.raises(InputError, match=r"x\.mrcs: unknown particle file type '\.mrcs'"):
        load_particles(tmp_path / "x.mrcs")
    with pytest.raises(InputError, match="passthrough"):
        load_particles(tmp_path / "x.star", passthrough=[path])
    csdat = tmp_path / "bad" / "c.cs"
    csdat.write_bytes(b"\x95CSDAT" + b"\0" * 32)
    monkeypatch.setitem(sys.modules, "cryosparc.dataset", None)
    with pytest.raises(InputError, match=r"c\.cs: compressed cryoSPARC CSDAT format; install cryosparc-tools"):
        read_cs(csdat)


# ----------------------------------------------------------------------------- writing


def check_written_cs(cs_path: Path, slots: list[str], n: int) -> np.ndarray:
    """The .cs loads with numpy, carries every field of each declared slot with the right
    dtype and unique uids; the .csg is YAML with metafile, num_items and type per result."""
    with open(cs_path, "rb") as fh:
        assert fh.read(6) == b"\x93NUMPY"
    arr = np.load(cs_path)
    assert arr.shape == (n,)
    assert arr.dtype["uid"] == np.dtype("<u8") and len(np.unique(arr["uid"])) == n
    expected = {"uid"}
    for slot in slots:
        for name, dtype, shape in SLOT_FIELDS[slot]:
            expected.add(name)
            dt = arr.dtype[name]
            if dtype == "S":
                assert dt.kind == "S", name
            else:
                assert dt.base == np.dtype(dtype) and dt.shape == shape, name
    assert set(arr.dtype.names) == expected
    csg = yaml.safe_load(cs_path.with_suffix(".csg").read_text())
    assert csg["group"]["type"] == "particle" and csg["group"]["name"] == cs_path.stem
    assert set(csg["results"]) == set(slots)
    for slot, res in csg["results"].items():
        assert res == {"metafile": f">{cs_path.name}", "num_items": n, "type": f"particle.{slot}"}
    assert "created" in csg and str(csg["version"]).startswith("v")
    for p in {x.decode() for x in arr["blob/path"]}:
        assert p.startswith(">") and p.endswith(".mrcs")
        with mrcfile.open(cs_path.parent / p[1:], permissive=True) as mrc:
            assert mrc.data.dtype == np.float32 and mrc.header.mode == 2
    return arr


@pytest.mark.parametrize("box", [32, 33])
def test_synthetic_round_trip_through_cs(tmp_path, box):
    star_path, truth = make_relion_project(tmp_path, box)
    star = read_particles(star_path)
    out = tmp_path / "External/job011"
    export = write_cryosparc_particles(star, out, tmp_path, seed=3)
    assert export.slots == ["blob", "ctf", "alignments3D"] and len(export.stacks_written) == 2
    arr = check_written_cs(export.cs_path, export.slots, len(star))
    # the fields, against values computed here from the STAR text
    assert (arr["blob/shape"] == box).all() and (arr["blob/sign"] == -1).all() and (arr["blob/psize_A"] == np.float32(1.5)).all()
    np.testing.assert_array_equal(arr["alignments3D/split"], np.array(truth["subset"]) - 1)
    np.testing.assert_array_equal(arr["ctf/exp_group_id"], np.array(truth["og"]) - 1)
    np.testing.assert_array_equal(arr["alignments3D/shift"], (np.array(truth["origin"]) / 1.5).astype(np.float32))
    np.testing.assert_array_equal(arr["ctf/df_angle_rad"], np.deg2rad(truth["dfa"]).astype(np.float32))
    np.testing.assert_array_equal(arr["ctf/accel_kv"], np.where(np.array(truth["og"]) == 1, 300, 200))
    assert (arr["ctf/type"] == b"imported").all()
    assert rotation_error_deg(relion_from_pose(arr["alignments3D/pose"]), relion_matrix(np.array(truth["angles"]))).max() < 1e-4
    # and back: same particles, same images
    back = load_particles(export.cs_path, require_images=True, require_poses=True, project_dir=tmp_path)
    assert back.particles["rlnImageName"].str.contains("External/job011/cryosparc_stacks/").all()
    assert_same_particles(star, back, tmp_path, tmp_path)
    assert back.particles["rlnClassNumber"].tolist() == star.particles["rlnClassNumber"].tolist()
    assert back.optics["rlnVoltage"].tolist() == [300.0, 200.0]
    # stacks hold only the images used
    used = {n.split("@")[1] for n in truth["name"]}
    for p in export.stacks_written:
        src = [u for u in used if Path(u).stem == p.stem][0]
        n_used = len({n for n in truth["name"] if n.endswith(src)})
        assert mrcfile.open(p, permissive=True, header_only=True).header.nz == n_used


def test_float32_stacks_inside_the_output_folder_are_reused(tmp_path):
    star_path, truth = make_relion_project(tmp_path, 16, dtype=np.float32)
    # a job that wrote its own float32 stacks in its folder
    job = tmp_path / "Extract/job007"
    star = read_particles(star_path)
    export = write_cryosparc_particles(star, job, tmp_path, name="particles")
    assert export.stacks_written == [] and len(export.stacks_reused) == 2
    arr = np.load(export.cs_path)
    paths = [x.decode() for x in arr["blob/path"]]
    assert paths == [">Movies/" + n.split("@")[1].split("/")[-1] for n in truth["name"]]
    np.testing.assert_array_equal(arr["blob/idx"], [int(n.split("@")[0]) - 1 for n in truth["name"]])
    back = load_particles(export.cs_path, require_images=True, project_dir=tmp_path)
    assert back.particles["rlnImageName"].tolist() == truth["name"]


def test_slots_follow_the_data(tmp_path):
    root = tmp_path
    write_mrcs(root / "s.mrcs", np.zeros((2, 8, 8), np.float32))
    (root / "p.star").write_text(
        "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n_rlnImageSize\n1 2.0 8\n\n"
        "data_particles\nloop_\n_rlnImageName\n_rlnOpticsGroup\n1@s.mrcs 1\n2@s.mrcs 1\n"
    )
    star = read_particles(root / "p.star", require_ctf=False)
    export = write_cryosparc_particles(star, root / "out", root)
    assert export.slots == ["blob"]
    check_written_cs(export.cs_path, ["blob"], 2)
    half = star.with_particles(star.particles.assign(rlnDefocusU=[1.0, np.nan], rlnDefocusV=[1.0, 1.0], rlnVoltage=300.0, rlnSphericalAberration=2.7))
    with pytest.raises(InputError, match=r"row 2: rlnDefocusU is missing while other particles have a CTF"):
        write_cryosparc_particles(half, root / "out2", root)
    no_u = star.with_particles(star.particles.assign(rlnDefocusU=np.nan, rlnDefocusV=1.0, rlnVoltage=300.0, rlnSphericalAberration=2.7))
    with pytest.raises(InputError, match=r"p\.star: column rlnDefocusU is missing while rlnDefocusV, rlnVoltage, "
                                         r"rlnSphericalAberration are given: a CTF needs all of them"):
        write_cryosparc_particles(no_u, root / "out2", root)
    bad = star.with_particles(star.particles.assign(rlnAngleRot=0.0, rlnAngleTilt=0.0, rlnAnglePsi=0.0, rlnRandomSubset=[1, 3]))
    with pytest.raises(InputError, match=r"row 2: rlnRandomSubset 3 is not 1 or 2"):
        write_cryosparc_particles(bad, root / "out3", root)
    missing = star.with_particles(star.particles.assign(rlnImageName=["1@s.mrcs", "5@s.mrcs"]))
    with pytest.raises(InputError, match=r"row 2: rlnImageName 5@s\.mrcs: index 5 is out of range"):
        write_cryosparc_particles(missing, root / "out4", root)


def test_export_command_and_cli(tmp_path, monkeypatch):
    star_path, _ = make_relion_project(tmp_path, 12, n=5)
    out = tmp_path / "to_cryosparc"
    summary = run_export_cryosparc(star_path, out, tmp_path)
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["n_particles"] == 5 and saved["slots"] == ["blob", "ctf", "alignments3D"]
    assert saved["cryosparc_import"]["job"] == "Import Result Group"
    assert any("particles.csg" in s for s in saved["cryosparc_import"]["steps"])
    check_written_cs(out / "particles.cs", saved["slots"], 5)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(cli_command, ["--i", "Refine3D/job010/run_data.star", "--o", "cli_out"])
    assert res.exit_code == 0, res.output
    assert "Import Result Group" in res.output and (tmp_path / "cli_out/particles.csg").is_file()
    res = runner.invoke(cli_command, ["--i", "nothere.star", "--o", "cli_out2"])
    assert res.exit_code == 1 and "ERROR: nothere.star: file not found" in res.output
    assert cli_command.name == "export-cryosparc"


# ----------------------------------------------------------------------------- cryosparc-tools (optional)


def test_cryosparc_tools_reads_what_we_write_and_we_read_csdat(tmp_path):
    ds_mod = pytest.importorskip("cryosparc.dataset")
    star_path, _ = make_relion_project(tmp_path, 10, n=6)
    export = write_cryosparc_particles(read_particles(star_path), tmp_path / "out", tmp_path)
    d = ds_mod.Dataset.load(str(export.cs_path))
    assert len(d) == 6
    for slot in export.slots:
        for name, _, _ in SLOT_FIELDS[slot]:
            assert name in d.fields()
    assert set(d.prefixes()) >= {"blob", "ctf", "alignments3D"}
    np.testing.assert_array_equal(d["uid"], np.load(export.cs_path)["uid"])
    # a CSDAT (compressed) file written by cryosparc-tools loads through our reader
    csdat = tmp_path / "out" / "csdat.cs"
    d.save(str(csdat), format=ds_mod.CSDAT_FORMAT)
    assert csdat.read_bytes()[:6] == b"\x95CSDAT"
    a = read_cryosparc_particles(csdat, require_images=True, project_dir=tmp_path, find_passthrough=False)
    b = read_cryosparc_particles(export.cs_path, require_images=True, project_dir=tmp_path)
    assert a.particles.equals(b.particles)


# ----------------------------------------------------------------------------- real data


REAL_CS = ["cryosparc_P12_J24_001_particles.cs", "cryosparc_J2_particles_exported.cs", "empiar_10076_7.cs", "cryosparc-tools_4k_dataset.cs"]


@pytest.mark.realdata
@pytest.mark.parametrize("name", REAL_CS)
def test_every_real_cs_file_loads(name):
    path = shared_path("cryosparc-cs", name)
    raw = read_cs(path)
    assert raw.dtype.names[0] == "uid"
    if len(raw) == 0:  # the schema-only file: 106 fields, no particles
        assert len(raw.dtype.names) == 106 and "alignments3D/pose" in raw.dtype.names
        with pytest.raises(InputError, match="has no rows"):
            load_particles(path, require_ctf=False)
        return
    star = load_particles(path)
    assert len(star) == len(raw)
    p = star.particles
    np.testing.assert_array_equal(p["rlnDefocusU"].to_numpy(np.float32), raw["ctf/df1_A"])
    np.testing.assert_allclose(p["rlnDefocusAngle"], np.rad2deg(raw["ctf/df_angle_rad"].astype(np.float64)), atol=1e-9)
    np.testing.assert_array_equal(p["rlnImagePixelSize"].to_numpy(np.float32), raw["blob/psize_A"])
    idx = [int(s.split("@")[0]) for s in p["rlnImageName"]]
    np.testing.assert_array_equal(idx, raw["blob/idx"].astype(int) + 1)
    if "alignments3D/pose" in raw.dtype.names:
        assert rotation_error_deg(relion_matrix(p[ANGLES].to_numpy()), relion_from_pose(raw["alignments3D/pose"])).max() < 1e-6
        shift = raw["alignments3D/shift"].astype(np.float64) * raw["alignments3D/psize_A"].astype(np.float64)[:, None]
        np.testing.assert_allclose(p[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), shift, rtol=1e-6)
        np.testing.assert_array_equal(p["rlnRandomSubset"], raw["alignments3D/split"].astype(int) + 1)
        load_particles(path, require_poses=True)
    else:
        with pytest.raises(InputError, match=r"no 3D alignments \(field alignments3D/pose is missing"):
            load_particles(path, require_poses=True)
    if "alignments2D/pose" in raw.dtype.names:  # pyem's 2D branch: psi = deg(pose), wrapped
        d = np.mod(p["rlnAnglePsi"].to_numpy() - np.rad2deg(raw["alignments2D/pose"].astype(np.float64)), 360.0)
        assert (np.minimum(d, 360 - d) < 1e-9).all() and (p["rlnAnglePsi"].abs() <= 180).all()
        shift = raw["alignments2D/shift"].astype(np.float64) * raw["alignments2D/psize_A"].astype(np.float64)[:, None]
        np.testing.assert_allclose(p[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), shift, rtol=1e-6)
        assert "rlnAngleRot" not in p.columns


@pytest.mark.realdata
def test_star_written_from_a_real_cs_reads_back(tmp_path):
    from cryogan_core.io.star_write import write_particles

    path = shared_path("cryosparc-cs", "cryosparc_P12_J24_001_particles.cs")
    star = load_particles(path, require_poses=True)
    write_particles(tmp_path / "particles.star", star)
    back = read_particles(tmp_path / "particles.star", require_poses=True)
    assert back.source_version == "3.1" and len(back) == len(star)
    for col in ANGLES + ["rlnOriginXAngst", "rlnDefocusU", "rlnDefocusAngle", "rlnImagePixelSize", "rlnVoltage", "rlnAmplitudeContrast"]:
        np.testing.assert_array_equal(back.particles[col], star.particles[col])
    assert back.particles["rlnImageName"].tolist() == star.particles["rlnImageName"].tolist()
    assert back.particles["rlnRandomSubset"].tolist() == star.particles["rlnRandomSubset"].tolist()
    assert "rlnPhaseShift" in back.particles.columns and back.optics["rlnImageSize"].tolist() == [180]


@pytest.mark.realdata
def test_real_star_and_cs_of_the_same_particles_agree():
    folder = shared_path("small-real-stacks", "cryodrgn")
    star = read_particles(folder / "empiar_10076_7.star")
    cs = load_particles(folder / "empiar_10076_7.cs", require_images=True, project_dir=folder)
    a, b = star.particles, cs.particles
    assert [s.split("@")[1] for s in b["rlnImageName"]] == [s.split("@")[1] for s in a["rlnImageName"]]
    assert [int(s.split("@")[0]) for s in b["rlnImageName"]] == [int(s.split("@")[0]) for s in a["rlnImageName"]]
    for col in ("rlnDefocusU", "rlnDefocusV"):
        np.testing.assert_array_equal(b[col].to_numpy(np.float32), a[col].to_numpy(np.float32))
    np.testing.assert_allclose(b["rlnDefocusAngle"], a["rlnDefocusAngle"], atol=1e-5)
    np.testing.assert_allclose(b["rlnImagePixelSize"], a["rlnImagePixelSize"], rtol=1e-6)  # 5/38168·1e4
    for col in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnPhaseShift", "rlnOriginXAngst"):
        np.testing.assert_array_equal(b[col], a[col])
    np.testing.assert_array_equal(
        ParticleImages(b, folder, "cs").read(slice(None)), ParticleImages(a, folder, "star").read(slice(None))
    )


@pytest.mark.realdata
def test_real_betagal_round_trip_through_cs(tmp_path):
    folder = shared_path("betagal-relion-tutorial")
    star = read_particles(folder / "betagal_particles_posed.star", require_poses=True)
    export = write_cryosparc_particles(star, tmp_path / "cs", folder)
    check_written_cs(export.cs_path, ["blob", "ctf", "alignments3D"], len(star))
    back = load_particles(export.cs_path, require_images=True, require_poses=True, project_dir=tmp_path)
    assert_same_particles(star, back, folder, tmp_path)  # float16 stacks → float32, exact


@pytest.mark.realdata
@pytest.mark.parametrize("rel", [("small-real-stacks", "cryodrgn", "relion31.star"), ("small-real-stacks", "aspire", "sample_particles_relion30.star")])
def test_real_posed_stars_round_trip(tmp_path, rel):
    path = shared_path(*rel)
    star = read_particles(path, require_poses=True)
    export = write_cryosparc_particles(star, tmp_path / "cs", path.parent)
    back = load_particles(export.cs_path, require_images=True, require_poses=True, project_dir=tmp_path)
    assert_same_particles(star, back, path.parent, tmp_path)
