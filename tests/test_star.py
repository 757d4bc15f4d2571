"""RELION particle STAR reading/writing against hand-computed references and real files.

The reference values come from ``mini_star`` below, a deliberately naive whitespace
parser written for these tests (independent of starfile and of the code under test).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from loguru import logger

from conftest import shared_path
from cryogan_core.errors import InputError
from cryogan_core.io.star import (
    CANONICAL_FLOAT_COLUMNS,
    CANONICAL_INT_COLUMNS,
    ParticleStar,
    format_image_name,
    parse_image_name,
    pose_angles_deg,
    read_particles,
)
from cryogan_core.io.star_write import write_particles

# --------------------------------------------------------------------------- helpers


def mini_star(path: Path) -> dict[str, tuple[list[str], list[list[str]]]]:
    """{block: (labels, rows)} for loop blocks; rows split on whitespace (no quoting)."""
    blocks: dict[str, tuple[list[str], list[list[str]]]] = {}
    name = None
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("data_"):
            name = line[5:]
            blocks[name] = ([], [])
        elif line.startswith("loop_"):
            continue
        elif line.startswith("_"):
            blocks[name][0].append(line.split()[0][1:])
        else:
            blocks[name][1].append(line.split())
    return blocks


def column(block: tuple[list[str], list[list[str]]], label: str) -> list[str]:
    """One column of a (labels, rows) block as strings."""
    labels, rows = block
    i = labels.index(label)
    return [r[i] for r in rows]


def expected_values(path: Path) -> dict[str, np.ndarray]:
    """Per-particle pixel size, origins (Å), voltage, Cs and defocus computed by hand."""
    b = mini_star(path)
    if "optics" in b:
        parts = b["particles"]
        optics = b["optics"]
        ogroups = [int(g) for g in column(optics, "rlnOpticsGroup")]
        if "rlnOpticsGroup" in parts[0]:
            groups = [int(g) for g in column(parts, "rlnOpticsGroup")]
        else:  # allowed when there is a single optics group
            groups = ogroups[:1] * len(parts[1])

        def per_particle(label: str, default: float) -> np.ndarray:
            """Per-particle values of ``label``: the particle column, else the optics group's, else ``default``."""
            if label in parts[0]:  # particle row wins (CTF::readByGroup)
                return np.array(column(parts, label), float)
            if label in optics[0]:
                vals = dict(zip(ogroups, (float(v) for v in column(optics, label))))
                return np.array([vals[g] for g in groups])
            return np.full(len(groups), default)

        pix = per_particle("rlnImagePixelSize", np.nan)
        ox = per_particle("rlnOriginXAngst", 0.0)
        oy = per_particle("rlnOriginYAngst", 0.0)
        volt = per_particle("rlnVoltage", np.nan)
        cs = per_particle("rlnSphericalAberration", np.nan)
    else:
        (parts,) = b.values()
        det = np.array(column(parts, "rlnDetectorPixelSize"), float)
        mag = np.array(column(parts, "rlnMagnification"), float)
        pix = det * 1e4 / mag
        n = len(parts[1])
        ox = np.array(column(parts, "rlnOriginX"), float) * pix if "rlnOriginX" in parts[0] else np.zeros(n)
        oy = np.array(column(parts, "rlnOriginY"), float) * pix if "rlnOriginY" in parts[0] else np.zeros(n)
        volt = np.array(column(parts, "rlnVoltage"), float)
        cs = np.array(column(parts, "rlnSphericalAberration"), float)
    return {
        "n": len(parts[1]),
        "rlnImagePixelSize": pix,
        "rlnOriginXAngst": ox,
        "rlnOriginYAngst": oy,
        "rlnVoltage": volt,
        "rlnSphericalAberration": cs,
        "rlnDefocusU": np.array(column(parts, "rlnDefocusU"), float),
    }


def assert_canonical(star: ParticleStar) -> None:
    """Assert the canonical dtypes, a 0-based RangeIndex and known optics groups."""
    p = star.particles
    assert isinstance(p.index, pd.RangeIndex) and p.index.start == 0
    for col in CANONICAL_FLOAT_COLUMNS:
        assert p[col].dtype == np.float64, col
    for col in CANONICAL_INT_COLUMNS:
        assert p[col].dtype == np.int64, col
    assert set(p["rlnOpticsGroup"]) <= set(star.optics["rlnOpticsGroup"])


def assert_same_particles(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Assert two particle tables are equal to a relative 1e-6."""
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, atol=0)


def write(tmp_path: Path, text: str, name: str = "particles.star") -> Path:
    """Write ``text`` to ``tmp_path / name`` and return the path."""
    path = tmp_path / name
    path.write_text(text)
    return path


class WarningSink:
    """Collect loguru warnings during a test."""

    def __enter__(self) -> list[str]:
        self.messages: list[str] = []
        self.hid = logger.add(lambda m: self.messages.append(str(m)), level="WARNING")
        return self.messages

    def __exit__(self, *exc) -> None:
        logger.remove(self.hid)


# --------------------------------------------------------------------------- synthetic files

STAR30 = """# RELION; version 3.0
data_images

loop_
_rlnImageName #1
_rlnDefocusU #2
_rlnDefocusV #3
_rlnDefocusAngle #4
_rlnVoltage #5
_rlnSphericalAberration #6
_rlnAmplitudeContrast #7
_rlnMagnification #8
_rlnDetectorPixelSize #9
_rlnOriginX #10
_rlnOriginY #11
_rlnAngleRot #12
_rlnClassNumber #13
000001@Particles/a.mrcs 10000.5 9000.25 12.0 300 2.7 0.07 50000 14.0 -1.5 2.25 10.0 1
000002@Particles/a.mrcs 11000.5 9500.25 13.0 300 2.7 0.07 50000 14.0 0.0 -3.0 20.0 2
000001@Particles/b.mrcs 12000.5 9900.25 14.0 200 2.7 0.07 50000 14.0 4.0 1.0 30.0 1
"""

STAR31 = """
# version 50001

data_particles

loop_
_rlnImageName #1
_rlnOpticsGroup #2
_rlnDefocusU #3
_rlnDefocusV #4
_rlnOriginXAngst #5
_rlnVoltage #6
000001@s.mrcs 2 15000 14000 1.5 300
000002@s.mrcs 1 16000 15000 -2.5 100

# version 50001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnImagePixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
1 opticsGroup1 1.5 300 2.7
2 opticsGroup2 2.0 200 0.01
"""

OPTICS = """data_optics

loop_
_rlnOpticsGroup #1
_rlnImagePixelSize #2
_rlnVoltage #3
_rlnSphericalAberration #4
_rlnAmplitudeContrast #5
_rlnImageSize #6
1 1.5 300 2.7 0.1 64

"""


def particles_block(labels: list[str], rows: list[str]) -> str:
    """A RELION ``data_particles`` loop with ``labels`` and whitespace-separated ``rows``."""
    return "data_particles\n\nloop_\n" + "".join(f"_{l} #{i + 1}\n" for i, l in enumerate(labels)) + "\n".join(rows) + "\n"


def test_read_relion30_synthetic(tmp_path):
    star = read_particles(write(tmp_path, STAR30), require_images=True)
    assert star.source_version == "3.0"
    assert_canonical(star)
    p = star.particles
    pix = 14.0 * 1e4 / 50000  # DetectorPixelSize [µm] * 1e4 / Magnification = 2.8 Å
    np.testing.assert_allclose(p["rlnImagePixelSize"], [pix] * 3)
    np.testing.assert_allclose(p["rlnOriginXAngst"], [-1.5 * pix, 0.0, 4.0 * pix])  # same sign
    np.testing.assert_allclose(p["rlnOriginYAngst"], [2.25 * pix, -3.0 * pix, 1.0 * pix])
    assert "rlnOriginX" not in p.columns and "rlnOriginY" not in p.columns
    # one optics group per distinct (pixel size, voltage, Cs, Q0)
    assert p["rlnOpticsGroup"].tolist() == [1, 1, 2]
    assert star.optics["rlnVoltage"].tolist() == [300.0, 200.0]
    assert star.optics["rlnImageDimensionality"].tolist() == [2, 2]
    np.testing.assert_allclose(p["rlnVoltage"], [300, 300, 200])
    np.testing.assert_allclose(p["rlnAmplitudeContrast"], [0.07] * 3)
    assert p["rlnImageSize"].tolist() == [-1, -1, -1]
    # defaults
    assert p["rlnPhaseShift"].tolist() == [0.0] * 3 and p["rlnCtfScalefactor"].tolist() == [1.0] * 3
    assert star.particle_columns == [
        "rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
        "rlnOriginXAngst", "rlnOriginYAngst", "rlnAngleRot", "rlnClassNumber", "rlnOpticsGroup",
    ]


def test_read_relion31_swapped_blocks_particle_value_wins(tmp_path):
    with WarningSink() as warnings:
        star = read_particles(write(tmp_path, STAR31))
    assert star.source_version == "5.0"
    assert_canonical(star)
    p = star.particles
    assert p["rlnOpticsGroup"].tolist() == [2, 1]
    np.testing.assert_allclose(p["rlnImagePixelSize"], [2.0, 1.5])  # from each particle's group
    np.testing.assert_allclose(p["rlnSphericalAberration"], [0.01, 2.7])
    np.testing.assert_allclose(p["rlnVoltage"], [300.0, 100.0])  # the particle rows win
    np.testing.assert_allclose(p["rlnOriginXAngst"], [1.5, -2.5])
    np.testing.assert_allclose(p["rlnOriginYAngst"], [0.0, 0.0])
    np.testing.assert_allclose(p["rlnAmplitudeContrast"], [0.1, 0.1])
    assert any("rlnAmplitudeContrast" in w for w in warnings)
    assert p["rlnImageSize"].tolist() == [-1, -1]
    assert p["rlnOpticsGroupName"].tolist() == ["opticsGroup2", "opticsGroup1"]
    assert set(star.derived_columns) == {
        "rlnOriginYAngst", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor", "rlnCtfScalefactor",
    }


def test_version_30001_reads_as_31(tmp_path):
    text = "# version 30001\n" + OPTICS + particles_block(
        ["rlnImageName", "rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV"], ["1@a.mrcs 1 1 2"]
    )
    star = read_particles(write(tmp_path, text))
    assert star.source_version == "3.1"
    assert star.particles["rlnImageSize"].tolist() == [64]


def test_require_ctf_false_fills_nan(tmp_path):
    text = OPTICS + particles_block(["rlnImageName", "rlnOpticsGroup"], ["1@a.mrcs 1", "2@a.mrcs 1"])
    with pytest.raises(InputError, match="column rlnDefocusU is missing"):
        read_particles(write(tmp_path, text))
    star = read_particles(tmp_path / "particles.star", require_ctf=False)
    assert np.isnan(star.particles["rlnDefocusU"]).all()
    out = tmp_path / "out.star"
    write_particles(out, star)
    assert "rlnDefocusU" not in mini_star(out)["particles"][0]
    assert_same_particles(read_particles(out, require_ctf=False).particles, star.particles)


BAD_CASES = [
    # (file text, kwargs, pattern the one-line message must match)
    (OPTICS + particles_block(["rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV"], ["1 1 2", "1 1", "1 3 4"]),
     {}, r"particles\.star: row 2: rlnDefocusV: value is missing"),
    (OPTICS + particles_block(["rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV"], ["1 1 2", "1 1 2 9", "1 3 4"]),
     {}, r"particles\.star: cannot parse the STAR file: data row 2 of a loop has 4 fields"),
    (OPTICS + particles_block(["rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV"], ["1 1 2 9", "1 1 2"]),
     {}, r"particles\.star: cannot parse the STAR file"),
    (OPTICS + particles_block(["rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV"], ["1 1 2", "1 1 2", "1 abc 4"]),
     {}, r"particles\.star: row 3: rlnDefocusU 'abc' is not a number"),
    (OPTICS + particles_block(["rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV"], ["1 nan 2"]),
     {}, r"particles\.star: row 1: rlnDefocusU: value is missing or NaN"),
    (OPTICS + particles_block(["rlnOpticsGroup", "rlnDefocusV"], ["1 2"]),
     {}, r"particles\.star: column rlnDefocusU is missing"),
    (OPTICS + particles_block(["rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV", "rlnAngleRot", "rlnAnglePsi"], ["1 1 2 0 0"]),
     {"require_poses": True}, r"particles\.star: column rlnAngleTilt is missing"),
    (OPTICS + particles_block(["rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV"], ["1 1 2"]),
     {"require_images": True}, r"particles\.star: column rlnImageName is missing"),
    (OPTICS + particles_block(["rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV"], ["1 1 2", "3 1 2"]),
     {}, r"particles\.star: row 2: rlnOpticsGroup 3 is not in data_optics"),
    (OPTICS + particles_block(["rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV"], ["1.5 1 2"]),
     {}, r"particles\.star: row 1: rlnOpticsGroup 1\.5 is not an integer"),
    (OPTICS.replace("1 1.5 300", "1 0 300") + particles_block(["rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV"], ["1 1 2"]),
     {}, r"particles\.star: data_optics row 1: rlnImagePixelSize 0\.0 must be > 0"),
    (OPTICS.replace("2.7 0.1", "2.7 1.5") + particles_block(["rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV"], ["1 1 2"]),
     {}, r"rlnAmplitudeContrast 1\.5 must be in \[0, 1\)"),
    (OPTICS.replace("_rlnImagePixelSize", "_rlnMicrographPixelSize") + particles_block(["rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV"], ["1 1 2"]),
     {}, r"particles\.star: data_optics: column rlnImagePixelSize is missing"),
    (STAR30.replace("50000 14.0 -1.5", "0 14.0 -1.5"), {}, r"particles\.star: row 1: rlnMagnification 0\.0 must be > 0"),
    (STAR30.replace("_rlnMagnification", "_rlnFoo"), {}, r"particles\.star: no pixel size"),
    (STAR30.replace("_rlnVoltage", "_rlnFoo"), {}, r"particles\.star: column rlnVoltage is missing"),
    (OPTICS, {}, r"particles\.star: not a particle STAR file: it has data_optics but no data_particles"),
    ("data_job\n\n_rlnJobTypeLabel relion.class2d\n\ndata_joboptions_values\n\nloop_\n_rlnJobOptionVariable #1\n"
     "_rlnJobOptionValue #2\nfn_img Select/job005/particles.star\n", {}, r"particles\.star: not a particle STAR file"),
    ("", {}, r"particles\.star: empty or not a STAR file"),
    ("# only a comment\n", {}, r"particles\.star: empty or not a STAR file"),
    (OPTICS + "data_particles\n\nloop_\n_rlnOpticsGroup #1\n_rlnDefocusU #2\n_rlnDefocusV #3\n", {},
     r"particles\.star: the particle table has no rows"),
]


@pytest.mark.parametrize("text,kwargs,pattern", BAD_CASES)
def test_bad_files_give_one_line_input_errors(tmp_path, monkeypatch, text, kwargs, pattern):
    write(tmp_path, text)
    monkeypatch.chdir(tmp_path)  # so that messages name the file as the user gave it
    with pytest.raises(InputError, match=pattern) as info:
        read_particles("particles.star", **kwargs)
    assert "\n" not in str(info.value)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(InputError, match=r"absent\.star: file not found"):
        read_particles(tmp_path / "absent.star")
    binary = tmp_path / "binary.star"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError, match="binary.star"):
        read_particles(binary)
    with pytest.raises(InputError, match="not a file"):
        read_particles(tmp_path)


# --------------------------------------------------------------------------- writing


def test_write_precision_dtypes_and_headers(tmp_path):
    text = OPTICS + particles_block(
        ["rlnImageName", "rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV", "rlnCoordinateX", "rlnTiny", "rlnMicrographName"],
        ["1@a.mrcs 1 12345.678912345 12000.000001 100.0 1.2345678901234e-07 mic_1.mrc",
         "2@a.mrcs 1 22345.5 22000.25 200.0 -3.3e-12 mic_2.mrc"],
    )
    star = read_particles(write(tmp_path, text))
    out = tmp_path / "out" / "particles.star"
    write_particles(out, star)
    raw = out.read_text()
    assert raw.index("# version 30001") < raw.index("data_optics") < raw.index("data_particles")
    assert raw.count("# version 30001") == 2
    back = read_particles(out)
    assert_same_particles(back.particles, star.particles)
    # tighter than the 1e-6 contract: small magnitudes must survive too (%.6f would give 0)
    assert back.particles["rlnTiny"].tolist() == [1.2345678901234e-07, -3.3e-12]
    assert back.particles["rlnDefocusU"].iloc[0] == 12345.678912345
    assert back.particles["rlnCoordinateX"].dtype == np.float64  # 100.0 is not written as "100"
    # written blocks as a naive reader sees them
    blocks = mini_star(out)
    assert list(blocks) == ["optics", "particles"]
    assert "rlnImagePixelSize" in blocks["optics"][0] and "rlnImagePixelSize" not in blocks["particles"][0]
    assert "rlnPhaseShift" not in blocks["particles"][0]  # synthesised default, unchanged: not written

    write_particles(out, star, version="5.0")
    assert out.read_text().count("# version 50001") == 2
    assert read_particles(out).source_version == "5.0"
    with pytest.raises(InputError, match="unsupported STAR version"):
        write_particles(out, star, version="2.0")


def test_write_relion30_as_31(tmp_path):
    star = read_particles(write(tmp_path, STAR30))
    out = tmp_path / "out.star"
    write_particles(out, star)
    blocks = mini_star(out)
    plabels = blocks["particles"][0]
    for moved in ("rlnOriginX", "rlnOriginY", "rlnMagnification", "rlnDetectorPixelSize", "rlnVoltage"):
        assert moved not in plabels
    assert "rlnOriginXAngst" in plabels and "rlnOpticsGroup" in plabels
    olabels = blocks["optics"][0]
    for label in ("rlnOpticsGroup", "rlnOpticsGroupName", "rlnVoltage", "rlnSphericalAberration",
                  "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageDimensionality"):
        assert label in olabels
    assert "rlnImageSize" not in olabels  # unknown (-1) is not written
    np.testing.assert_allclose([float(v) for v in column(blocks["particles"], "rlnOriginXAngst")],
                               [-1.5 * 2.8, 0.0, 4.0 * 2.8])
    back = read_particles(out)
    assert back.source_version == "3.1"
    assert_same_particles(back.particles, star.particles)


def test_with_particles_subset_new_columns_and_changed_optics(tmp_path):
    text = OPTICS.replace("1 1.5 300 2.7 0.1 64\n", "1 1.5 300 2.7 0.1 64\n2 1.5 300 2.7 0.1 64\n") + particles_block(
        ["rlnImageName", "rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV"],
        [f"{i}@a.mrcs {1 + i % 2} {10000 + i} {9000 + i}" for i in range(1, 7)],
    )
    star = read_particles(write(tmp_path, text))
    sub = star.particles.iloc[[0, 1, 3]].copy()  # groups 2, 1, 1
    sub["cgScore"] = [0.5, 3.0, -1e-9]
    sub["cgFlag"] = [True, False, True]
    sub["rlnMicrographName"] = ["with space.mrc", "b.mrc", "c.mrc"]
    sub["rlnOriginXAngst"] = [1.0, 2.0, 3.0]  # synthesised default changed: must be written
    sub["rlnImageSize"] = 128  # optics value changed, constant per group: goes to optics
    sub.loc[sub.index[1], "rlnImagePixelSize"] = 1.6  # varies within group 1: particle column
    new = star.with_particles(sub)
    assert isinstance(new.particles.index, pd.RangeIndex) and len(new) == 3
    out = tmp_path / "sub.star"
    write_particles(out, new)
    blocks = mini_star(out)
    plabels = blocks["particles"][0]
    assert {"cgScore", "cgFlag", "rlnOriginXAngst", "rlnImagePixelSize"} <= set(plabels)
    assert "rlnImageSize" not in plabels
    assert column(blocks["optics"], "rlnImageSize") == ["128", "128"]
    back = read_particles(out).particles
    assert back["cgScore"].tolist() == [0.5, 3.0, -1e-9]
    assert back["cgFlag"].tolist() == [1, 0, 1]
    assert back["rlnMicrographName"].tolist() == ["with space.mrc", "b.mrc", "c.mrc"]
    assert back["rlnOriginXAngst"].tolist() == [1.0, 2.0, 3.0]
    assert back["rlnImageSize"].tolist() == [128] * 3
    assert back["rlnImagePixelSize"].tolist() == [1.5, 1.6, 1.5]
    assert back["rlnImageName"].tolist() == ["1@a.mrcs", "2@a.mrcs", "4@a.mrcs"]
    assert back["rlnOpticsGroup"].tolist() == [2, 1, 1]


def test_write_rejects_nan_and_leaves_no_file(tmp_path):
    star = read_particles(write(tmp_path, STAR30))
    df = star.particles.copy()
    df["cgScore"] = [1.0, np.nan, 2.0]
    out = tmp_path / "bad.star"
    with pytest.raises(ValueError, match="row 2: cgScore is NaN"):
        write_particles(out, star.with_particles(df))
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["particles.star"]


# --------------------------------------------------------------------------- image names


@pytest.mark.parametrize(
    "name,expected",
    [("000123@path/stack.mrcs", (123, "path/stack.mrcs")), ("1@/abs/x.mrcs", (1, "/abs/x.mrcs")),
     ("img.mrc", (1, "img.mrc")), (" 7@a@b.mrcs ", (7, "a@b.mrcs"))],
)
def test_parse_image_name(name, expected):
    assert parse_image_name(name) == expected


@pytest.mark.parametrize("name", ["abc@x.mrcs", "0@x.mrcs", "-3@x.mrcs", "12@", ""])
def test_parse_image_name_rejects(name):
    with pytest.raises(InputError):
        parse_image_name(name)


def test_pose_angles_deg_order_dtype_and_missing_column():
    df = pd.DataFrame(
        {"rlnAnglePsi": [3.0, -30.5], "rlnImageName": ["1@a.mrcs", "2@a.mrcs"], "rlnAngleRot": [1.0, 10.25], "rlnAngleTilt": [2.0, 90.0]}
    )
    got = pose_angles_deg(df)
    assert got.dtype == np.float64 and got.shape == (2, 3)
    np.testing.assert_array_equal(got, [[1.0, 2.0, 3.0], [10.25, 90.0, -30.5]])  # rot, tilt, psi whatever the column order
    with pytest.raises(InputError, match=r"no column rlnAngleTilt"):
        pose_angles_deg(df.drop(columns=["rlnAngleTilt"]))


def test_format_image_name_round_trip():
    assert format_image_name(42, "Extract/job007/a.mrcs") == "000042@Extract/job007/a.mrcs"
    assert format_image_name(1234567, "a.mrcs") == "1234567@a.mrcs"
    assert parse_image_name(format_image_name(99, "x/y.mrcs")) == (99, "x/y.mrcs")
    with pytest.raises(ValueError):
        format_image_name(0, "a.mrcs")


# --------------------------------------------------------------------------- real files

REAL_PARTICLE_FILES = [
    # (path under shared/data, source_version, rows)
    ("star-variety/cryodrgn/relion31.star", "3.1", 5),
    ("star-variety/cryodrgn/relion31.v2.star", "3.1", 5),
    ("star-variety/cryodrgn/relion31.6opticsgroups.star", "3.1", 139),
    ("star-variety/cryodrgn/relion5.star", "5.0", 17),
    ("star-variety/cryodrgn/toy_projections_13.star", "3.1", 13),
    ("star-variety/cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star", "3.0", 5),
    ("star-variety/cryodrgn/empiar_10076_7.star", "3.0", 7),
    ("star-variety/cryodrgn/sta_testing_bin8.star", "3.0", 219),
    ("star-variety/aspire/sample_particles_relion30.star", "3.0", 17),
    ("star-variety/aspire/sample_particles_relion31.star", "3.1", 17),
    ("star-variety/aspire/sample_relion_data.star", "3.0", 17),
    ("star-variety/aspire/sample_relion_symmetry_group_D4.star", "3.0", 17),
    ("star-variety/relion-legacy/ap_s_c2d.star", "3.0", 8915),
    ("star-variety/relion-legacy/ref_it002_data.star", "3.0", 9),
    ("relion31-tutorial-stars/extracted/Extract/job018/particles.star", "3.1", 4501),
    ("relion31-tutorial-stars/extracted/CtfRefine/job024/particles_ctf_refine.star", "3.1", 4501),
    ("betagal-relion-tutorial/betagal_particles_posed.star", "3.1", 1211),
    ("betagal-relion-tutorial/refine3d_job029_run_data.star", "3.1", 4501),
    ("betagal-relion-tutorial/particles/extract_job009_particles.star", "5.0", 2374),
    ("betagal-relion-tutorial/particles/class2d_job010_run_it025_data.star", "5.0", 2374),
]


@pytest.mark.realdata
@pytest.mark.parametrize("rel,version,rows", REAL_PARTICLE_FILES, ids=[r[0].split("/")[-1] for r in REAL_PARTICLE_FILES])
def test_real_particle_files_read_and_round_trip(tmp_path, rel, version, rows):
    path = shared_path(*rel.split("/"))
    star = read_particles(path, require_images=True)
    assert star.source_version == version
    assert len(star.particles) == rows
    assert_canonical(star)
    ref = expected_values(path)
    assert ref["n"] == rows
    for col in ("rlnImagePixelSize", "rlnOriginXAngst", "rlnOriginYAngst", "rlnVoltage",
                "rlnSphericalAberration", "rlnDefocusU"):
        np.testing.assert_allclose(star.particles[col].to_numpy(), ref[col], rtol=1e-9, err_msg=col)
    if version == "3.0":
        assert "rlnOriginX" not in star.particles.columns
    out = tmp_path / "rt.star"
    write_particles(out, star)
    back = read_particles(out, require_images=True)
    assert back.source_version == "3.1"
    assert_same_particles(back.particles, star.particles)
    pd.testing.assert_frame_equal(back.optics, star.optics, check_exact=False, rtol=1e-6)


@pytest.mark.realdata
def test_six_optics_groups_merge_per_particle():
    path = shared_path("star-variety", "cryodrgn", "relion31.6opticsgroups.star")
    star = read_particles(path)
    b = mini_star(path)
    optics = {int(g): (float(p), float(t), name) for g, p, t, name in zip(
        column(b["optics"], "rlnOpticsGroup"), column(b["optics"], "rlnImagePixelSize"),
        column(b["optics"], "rlnBeamTiltX"), column(b["optics"], "rlnOpticsGroupName"))}
    groups = [int(g) for g in column(b["particles"], "rlnOpticsGroup")]
    assert len(set(groups)) == 6
    p = star.particles
    for i, g in enumerate(groups):
        assert p["rlnOpticsGroup"].iloc[i] == g
        assert p["rlnImagePixelSize"].iloc[i] == optics[g][0]
        assert p["rlnBeamTiltX"].iloc[i] == optics[g][1]
        assert p["rlnOpticsGroupName"].iloc[i] == optics[g][2]
    in3 = p[p["rlnOpticsGroup"] == 3]
    assert len(in3) > 0 and (in3["rlnOpticsGroupName"] == optics[3][2]).all()
    assert (in3["rlnImagePixelSize"] == optics[3][0]).all()
    in2 = p[p["rlnOpticsGroup"] == 2]  # group 2 has 1.24 Å, group 3 has 1.25 Å
    assert (in2["rlnImagePixelSize"] == 1.24).all() and optics[3][0] == 1.25


@pytest.mark.realdata
def test_real_particle_override_of_optics():
    # toy_projections_13: optics Cs 0.01 mm but every particle row says 0.001 mm.
    star = read_particles(shared_path("star-variety", "cryodrgn", "toy_projections_13.star"))
    assert (star.particles["rlnSphericalAberration"] == 0.001).all()
    assert star.optics["rlnSphericalAberration"].tolist() == [0.01]


@pytest.mark.realdata
@pytest.mark.parametrize(
    "rel,kwargs,pattern",
    [
        ("star-variety/aspire/sample.star", {}, r"sample\.star: cannot parse the STAR file: data row 4 of a loop has 5 fields"),
        ("star-variety/himena-relion/default_pipelines/no_input.star", {}, r"no_input\.star: cannot parse the STAR file"),
        ("relion31-tutorial-stars/extracted/Refine3D/job029/job.star", {}, r"job\.star: cannot parse the STAR file"),
        ("relion31-tutorial-stars/extracted/LocalRes/job031/relion_locres_fscs.star", {}, r"cannot parse the STAR file"),
        ("relion31-tutorial-stars/extracted/AutoPick/job011/job.star", {}, r"not a particle STAR file"),
        ("relion31-tutorial-stars/extracted/Refine3D/job029/run_model.star", {}, r"not a particle STAR file"),
        ("relion31-tutorial-stars/extracted/PostProcess/job030/postprocess.star", {}, r"not a particle STAR file"),
        ("relion31-tutorial-stars/extracted/CtfFind/job003/micrographs_ctf.star", {}, r"data_optics but no data_particles"),
        ("star-variety/aspire/sample_relion_coord.star", {"require_images": True, "require_ctf": False},
         r"column rlnImageName is missing"),
        ("star-variety/sppractice-relion5/AutoPick/job008/Movies/20170629_00021_frameImage_autopick.star",
         {"require_images": True}, r"column rlnImageName is missing"),
        ("star-variety/aspire/sample_incomplete_ctf_params.star", {}, r"column rlnVoltage is missing"),
        ("star-variety/teamtomo-starfile/rln3.1_data_style.star", {}, r"ambiguous particle STAR file"),
    ],
)
def test_real_bad_or_foreign_files(rel, kwargs, pattern):
    path = shared_path(*rel.split("/"))
    with pytest.raises(InputError, match=pattern) as info:
        read_particles(path, **kwargs)
    assert "\n" not in str(info.value)
    assert path.name in str(info.value)


@pytest.mark.realdata
def test_real_relion30_origins_same_sign():
    path = shared_path("star-variety", "aspire", "sample_particles_relion30.star")
    star = read_particles(path)
    b = mini_star(path)
    (block,) = b.values()
    ox_px = np.array(column(block, "rlnOriginX"), float)
    pix = 5.0 * 1e4 / 37369.207031
    assert math.isclose(star.particles["rlnImagePixelSize"].iloc[0], pix, rel_tol=1e-12)
    assert (np.sign(star.particles["rlnOriginXAngst"]) == np.sign(ox_px)).all()
    np.testing.assert_allclose(star.particles["rlnOriginXAngst"], ox_px * pix, rtol=1e-12)
