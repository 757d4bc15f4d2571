"""MRC maps and stacks: round trips, headers, float16, axis order, streaming, bad input."""

from __future__ import annotations

import warnings

import mrcfile
import numpy as np
import pytest

from conftest import shared_path
from cryogan_core.errors import InputError
from cryogan_core.io.mrc import (
    StackWriter,
    open_stack,
    read_map,
    stack_pixel_size_A,
    stack_shape,
    write_map,
    write_stack,
)


@pytest.mark.parametrize("n", [32, 33])
def test_map_round_trip_odd_and_even(tmp_path, n):
    rng = np.random.default_rng(n)
    vol = rng.normal(size=(n, n, n)).astype(np.float32)
    vol[1, 2, 3] = 7.0  # asymmetric marker: catches any transposition
    path = tmp_path / "map.mrc"
    write_map(path, vol, 1.77)
    out, voxel = read_map(path)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, vol)
    assert voxel == pytest.approx(1.77, rel=1e-6)
    # Header as another reader sees it.
    with mrcfile.open(path) as mrc:
        assert mrc.header.mode == 2
        assert int(mrc.header.ispg) == 1
        assert tuple(float(v) for v in mrc.header.origin.item()) == (0.0, 0.0, 0.0)
        assert (int(mrc.header.nxstart), int(mrc.header.nystart), int(mrc.header.nzstart)) == (0, 0, 0)
        assert float(mrc.header.dmean) == pytest.approx(float(vol.mean()), abs=1e-5)
        assert float(mrc.header.dmax) == pytest.approx(7.0)
        np.testing.assert_array_equal(mrc.data[1, 2, 3], 7.0)  # (z, y, x) file order


def test_read_map_permutes_nonstandard_axis_order(tmp_path):
    # Independent writer: the file stores columns = y, rows = x, sections = z.
    vol_zyx = np.arange(4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4)
    stored = vol_zyx.transpose(0, 2, 1).copy()  # stored[z, x, y]
    path = tmp_path / "swapped.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(stored)
        mrc.voxel_size = 2.0
        mrc.header.mapc, mrc.header.mapr, mrc.header.maps = 2, 1, 3
    out, voxel = read_map(path)
    np.testing.assert_array_equal(out, vol_zyx)
    assert out.flags.c_contiguous and voxel == 2.0


def test_read_map_errors(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_map(tmp_path / "absent.mrc")

    text = tmp_path / "not_a_map.mrc"
    text.write_text("data_\nloop_\n_rlnX #1\n1\n")
    with pytest.raises(InputError, match="not a readable MRC file"):
        read_map(text)

    noncubic = tmp_path / "noncubic.mrc"
    with mrcfile.new(noncubic) as mrc:
        mrc.set_data(np.zeros((4, 5, 5), np.float32))
        mrc.voxel_size = 1.0
    with pytest.raises(InputError, match="not cubic"):
        read_map(noncubic)

    for bad in (np.nan, np.inf):
        holes = tmp_path / "holes.mrc"
        data = np.ones((6, 6, 6), np.float32)
        data[2, 3, 4] = data[5, 0, 0] = bad
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile warns of NaN when writing
            with mrcfile.new(holes, overwrite=True) as mrc:
                mrc.set_data(data)
                mrc.voxel_size = 1.0
        with pytest.raises(InputError, match=r"holes\.mrc: 2 voxels are NaN or infinite \(the first at z, y, x = 2, 3, 4\)"):
            read_map(holes)

    image = tmp_path / "image.mrc"
    with mrcfile.new(image) as mrc:
        mrc.set_data(np.zeros((5, 5), np.float32))
        mrc.voxel_size = 1.0
    with pytest.raises(InputError, match="3-D"):
        read_map(image)

    novoxel = tmp_path / "novoxel.mrc"
    with mrcfile.new(novoxel) as mrc:
        mrc.set_data(np.ones((6, 6, 6), np.float32))
    with pytest.raises(InputError, match="no pixel size"):
        read_map(novoxel)
    vol, voxel = read_map(novoxel, allow_missing_voxel_size=True)
    assert voxel == 0.0 and vol.shape == (6, 6, 6)

    good = tmp_path / "good.mrc"
    write_map(good, np.ones((8, 8, 8)), 1.0)
    truncated = tmp_path / "truncated.mrc"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated"):
        read_map(truncated)


def test_write_map_bad_input_writes_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_map(tmp_path / "a.mrc", np.zeros((4, 4)), 1.0)
    with pytest.raises(ValueError):
        write_map(tmp_path / "a.mrc", np.zeros((4, 4, 4)), 0.0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("box", [15, 16])
def test_float16_stack_reads_as_float32(tmp_path, box):
    rng = np.random.default_rng(box)
    images = rng.normal(size=(5, box, box))
    path = tmp_path / "stack.mrcs"
    write_stack(path, images, 3.54, dtype=np.float16)
    with mrcfile.open(path) as mrc:  # independent reader
        assert mrc.header.mode == 12 and int(mrc.header.ispg) == 0
        assert mrc.data.dtype == np.float16
    stack = open_stack(path)
    assert isinstance(stack, np.memmap) and not stack.flags.writeable
    assert stack.dtype == np.float16 and stack.shape == (5, box, box)
    np.testing.assert_array_equal(stack.astype(np.float32), images.astype(np.float16).astype(np.float32))
    assert stack_shape(path) == (5, box, box)
    assert stack_pixel_size_A(path) == pytest.approx(3.54, rel=1e-6)


def test_float32_stack_and_single_image(tmp_path):
    images = np.arange(2 * 6 * 6, dtype=np.float32).reshape(2, 6, 6)
    path = tmp_path / "s.mrcs"
    write_stack(path, images, 1.5)
    np.testing.assert_array_equal(open_stack(path), images)
    with mrcfile.open(path) as mrc:
        assert mrc.header.mode == 2 and int(mrc.header.ispg) == 0
    single = tmp_path / "one.mrc"
    with mrcfile.new(single) as mrc:  # a 2-D file written by another program
        mrc.set_data(images[1])
    stack = open_stack(single)
    assert stack.shape == (1, 6, 6)
    np.testing.assert_array_equal(stack[0], images[1])
    assert stack_shape(single) == (1, 6, 6)
    assert stack_pixel_size_A(single) == 0.0


def test_write_stack_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        write_stack(tmp_path / "a.mrcs", np.zeros((1, 4, 4)), 1.0, dtype=np.int16)
    with pytest.raises(ValueError, match="NaN/inf"):
        write_stack(tmp_path / "a.mrcs", np.full((1, 4, 4), 1e6), 1.0, dtype=np.float16)
    assert list(tmp_path.iterdir()) == []


def test_open_stack_errors(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        open_stack(tmp_path / "absent.mrcs")
    bad = tmp_path / "bad.mrcs"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(InputError, match="not a readable MRC file"):
        open_stack(bad)
    with pytest.raises(InputError):
        stack_shape(bad)


def test_real_betagal_stacks_are_float16(betagal_dir):
    movies = sorted((betagal_dir / "particles" / "Movies").glob("*.mrcs"))
    assert len(movies) == 10
    total = 0
    for path in movies:
        stack = open_stack(path)
        assert stack.dtype == np.float16 and stack.shape[1:] == (64, 64)
        assert stack_shape(path) == stack.shape
        with mrcfile.open(path, permissive=True) as mrc:
            np.testing.assert_array_equal(stack[-1], mrc.data[-1])
        total += stack.shape[0]
    assert total == 2374
    assert stack_pixel_size_A(movies[0]) == pytest.approx(3.54, rel=1e-5)


def test_real_map_and_unstamped_stack():
    vol, voxel = read_map(shared_path("betagal-relion-tutorial", "betagal_5a1a_sim_relionframe_3.54A_box64.mrc"))
    assert vol.shape == (64, 64, 64) and voxel == pytest.approx(3.54, rel=1e-5)
    # No 'MAP ' stamp and machine stamp 0: needs permissive mode.
    stack = open_stack(shared_path("small-real-stacks", "cryodrgn", "empiar_10076_7.mrc"))
    assert stack.shape == (7, 320, 320) and stack.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_stack_writer_streams_and_sets_header(tmp_path, dtype):
    rng = np.random.default_rng(0)
    images = rng.normal(2.0, 3.0, size=(10, 9, 9)).astype(dtype)
    path = tmp_path / "out.mrcs"
    with StackWriter(path, n_images=10, box=9, pixel_size_A=2.5, dtype=dtype) as writer:
        assert not path.exists()
        writer.write(4, images[4:10])
        writer.write(0, images[0:3])
        writer.write(3, images[3])
    with mrcfile.open(path) as mrc:
        np.testing.assert_array_equal(mrc.data, images)
        assert int(mrc.header.ispg) == 0
        assert mrc.header.mode == (2 if dtype == np.float32 else 12)
        ref = images.astype(np.float64)
        assert float(mrc.header.dmin) == pytest.approx(ref.min(), rel=1e-6)
        assert float(mrc.header.dmax) == pytest.approx(ref.max(), rel=1e-6)
        assert float(mrc.header.dmean) == pytest.approx(ref.mean(), rel=1e-5)
        assert float(mrc.header.rms) == pytest.approx(ref.std(), rel=1e-5)
        assert float(mrc.voxel_size.x) == pytest.approx(2.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mrcs"]


def test_stack_writer_reads_back_what_it_wrote_and_only_that(tmp_path):
    images = np.arange(5 * 4 * 4, dtype=np.float32).reshape(5, 4, 4)
    with StackWriter(tmp_path / "out.mrcs", 5, 4, 1.0) as writer:
        writer.write(0, images[:3])
        got = writer.read(1, 3)
        np.testing.assert_array_equal(got, images[1:3])
        got[:] = -1.0  # a copy: the stack keeps its images
        np.testing.assert_array_equal(writer.read(0, 3), images[:3])
        with pytest.raises(ValueError, match="not all written"):
            writer.read(2, 4)
        with pytest.raises(ValueError, match="outside"):
            writer.read(3, 6)
        writer.write(3, images[3:])
    with pytest.raises(ValueError, match="outside the 'with' block"):
        writer.read(0, 1)
    np.testing.assert_array_equal(open_stack(tmp_path / "out.mrcs"), images)


def test_stack_writer_overwrite_recomputes_stats(tmp_path):
    path = tmp_path / "out.mrcs"
    with StackWriter(path, 2, 4, 1.0) as writer:
        writer.write(0, np.full((2, 4, 4), 100.0))
        writer.write(0, np.zeros((2, 4, 4)))
    with mrcfile.open(path) as mrc:
        assert float(mrc.header.dmax) == 0.0 and float(mrc.header.dmean) == 0.0


def test_stack_writer_crash_leaves_no_file(tmp_path):
    path = tmp_path / "out.mrcs"
    path_existing = tmp_path / "old.mrcs"
    write_stack(path_existing, np.ones((1, 4, 4)), 1.0)
    with pytest.raises(RuntimeError, match="crash"):
        with StackWriter(path, 4, 4, 1.0) as writer:
            writer.write(0, np.ones((2, 4, 4)))
            raise RuntimeError("crash")
    assert not path.exists()
    with pytest.raises(RuntimeError):
        with StackWriter(path_existing, 1, 4, 1.0):
            raise RuntimeError("crash")
    np.testing.assert_array_equal(open_stack(path_existing), np.ones((1, 4, 4)))  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.mrcs"]


def test_stack_writer_misuse(tmp_path):
    path = tmp_path / "out.mrcs"
    with pytest.raises(ValueError, match="never written"):
        with StackWriter(path, 3, 4, 1.0) as writer:
            writer.write(0, np.ones((2, 4, 4)))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="outside"):
        with StackWriter(path, 3, 4, 1.0) as writer:
            writer.write(2, np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="expected"):
        with StackWriter(path, 3, 4, 1.0) as writer:
            writer.write(0, np.ones((1, 5, 5)))
    with pytest.raises(ValueError):
        StackWriter(path, 0, 4, 1.0)
    assert list(tmp_path.iterdir()) == []
