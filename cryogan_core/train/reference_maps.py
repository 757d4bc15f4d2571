"""The reference map for each pixel size, at the particles' box and at smaller boxes.

The denoiser projects the refined map once per particle (training pairs, agreement
scores). Particles of several optics groups need the map resampled to each group's pixel
size, and predictions at a smaller training box (``--train_box``) project it
Fourier-cropped (:func:`~cryogan_core.train.pairs.predictions` with ``box_out``), which
is several times cheaper than projecting at the particles' box
(``benchmarks/pairs_at_train_box.py``). :class:`MapsForPixel` makes each of these maps once.
"""

from __future__ import annotations

from typing import Callable

import torch

from cryogan_core.physics.projection import Projector
from cryogan_core.physics.resample import fourier_crop_or_pad_map


class MapsForPixel:
    """Pixel size (Å) -> the reference map at the particles' box, and its Fourier crops.

    Args:
        make: pixel size (Å) -> ``(box, box, box)`` float32 map at that pixel size (e.g.
            the refined map resampled to an optics group's pixel size); called once per
            pixel size.

    Calling the object gives the map at the particles' box; :meth:`cropped` the same map
    Fourier-cropped to a smaller box (pixel size ``pixel_size_A · box / box_out``, values
    kept: :func:`~cryogan_core.physics.resample.fourier_crop_or_pad_map`); :meth:`projector`
    a :class:`~cryogan_core.physics.projection.Projector` of either, whose padded 3-D FFT
    every batch of predictions would otherwise compute again.
    """

    def __init__(self, make: Callable[[float], torch.Tensor]) -> None:
        self._make = make
        self._maps: dict[tuple[float, int | None], torch.Tensor] = {}
        self._projectors: dict[tuple[float, int], Projector] = {}

    def __call__(self, pixel_size_A: float) -> torch.Tensor:
        """The ``(box, box, box)`` map at ``pixel_size_A`` (Å/px)."""
        key = (float(pixel_size_A), None)
        if key not in self._maps:
            self._maps[key] = self._make(float(pixel_size_A))
        return self._maps[key]

    def cropped(self, pixel_size_A: float, box_out: int) -> torch.Tensor:
        """The map at ``pixel_size_A`` (Å/px, at the particles' box) Fourier-cropped to
        ``(box_out, box_out, box_out)`` float32 (its pixel ``pixel_size_A · box / box_out``).

        Raises:
            ValueError: ``box_out < 1``.
        """
        key = (float(pixel_size_A), int(box_out))
        if key not in self._maps:
            full = self(pixel_size_A)
            self._maps[key] = full if box_out == full.shape[-1] else fourier_crop_or_pad_map(full, int(box_out))
        return self._maps[key]

    def projector(self, pixel_size_A: float, box_out: int) -> Projector:
        """A :class:`~cryogan_core.physics.projection.Projector` (pad factor 2) of
        :meth:`cropped` ``(pixel_size_A, box_out)``, made once.

        Memory: the padded half-spectrum, ``8·(2·box_out)²·(box_out + 1)`` bytes (68 MB at
        128 px, 0.5 GB at 256 px). Time saved per batch of predictions on 2 CPU threads:
        0.5 s at 128 px, 5 s at 256 px.

        Raises:
            ValueError: ``box_out < 1``.
        """
        key = (float(pixel_size_A), int(box_out))
        if key not in self._projectors:
            with torch.no_grad():
                self._projectors[key] = Projector(self.cropped(pixel_size_A, box_out))
        return self._projectors[key]
