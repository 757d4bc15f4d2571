"""MRC maps and particle stacks (via ``mrcfile``), with atomic writes.

Conventions (MRC2014, as RELION uses them):

* Volumes are returned as ``(z, y, x)`` float32 arrays, x the fast axis; files whose
  header axis order (``mapc, mapr, maps``) is not the standard ``(1, 2, 3)`` are permuted
  to ``(z, y, x)`` on read.
* Particle stacks are ``(n, y, x)``; a file with a single 2-D image is ``(1, y, x)``.
  Stacks are written with space group ``ISPG = 0`` (image stack), as RELION's ``.mrcs``.
* The voxel / pixel size in Å is ``cella / mx`` (mrcfile's ``voxel_size``); 0 means unset.
* Files are opened in mrcfile's *permissive* mode (RELION and other programs write
  headers that are not strictly valid, e.g. without the ``MAP `` stamp); anything that
  still cannot be read raises :class:`~cryogan_core.errors.InputError`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import TracebackType

import mrcfile
import mrcfile.utils
import numpy as np
from loguru import logger

from cryogan_core.errors import InputError
from cryogan_core.io.atomic import atomic_path

__all__ = [
    "read_map",
    "write_map",
    "open_stack",
    "stack_shape",
    "stack_pixel_size_A",
    "write_stack",
    "StackWriter",
]

_HEADER_BYTES = 1024
_WRITE_MODES = {np.dtype(np.float32): 2, np.dtype(np.float16): 12}


def _check_file(path: Path) -> None:
    """Raise InputError when ``path`` is missing or is not a regular file."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")


def _open_header(path: Path) -> mrcfile.mrcfile.MrcFile:
    """Open the MRC header of ``path`` (header only, permissive) or raise InputError."""
    _check_file(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mrc = mrcfile.open(path, mode="r", permissive=True, header_only=True)
        for w in caught:
            logger.debug(f"{path}: mrcfile: {w.message}")
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable MRC file ({exc})") from None
    return mrc


def _header_layout(path: Path, header: np.recarray) -> tuple[np.dtype, tuple[int, ...]]:
    """Data dtype and shape that the header promises, checked against the file size.

    Raises:
        InputError: unknown/complex mode, non-positive dimensions, or a file shorter than
            the header says (truncated, or not an MRC file at all).
    """
    try:
        dtype = mrcfile.utils.data_dtype_from_header(header)
    except ValueError as exc:
        raise InputError(f"{path}: not a readable MRC file ({exc})") from None
    if dtype.kind == "c":
        raise InputError(f"{path}: complex MRC data (mode {int(header.mode)}) is not supported")
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    if nx <= 0 or ny <= 0 or nz <= 0 or (int(header.mz) <= 0 and int(header.ispg) >= 401):
        raise InputError(f"{path}: not a readable MRC file (dimensions {nx} x {ny} x {nz})")
    shape = mrcfile.utils.data_shape_from_header(header)
    need = _HEADER_BYTES + int(header.nsymbt) + int(np.prod(shape)) * dtype.itemsize
    have = os.path.getsize(path)
    if have < need:
        raise InputError(
            f"{path}: truncated or not an MRC file: the header promises {need} bytes "
            f"({' x '.join(map(str, shape))} of {dtype.name}), the file has {have}"
        )
    return dtype, tuple(int(s) for s in shape)


def _voxel_sizes(mrc: mrcfile.mrcfile.MrcFile) -> tuple[float, float, float]:
    """Header voxel size (x, y, z) in Å as Python floats (0.0 where unset)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        vs = mrc.voxel_size
    out = tuple(float(v) for v in (vs.x, vs.y, vs.z))
    return tuple(v if np.isfinite(v) else 0.0 for v in out)  # type: ignore[return-value]


def stack_shape(path: str | Path) -> tuple[int, int, int]:
    """Shape ``(n, y, x)`` of a particle stack, from its header only (fast).

    A single 2-D image gives ``(1, y, x)``. The file size is checked against the header.

    Args:
        path: ``.mrcs`` / ``.mrc`` file.

    Returns:
        ``(n_images, ny, nx)`` as ints.

    Raises:
        InputError: file missing, not MRC, truncated, or a volume stack (4-D).
    """
    path = Path(path)
    with _open_header(path) as mrc:
        _, shape = _header_layout(path, mrc.header)
    if len(shape) == 2:
        return (1, shape[0], shape[1])
    if len(shape) != 3:
        raise InputError(f"{path}: a stack of volumes ({len(shape)}-D data) is not an image stack")
    return (shape[0], shape[1], shape[2])


def stack_pixel_size_A(path: str | Path) -> float:
    """Pixel size in Å from an MRC stack header (``voxel_size.x``); 0.0 when unset.

    Note: many stacks carry a wrong or unset header pixel size; the STAR file's
    ``rlnImagePixelSize`` is authoritative for particles.

    Raises:
        InputError: file missing or not MRC.
    """
    path = Path(path)
    with _open_header(path) as mrc:
        return _voxel_sizes(mrc)[0]


def _zyx_axes(header: np.recarray) -> tuple[int, int, int] | None:
    """Transpose order that turns file data ``(sections, rows, cols)`` into ``(z, y, x)``.

    ``mapc``/``mapr``/``maps`` name the axis (1 = x, 2 = y, 3 = z) along columns, rows and
    sections (MRC2014 words 17-19). Returns None for the standard order or an invalid one.
    """
    order = (int(header.mapc), int(header.mapr), int(header.maps))
    if order == (1, 2, 3) or sorted(order) != [1, 2, 3]:
        return None
    data_axis = {order[0]: 2, order[1]: 1, order[2]: 0}  # axis letter -> data axis
    return (data_axis[3], data_axis[2], data_axis[1])


def read_map(
    path: str | Path, allow_missing_voxel_size: bool = False
) -> tuple[np.ndarray, float]:
    """Read a cubic 3-D map.

    Args:
        path: ``.mrc`` / ``.map`` file.
        allow_missing_voxel_size: when True, a header without a voxel size returns 0.0
            instead of raising.

    Returns:
        ``(volume, voxel_size_A)``: ``volume`` is a float32 C-contiguous ``(z, y, x)`` array
        of shape ``(N, N, N)`` (permuted from the file's axis order if ``mapc/mapr/maps`` is
        not 1, 2, 3); ``voxel_size_A`` is the header's x voxel size in Å.

    Raises:
        InputError: file missing or not MRC; not 3-D; not cubic; NaN or infinite voxels;
            voxel size 0 (unless ``allow_missing_voxel_size``).
    """
    path = Path(path)
    _check_file(path)
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            with mrcfile.open(path, mode="r", permissive=True) as mrc:
                if mrc.data is None:
                    raise InputError(f"{path}: not a readable MRC file (no data block)")
                _header_layout(path, mrc.header)
                data = np.asarray(mrc.data)
                axes = _zyx_axes(mrc.header)
                vs = _voxel_sizes(mrc)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable MRC file ({exc})") from None
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3-D map, got {data.ndim}-D data of shape {data.shape}")
    if axes is not None:
        data = data.transpose(axes)
    if not (data.shape[0] == data.shape[1] == data.shape[2]):
        raise InputError(f"{path}: the map is not cubic (z, y, x = {data.shape}); resize it to a cube")
    finite = np.isfinite(data)
    if not finite.all():
        z, y, x = (int(i) for i in np.argwhere(~finite)[0])
        n_bad = int((~finite).sum())
        raise InputError(f"{path}: {n_bad} voxel{'s are' if n_bad > 1 else ' is'} NaN or infinite (the first at z, y, x = "
                         f"{z}, {y}, {x}); a map to use as a reference or a mask must be finite everywhere")
    if vs[0] <= 0.0:
        if not allow_missing_voxel_size:
            raise InputError(
                f"{path}: the header has no pixel size (voxel size 0); set it, e.g. "
                f"relion_image_handler --i {path.name} --o fixed.mrc --angpix <Å>"
            )
        return np.array(data, dtype=np.float32, order="C"), 0.0
    if any(v > 0 and abs(v - vs[0]) > 1e-3 * vs[0] for v in vs[1:]):
        logger.warning(f"{path}: voxel size differs between axes {vs}; using x = {vs[0]:.4f} Å")
    return np.array(data, dtype=np.float32, order="C"), vs[0]  # a writable copy


def write_map(path: str | Path, volume: np.ndarray, voxel_size_A: float) -> None:
    """Write a 3-D map as float32 MRC (mode 2), atomically.

    Args:
        path: destination ``.mrc``.
        volume: ``(z, y, x)`` array (any real dtype; stored as float32).
        voxel_size_A: voxel size in Å (> 0), written to the header (``cella = N·voxel``).

    The header has ``ISPG = 1`` (volume), origin 0, ``nxstart = nystart = nzstart = 0`` and
    up-to-date min/max/mean/rms.

    Raises:
        ValueError: ``volume`` is not 3-D or ``voxel_size_A`` is not positive.
    """
    vol = np.ascontiguousarray(np.asarray(volume), dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"write_map: expected a 3-D volume, got shape {vol.shape}")
    if not voxel_size_A > 0:
        raise ValueError(f"write_map: voxel_size_A must be > 0, got {voxel_size_A}")
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(vol)
            mrc.set_volume()
            mrc.voxel_size = float(voxel_size_A)
            mrc.header.origin = (0.0, 0.0, 0.0)
            mrc.nstart = 0
            mrc.update_header_stats()


def open_stack(path: str | Path) -> np.ndarray:
    """Open a particle stack as a read-only memory map ``(n, y, x)``.

    Uses ``mrcfile.mmap(path, mode='r', permissive=True)``; the mrcfile handle is closed and
    the returned array stays valid (it holds the mapping). The dtype is the file's (float16
    for mode 12, float32 for mode 2, ...): convert with ``.astype(np.float32)`` on read. A
    single 2-D image gives ``(1, y, x)``.

    Raises:
        InputError: file missing, not MRC, truncated, or 4-D (a stack of volumes).
    """
    path = Path(path)
    _check_file(path)
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
                _header_layout(path, mrc.header)
                data = mrc.data
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable MRC file ({exc})") from None
    if data is None:
        raise InputError(f"{path}: not a readable MRC file (no data block)")
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3:
        raise InputError(f"{path}: a stack of volumes ({data.ndim}-D data) is not an image stack")
    return data


def _mode_for(dtype: np.dtype | type) -> int:
    """MRC mode for a stack dtype (float32 -> 2, float16 -> 12); ValueError otherwise."""
    dt = np.dtype(dtype)
    if dt not in _WRITE_MODES:
        raise ValueError(f"unsupported stack dtype {dt} (use float32 or float16)")
    return _WRITE_MODES[dt]


def write_stack(
    path: str | Path,
    images: np.ndarray,
    pixel_size_A: float,
    dtype: np.dtype | type = np.float32,
) -> None:
    """Write ``(n, y, x)`` images as an MRC image stack (``ISPG = 0``), atomically.

    Args:
        path: destination (``.mrcs`` for RELION).
        images: ``(n, y, x)`` real array (a single ``(y, x)`` image is written as n = 1).
        pixel_size_A: pixel size in Å written to the header (0 allowed: unset).
        dtype: ``np.float32`` (mode 2) or ``np.float16`` (mode 12).

    Raises:
        ValueError: wrong shape, unsupported dtype, negative pixel size, or values that are
            not finite after conversion to ``dtype`` (e.g. > 65504 in float16).
    """
    mode = _mode_for(dtype)
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise ValueError(f"write_stack: expected (n, y, x) images, got shape {arr.shape}")
    if pixel_size_A < 0:
        raise ValueError(f"write_stack: pixel_size_A must be >= 0, got {pixel_size_A}")
    with np.errstate(over="ignore", invalid="ignore"):
        data = np.ascontiguousarray(arr, dtype=np.dtype(dtype))
    if not np.isfinite(data).all():
        raise ValueError(f"write_stack: {path}: images contain NaN/inf (after conversion to {data.dtype})")
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            mrc.set_image_stack()
            mrc.voxel_size = float(pixel_size_A)
            assert mrc.header.mode == mode
            mrc.update_header_stats()


class StackWriter:
    """Stream images into a new MRC stack without holding them in memory.

    The file is created with ``mrcfile.new_mmap`` under a temporary name next to ``path``
    (see :func:`~cryogan_core.io.atomic.atomic_path`); images are written by slices with
    :meth:`write`. On normal exit every image must have been written; the header statistics
    (min, max, mean, rms = standard deviation, as mrcfile computes them) are set from running
    sums and the file is renamed onto ``path``. On an exception the temporary file is deleted
    and nothing appears under ``path``.

    Example::

        with StackWriter("Job/denoised.mrcs", n_images=n, box=64, pixel_size_A=3.54) as w:
            for start, batch in ...:
                w.write(start, batch)

    Args:
        path: destination stack.
        n_images: number of images (> 0).
        box: image side in pixels (> 0).
        pixel_size_A: header pixel size in Å (>= 0).
        dtype: ``np.float32`` (mode 2) or ``np.float16`` (mode 12).

    Raises:
        ValueError: bad sizes or dtype; in :meth:`write`, wrong shape, out-of-range slice or
            non-finite values; on exit, images that were never written.
    """

    def __init__(
        self,
        path: str | Path,
        n_images: int,
        box: int,
        pixel_size_A: float,
        dtype: np.dtype | type = np.float32,
    ) -> None:
        self.path = Path(path)
        self.n_images = int(n_images)
        self.box = int(box)
        self.pixel_size_A = float(pixel_size_A)
        self.dtype = np.dtype(dtype)
        self._mode = _mode_for(self.dtype)
        if self.n_images <= 0 or self.box <= 0:
            raise ValueError(f"StackWriter: n_images and box must be > 0, got {n_images}, {box}")
        if self.pixel_size_A < 0:
            raise ValueError(f"StackWriter: pixel_size_A must be >= 0, got {pixel_size_A}")
        self._atomic = None
        self._mrc = None
        self._written = np.zeros(self.n_images, dtype=bool)
        self._rewritten = False
        self._min = np.inf
        self._max = -np.inf
        self._sum = 0.0
        self._sumsq = 0.0

    def __enter__(self) -> "StackWriter":
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            self._mrc = mrcfile.new_mmap(
                tmp, shape=(self.n_images, self.box, self.box), mrc_mode=self._mode, overwrite=True
            )
            self._mrc.set_image_stack()
            self._mrc.voxel_size = self.pixel_size_A
        except BaseException as exc:
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def write(self, start: int, images: np.ndarray) -> None:
        """Write ``images`` (``(k, box, box)``, or one ``(box, box)``) at positions ``start..start+k-1``.

        ``start`` is the 0-based position in the stack (RELION index = start + 1).
        """
        if self._mrc is None:
            raise ValueError("StackWriter.write called outside the 'with' block")
        arr = np.asarray(images)
        if arr.ndim == 2:
            arr = arr[np.newaxis]
        if arr.ndim != 3 or arr.shape[1:] != (self.box, self.box):
            raise ValueError(f"StackWriter.write: expected (k, {self.box}, {self.box}) images, got {arr.shape}")
        start = int(start)
        stop = start + arr.shape[0]
        if start < 0 or stop > self.n_images:
            raise ValueError(f"StackWriter.write: images {start}..{stop - 1} outside 0..{self.n_images - 1}")
        with np.errstate(over="ignore", invalid="ignore"):
            block = arr.astype(self.dtype, copy=False)
        if not np.isfinite(block).all():
            raise ValueError(f"StackWriter.write: {self.path}: images {start}..{stop - 1} contain NaN/inf")
        self._mrc.data[start:stop] = block
        if self._written[start:stop].any():
            self._rewritten = True
        self._written[start:stop] = True
        if block.size:
            b64 = block.astype(np.float64)
            self._min = min(self._min, float(b64.min()))
            self._max = max(self._max, float(b64.max()))
            self._sum += float(b64.sum())
            self._sumsq += float(np.square(b64).sum())

    def read(self, start: int, stop: int) -> np.ndarray:
        """A copy of the images already written at positions ``start..stop-1``.

        Returns:
            ``(stop - start, box, box)`` array of the stack's dtype.

        Raises:
            ValueError: outside the ``with`` block, a slice outside the stack, or positions
                not written yet.
        """
        if self._mrc is None:
            raise ValueError("StackWriter.read called outside the 'with' block")
        if not 0 <= start <= stop <= self.n_images:
            raise ValueError(f"StackWriter.read: images {start}..{stop - 1} outside 0..{self.n_images - 1}")
        if not self._written[start:stop].all():
            raise ValueError(f"StackWriter.read: {self.path}: images {start}..{stop - 1} are not all written yet")
        return np.array(self._mrc.data[start:stop])

    def _finalise_header(self) -> None:
        """Set dmin/dmax/dmean/rms from the running sums (or recompute after overwrites)."""
        mrc = self._mrc
        if self._rewritten:
            mrc.update_header_stats()
            return
        n = float(self._written.size * self.box * self.box)
        mean = self._sum / n
        var = max(self._sumsq / n - mean * mean, 0.0)
        mrc.header.dmin = self._min
        mrc.header.dmax = self._max
        mrc.header.dmean = mean
        mrc.header.rms = np.sqrt(var)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._atomic is not None and self._mrc is not None
        try:
            if exc_type is None:
                missing = np.flatnonzero(~self._written)
                if missing.size:
                    raise ValueError(
                        f"StackWriter: {self.path}: {missing.size} of {self.n_images} images were "
                        f"never written (first: position {int(missing[0])})"
                    )
                self._finalise_header()
            self._mrc.close()
        except BaseException as err:
            self._close_quietly()
            self._atomic.__exit__(type(err), err, err.__traceback__)
            self._mrc = None
            raise
        self._mrc = None
        self._atomic.__exit__(exc_type, exc, tb)
        return False

    def _close_quietly(self) -> None:
        """Close the mrcfile handle, ignoring errors (used on the failure path)."""
        try:
            if self._mrc is not None:
                self._mrc.close()
        except Exception:  # noqa: BLE001 - already failing; the temp file is deleted next
            pass
