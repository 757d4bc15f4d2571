"""Atomic file writes: write to a temporary file next to the target, then rename.

A reader (RELION, the pipeliner, another job) never sees a half-written file under the
final name: either the old file (or none) is there, or the complete new one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


def partial_path(final: str | Path) -> Path:
    """Return the temporary path used while ``final`` is being written.

    The temporary file sits in the same directory (so ``os.replace`` is an atomic rename on
    the same file system), is hidden, names the process, and keeps the final suffix so that
    libraries that look at the extension (mrcfile, starfile) behave the same:
    ``Dir/particles.star`` -> ``Dir/.particles.star.partial-<pid>.star``.

    Args:
        final: the path the file will finally have.

    Returns:
        The temporary path (not created).
    """
    final = Path(final)
    return final.with_name(f".{final.name}.partial-{os.getpid()}{final.suffix}")


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it onto ``final`` when the block succeeds.

    Creates the parent directory of ``final`` if needed. When the ``with`` block exits
    normally, the temporary file is renamed onto ``final`` with ``os.replace`` (atomic on
    POSIX, replaces an existing file). When the block raises, the temporary file is deleted
    (if it was created) and the exception propagates; ``final`` is left untouched.

    Example::

        with atomic_path("Job/particles.star") as tmp:
            tmp.write_text(text)

    Args:
        final: the destination path.

    Yields:
        The temporary path (``partial_path(final)``), in the same directory as ``final``.

    Raises:
        FileNotFoundError: the block exited normally without creating the temporary file.
        OSError: the parent directory cannot be created or the rename fails.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(final)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if not tmp.exists():
        raise FileNotFoundError(f"atomic_path: nothing was written to {tmp} for {final}")
    try:
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
