"""Where the object is in each embedded image: the cell's coverage, replayed from the generator.

``reproduce.data.embedded`` draws each cell at a known position but stores only the images. Its
renderers return the cell's anti-aliased coverage (alpha) on the 56x56 canvas before compositing;
this module re-runs the generator with the same seed and sizes, records each cell's alpha and
2x2-averages it to the stored 28x28 grid, exactly as the image itself is downsampled. The replay
reuses the generator's own code (its ``_CELLS`` renderers are wrapped for the duration of the call,
which consumes the same random draws), so there is no second copy of the geometry to drift, and the
regenerated images are compared with the given ones to prove it.

Coverage is the cell's own: where a red cell is drawn over the cell's edge, the pixel still counts
as object. Blur applied after downsampling is not applied to the mask.

TODO (data owners): a ``generate_arrays(..., with_masks=True)`` in ``reproduce.data.embedded`` would
make the wrapping unnecessary.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np

from reproduce.errors import ReproduceError


@contextlib.contextmanager
def _recording_cells(embedded, record: list) -> Iterator[None]:
    original = getattr(embedded, "_CELLS", None)
    if original is None:
        raise ReproduceError(
            "reproduce.data.embedded no longer has _CELLS renderers; "
            "reproduce.attribution.objects must follow its new layout"
        )

    def recorder(render):
        def wrapped(*args, **kwargs):
            h, e, alpha = render(*args, **kwargs)
            record.append(np.asarray(alpha, dtype=np.float64))
            return h, e, alpha

        return wrapped

    embedded._CELLS = tuple(recorder(r) for r in original)
    try:
        yield
    finally:
        embedded._CELLS = original


def _downsample(alpha: np.ndarray) -> np.ndarray:
    # the same 2x2 mean the generator applies to the rendered canvas
    return 0.25 * (alpha[:, 0::2, 0::2] + alpha[:, 1::2, 0::2] + alpha[:, 0::2, 1::2] + alpha[:, 1::2, 1::2])


def embedded_object_masks(
    split: str = "test", *, seed: int = 0, sizes: dict[str, int] | None = None, images: np.ndarray | None = None
) -> np.ndarray:
    """Object coverage of every image of one split of the embedded dataset.

    Args:
        split: "train", "val" or "test".
        seed: the generator's seed (the pinned dataset uses 0).
        sizes: split sizes as in ``generate_arrays``; default ``embedded.DEFAULT_SIZES`` (the pinned
            dataset). The split's own size matters: it fixes the label permutation.
        images: optional uint8 [N, 28, 28, 3] images of that split (e.g. as loaded); checked to be
            what the replay renders.

    Returns:
        float64 [N, 28, 28] coverage in [0, 1].

    Raises:
        ReproduceError: if ``images`` differ from the regenerated ones (another seed, other sizes,
            or a generator that changed).
    """
    from reproduce.data import embedded

    sizes = dict(embedded.DEFAULT_SIZES if sizes is None else sizes)
    if split not in sizes:
        raise ValueError(f"split must be one of {tuple(sizes)}, got {split!r}")
    # Splits draw from independent streams: the other splits can be left empty.
    only = {f"n_{s}": (sizes[s] if s == split else 0) for s in embedded.DEFAULT_SIZES}
    record: list[np.ndarray] = []
    with _recording_cells(embedded, record):
        arrays = embedded.generate_arrays(seed=seed, **only)
    regenerated = arrays[f"{split}_images"]
    if len(record) != len(regenerated):
        raise ReproduceError(
            f"recorded {len(record)} cells for {len(regenerated)} images: the embedded "
            "generator no longer draws one cell per image"
        )
    if images is not None and not np.array_equal(np.asarray(images), regenerated):
        raise ReproduceError(
            f"the given {split} images are not what reproduce.data.embedded renders with "
            f"seed={seed} and sizes={sizes}; masks would not match them"
        )
    return _downsample(np.stack(record)) if record else np.zeros((0, 28, 28))
