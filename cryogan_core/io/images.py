"""Lazy, validated access to the particle images of a particle table.

RELION's ``rlnImageName`` is ``NNNNNN@path/stack.mrcs`` (1-based index; RELION
``FileName::decompose``, ``src/filename.cpp``) and relative paths are relative to the
project directory (RELION runs every job from there). :class:`ParticleImages` checks every
row once at construction (stack exists, index in range, one square box for all stacks),
then reads images in batches from memory-mapped stacks, grouped by stack.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from cryogan_core.errors import InputError
from cryogan_core.io.mrc import open_stack, stack_shape
from cryogan_core.io.star import parse_image_name

__all__ = ["ParticleImages", "resolve_image_path"]


def resolve_image_path(path: str, project_dir: Path) -> Path:
    """Absolute path of a stack named in ``rlnImageName``.

    Absolute paths are kept; relative ones are joined to ``project_dir`` (RELION's working
    directory). ``~`` is not expanded (RELION does not either). The result is made
    absolute but symlinks are not resolved.

    Args:
        path: the stack part of ``rlnImageName`` (after ``@``).
        project_dir: the RELION project directory.

    Returns:
        The absolute path.
    """
    p = Path(path)
    if not p.is_absolute():
        p = Path(project_dir) / p
    return Path(p.absolute())


def _split_names(names: pd.Series, star: str) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised ``parse_image_name`` over a column: (1-based indices int64, stack paths).

    Rows that do not match the fast pattern go through :func:`parse_image_name` to get its
    exact error, prefixed with ``<star>: row <n>:``.
    """
    text = names.astype(str).str.strip()
    parts = text.str.partition("@")
    has_at = (parts[1] == "@").to_numpy()
    idx_text = parts[0].where(has_at, "1")
    path_text = parts[2].where(has_at, text)
    ok = idx_text.str.fullmatch(r"\d{1,18}").to_numpy() & (path_text.str.len() > 0).to_numpy()
    index = np.ones(len(text), dtype=np.int64)
    index[ok] = idx_text[ok].astype(np.int64).to_numpy()
    ok &= index >= 1
    for r in np.flatnonzero(~ok)[:1]:
        try:
            parse_image_name(text.iloc[r])
        except InputError as exc:
            raise InputError(f"{star}: row {r + 1}: {exc}") from None
        raise InputError(f"{star}: row {r + 1}: rlnImageName {text.iloc[r]}: cannot be parsed")
    return index, path_text.to_numpy(dtype=object)


class ParticleImages:
    """The images of a particle table, validated up front and read lazily.

    Args:
        particles: particle table with ``rlnImageName`` (e.g. ``ParticleStar.particles``).
            Rows are addressed by position (0-based). If it has an ``rlnImageSize`` column,
            values of -1 (unknown) are filled in place with the stack box, and any other
            value must equal the box.
        project_dir: RELION project directory; relative stack paths resolve against it.
        star_path: name of the STAR file, used in error messages only.
        max_open_stacks: how many stacks are kept memory-mapped at once (least recently
            used are closed; each open map holds a file descriptor).

    Attributes:
        box: image side in pixels (all stacks share it).
        n: number of particles (``len(self)``).
        stack_paths: absolute path of each distinct stack, in first-use order.

    Raises:
        InputError (construction): ``rlnImageName`` missing; a name that cannot be parsed;
            a stack that does not exist (``<star>: row 5: rlnImageName 000003@Movies/x.mrcs:
            file not found (looked in /abs/Movies/x.mrcs)``) or is not MRC; an index beyond
            the stack; non-square images or stacks with different boxes; an
            ``rlnImageSize`` that disagrees with the stack.
    """

    def __init__(
        self,
        particles: pd.DataFrame,
        project_dir: str | Path,
        star_path: str | Path = "particles.star",
        max_open_stacks: int = 256,
    ) -> None:
        self._star = str(star_path)
        self.project_dir = Path(project_dir).absolute()
        if "rlnImageName" not in particles.columns:
            raise InputError(f"{self._star}: column rlnImageName is missing (needed: the particle images)")
        names = particles["rlnImageName"]
        self._names = names.astype(str).to_numpy(dtype=object)
        index_1based, rel_paths = _split_names(names, self._star)
        codes, uniques = pd.factorize(pd.Series(rel_paths), sort=False)
        self._stack_id = codes.astype(np.int64)
        self._index0 = index_1based - 1
        self.stack_paths = [resolve_image_path(p, self.project_dir) for p in uniques]
        self._max_open = max(1, int(max_open_stacks))
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()
        self.box = self._validate_stacks()
        self._fill_image_size(particles)

    # ------------------------------------------------------------------ validation

    def _first_row(self, mask: np.ndarray) -> int:
        """0-based position of the first True in ``mask``."""
        return int(np.flatnonzero(mask)[0])

    def _row_error(self, r: int, message: str) -> InputError:
        """``<star>: row <r+1>: rlnImageName <name>: <message>``."""
        return InputError(f"{self._star}: row {r + 1}: rlnImageName {self._names[r]}: {message}")

    def _validate_stacks(self) -> int:
        """Check every stack and index; return the common box (px)."""
        boxes: list[tuple[int, int]] = []
        for sid, path in enumerate(self.stack_paths):
            rows_here = self._stack_id == sid
            if not path.is_file():
                raise self._row_error(self._first_row(rows_here), f"file not found (looked in {path})")
            try:
                n_img, ny, nx = stack_shape(path)
            except InputError as exc:
                raise self._row_error(self._first_row(rows_here), str(exc)) from None
            beyond = rows_here & (self._index0 >= n_img)
            if beyond.any():
                r = self._first_row(beyond)
                raise self._row_error(
                    r, f"index {self._index0[r] + 1} is out of range (stack has {n_img} images)"
                )
            if ny != nx:
                raise self._row_error(self._first_row(rows_here), f"images are not square ({ny} x {nx} px in {path})")
            boxes.append((nx, sid))
        box0, sid0 = boxes[0]
        for box, sid in boxes[1:]:
            if box != box0:
                r = self._first_row(self._stack_id == sid)
                raise self._row_error(
                    r, f"box {box} px differs from {box0} px of {self.stack_paths[sid0]} (all stacks must match)"
                )
        return box0

    def _fill_image_size(self, particles: pd.DataFrame) -> None:
        """Fill ``rlnImageSize`` = -1 with the box in place; InputError on a mismatch."""
        if "rlnImageSize" not in particles.columns:
            return
        sizes = pd.to_numeric(particles["rlnImageSize"], errors="coerce").to_numpy(np.float64)
        wrong = (sizes != -1) & (sizes != self.box)
        if wrong.any():
            r = self._first_row(wrong)
            raise InputError(
                f"{self._star}: row {r + 1}: rlnImageSize {particles['rlnImageSize'].iloc[r]} "
                f"does not match the stack box {self.box} px"
            )
        if (sizes == -1).any():
            col = particles.columns.get_loc("rlnImageSize")
            particles.iloc[np.flatnonzero(sizes == -1), col] = self.box

    # ------------------------------------------------------------------ access

    @property
    def n(self) -> int:
        """Number of particles."""
        return len(self._stack_id)

    def __len__(self) -> int:
        """Number of particles."""
        return self.n

    def _stack(self, sid: int) -> np.ndarray:
        """Memory-mapped stack ``sid`` (LRU cache of at most ``max_open_stacks``)."""
        data = self._open.get(sid)
        if data is not None:
            self._open.move_to_end(sid)
            return data
        data = open_stack(self.stack_paths[sid])
        self._open[sid] = data
        if len(self._open) > self._max_open:
            self._open.popitem(last=False)
        return data

    def _positions(self, rows: Sequence[int] | np.ndarray | slice) -> np.ndarray:
        """Rows as a 1-D int64 array of positions in ``0..n-1``; IndexError when out of range."""
        if isinstance(rows, slice):
            return np.arange(self.n, dtype=np.int64)[rows]
        pos = np.asarray(rows)
        if pos.dtype == bool:
            raise IndexError("ParticleImages.read: boolean masks are not accepted; pass np.flatnonzero(mask)")
        pos = pos.astype(np.int64, copy=False).reshape(-1)
        if pos.size and (pos.min() < 0 or pos.max() >= self.n):
            raise IndexError(f"ParticleImages.read: rows must be in 0..{self.n - 1}")
        return pos

    def read(self, rows: Sequence[int] | np.ndarray | slice) -> np.ndarray:
        """Read images as float32.

        Args:
            rows: 0-based positions in the particle table (sequence, int array or slice).

        Returns:
            ``(len(rows), box, box)`` float32 array, in the order of ``rows`` (float16
            stacks are converted). Images of the same stack are read together, in file order.

        Raises:
            IndexError: a position outside ``0..n-1``.
            InputError: an image holds NaN or infinite values (file and row named).
        """
        pos = self._positions(rows)
        out = np.empty((pos.size, self.box, self.box), dtype=np.float32)
        if pos.size == 0:
            return out
        sids = self._stack_id[pos]
        for sid in np.unique(sids):
            sel = np.flatnonzero(sids == sid)
            wanted = self._index0[pos[sel]]
            uniq, inverse = np.unique(wanted, return_inverse=True)
            block = np.asarray(self._stack(int(sid))[uniq], dtype=np.float32)
            out[sel] = block[inverse]
        finite = np.isfinite(out).reshape(pos.size, -1).all(axis=1)
        if not finite.all():
            r = int(pos[np.flatnonzero(~finite)[0]])
            raise self._row_error(
                r, f"the image has NaN or infinite values (in {self.stack_paths[self._stack_id[r]]})"
            )
        return out

    def iter_batches(
        self, batch_size: int, rows: Sequence[int] | np.ndarray | slice | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(rows, images)`` in consecutive batches.

        Args:
            batch_size: images per batch (> 0); the last batch may be smaller.
            rows: positions to read (default: all, in table order).

        Yields:
            ``rows`` int64 ``(b,)`` positions and ``images`` float32 ``(b, box, box)``.

        Raises:
            ValueError: ``batch_size`` < 1. Plus the errors of :meth:`read`.
        """
        if batch_size < 1:
            raise ValueError(f"iter_batches: batch_size must be >= 1, got {batch_size}")
        pos = self._positions(slice(None) if rows is None else rows)
        for start in range(0, pos.size, batch_size):
            chunk = pos[start : start + batch_size]
            yield chunk, self.read(chunk)
