"""ParticleImages: validation of every row up front, lazy batched reads, real β-gal stacks."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from cryogan_core.errors import InputError
from cryogan_core.io.images import ParticleImages, resolve_image_path
from cryogan_core.io.star import read_particles


def make_stack(path: Path, images: np.ndarray) -> None:
    """Write a stack with mrcfile directly (independent of the code under test)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(images)
        mrc.set_image_stack()
        mrc.voxel_size = 2.0


def make_project(root: Path, box: int, dtype=np.float32) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Two stacks (4 and 3 images) whose pixel values encode (stack, index)."""
    stacks = {}
    for s, (name, n) in enumerate([("Extract/job007/Movies/a.mrcs", 4), ("Extract/job007/Movies/b.mrcs", 3)]):
        imgs = np.empty((n, box, box), dtype=dtype)
        for i in range(n):
            imgs[i] = 10 * s + i
            imgs[i, 0, 1] = -1.0  # asymmetric pixel: catches a transposed read
        make_stack(root / name, imgs)
        stacks[name] = imgs
    names = ["000002@Extract/job007/Movies/a.mrcs", "000001@Extract/job007/Movies/b.mrcs",
             "000004@Extract/job007/Movies/a.mrcs", "000003@Extract/job007/Movies/b.mrcs",
             "000001@Extract/job007/Movies/a.mrcs"]
    return stacks, pd.DataFrame({"rlnImageName": names, "rlnImageSize": [-1] * len(names)})


def expected(stacks: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The image ``name`` (``index@stack``, 1-based) read from ``stacks``, float32."""
    idx, path = name.split("@")
    return stacks[path][int(idx) - 1].astype(np.float32)


@pytest.mark.parametrize("box,dtype", [(16, np.float32), (17, np.float32), (16, np.float16)])
def test_synthetic_project_reads_right_images(tmp_path, box, dtype):
    stacks, df = make_project(tmp_path, box, dtype)
    images = ParticleImages(df, tmp_path, "Extract/job007/particles.star")
    assert images.box == box and len(images) == 5 and images.n == 5
    assert df["rlnImageSize"].tolist() == [box] * 5  # filled in place from the stacks
    every = images.read(slice(None))
    assert every.dtype == np.float32 and every.shape == (5, box, box)
    for r, name in enumerate(df["rlnImageName"]):
        np.testing.assert_array_equal(every[r], expected(stacks, name))
    rows = np.array([4, 0, 4, 3])  # repeats and mixed stacks, result in the order asked
    np.testing.assert_array_equal(images.read(rows), every[rows])
    np.testing.assert_array_equal(images.read([2]), every[[2]])
    assert images.read([]).shape == (0, box, box)
    batches = list(images.iter_batches(2))
    assert [b[0].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), every)
    sub = list(images.iter_batches(10, rows=[3, 1]))
    assert len(sub) == 1 and sub[0][0].tolist() == [3, 1]


def test_small_lru_cache_still_reads_correctly(tmp_path):
    stacks, df = make_project(tmp_path, 8)
    images = ParticleImages(df, tmp_path, max_open_stacks=1)
    for r in [0, 1, 0, 3, 2]:
        np.testing.assert_array_equal(images.read([r])[0], expected(stacks, df["rlnImageName"][r]))


def test_absolute_names_and_names_without_index(tmp_path):
    stacks, _ = make_project(tmp_path, 8)
    single = tmp_path / "single.mrc"
    with mrcfile.new(single) as mrc:
        mrc.set_data(np.full((8, 8), 5.0, np.float32))
    df = pd.DataFrame({"rlnImageName": [f"3@{tmp_path}/Extract/job007/Movies/b.mrcs", "single.mrc"]})
    images = ParticleImages(df, tmp_path)
    out = images.read([0, 1])
    np.testing.assert_array_equal(out[0], stacks["Extract/job007/Movies/b.mrcs"][2])
    assert (out[1] == 5.0).all()


def test_missing_stack_names_row_file_and_place(tmp_path):
    _, df = make_project(tmp_path, 8)
    df.loc[3, "rlnImageName"] = "000003@Movies/x.mrcs"
    with pytest.raises(InputError) as info:
        ParticleImages(df, tmp_path, "particles.star")
    msg = str(info.value)
    assert msg == (f"particles.star: row 4: rlnImageName 000003@Movies/x.mrcs: file not found "
                   f"(looked in {tmp_path / 'Movies' / 'x.mrcs'})")


def test_index_out_of_range(tmp_path):
    _, df = make_project(tmp_path, 8)
    df.loc[2, "rlnImageName"] = "000099@Extract/job007/Movies/a.mrcs"
    with pytest.raises(InputError, match=r"^particles\.star: row 3: rlnImageName 000099@Extract/job007/Movies/a\.mrcs: "
                                         r"index 99 is out of range \(stack has 4 images\)$"):
        ParticleImages(df, tmp_path)


@pytest.mark.parametrize("bad", ["abc@x.mrcs", "0@x.mrcs", "5@"])
def test_unparsable_name(tmp_path, bad):
    _, df = make_project(tmp_path, 8)
    df.loc[1, "rlnImageName"] = bad
    with pytest.raises(InputError, match=r"^my\.star: row 2: rlnImageName"):
        ParticleImages(df, tmp_path, "my.star")


def test_boxes_must_agree_and_be_square(tmp_path):
    _, df = make_project(tmp_path, 8)
    make_stack(tmp_path / "other.mrcs", np.zeros((2, 10, 10), np.float32))
    df.loc[4, "rlnImageName"] = "2@other.mrcs"
    with pytest.raises(InputError, match=r"row 5: .*box 10 px differs from 8 px"):
        ParticleImages(df, tmp_path)
    make_stack(tmp_path / "rect.mrcs", np.zeros((2, 8, 9), np.float32))
    df.loc[4, "rlnImageName"] = "1@rect.mrcs"
    with pytest.raises(InputError, match=r"row 5: .*not square"):
        ParticleImages(df, tmp_path)


def test_image_size_mismatch_and_missing_column(tmp_path):
    _, df = make_project(tmp_path, 8)
    df.loc[0, "rlnImageSize"] = 64
    with pytest.raises(InputError, match=r"row 1: rlnImageSize 64 does not match the stack box 8 px"):
        ParticleImages(df, tmp_path)
    with pytest.raises(InputError, match="column rlnImageName is missing"):
        ParticleImages(df.drop(columns=["rlnImageName"]), tmp_path)


def test_not_an_mrc_file(tmp_path):
    _, df = make_project(tmp_path, 8)
    (tmp_path / "junk.mrcs").write_text("not an mrc file")
    df.loc[0, "rlnImageName"] = "1@junk.mrcs"
    with pytest.raises(InputError, match=r"row 1: rlnImageName 1@junk\.mrcs: .*not a readable MRC file"):
        ParticleImages(df, tmp_path)


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_nan_image_is_reported_on_read(tmp_path):
    stacks, df = make_project(tmp_path, 8)
    imgs = stacks["Extract/job007/Movies/b.mrcs"].copy()
    imgs[2, 3, 3] = np.nan
    make_stack(tmp_path / "Extract/job007/Movies/b.mrcs", imgs)
    images = ParticleImages(df, tmp_path)
    images.read([0, 1, 2])  # rows that do not touch the bad image are fine
    with pytest.raises(InputError, match=r"row 4: rlnImageName 000003@Extract/job007/Movies/b\.mrcs: .*NaN"):
        images.read([0, 3])


def test_read_rejects_bad_rows(tmp_path):
    _, df = make_project(tmp_path, 8)
    images = ParticleImages(df, tmp_path)
    with pytest.raises(IndexError):
        images.read([5])
    with pytest.raises(IndexError):
        images.read([-1])
    with pytest.raises(ValueError):
        next(images.iter_batches(0))


def test_resolve_image_path(tmp_path):
    assert resolve_image_path("Movies/a.mrcs", tmp_path) == tmp_path / "Movies" / "a.mrcs"
    assert resolve_image_path("/abs/a.mrcs", tmp_path) == Path("/abs/a.mrcs")
    assert resolve_image_path("a.mrcs", Path("rel")).is_absolute()


@pytest.mark.realdata
def test_real_betagal_posed_particles(betagal_dir):
    star_path = betagal_dir / "betagal_particles_posed.star"
    star = read_particles(star_path, require_images=True, require_poses=True)
    images = ParticleImages(star.particles, betagal_dir, star_path)
    assert len(images) == 1211 and images.box == 64
    rows = np.arange(0, 1211, 97)
    got = images.read(rows)
    assert got.dtype == np.float32 and got.shape == (len(rows), 64, 64)
    for k, r in enumerate(rows):  # independent read of the same image
        idx, rel = star.particles["rlnImageName"].iloc[r].split("@")
        with mrcfile.open(betagal_dir / rel, permissive=True) as mrc:
            np.testing.assert_array_equal(got[k], mrc.data[int(idx) - 1].astype(np.float32))
    total = sum(len(r) for r, _ in images.iter_batches(512))
    assert total == 1211
    every = images.read(slice(None))
    assert np.isfinite(every).all()
    assert abs(float(every.mean())) < 0.5 and 0.5 < float(every.std()) < 2.0  # normalised particles
