"""Instance label images: the one place where they are checked.

A label image holds one whole-number id per pixel: 0 is background, every cell
has its own positive id (ids need not be consecutive). Any integer dtype is
accepted, floats only when every value is a whole number, and a bool mask is
read as one cell per connected (4-neighbour) blob.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["check_labels", "check_nonnegative"]


def check_labels(
    value: Any,
    name: str = "labels",
    *,
    ndim: Sequence[int] | None = (2, 3),
    nonnegative: bool = True,
) -> np.ndarray:
    """The label image as an integer numpy array (not a copy unless needed).

    Parameters
    ----------
    value : array-like
        Instance labels (numpy, dask, zarr, a napari Labels layer's data).
    name : str
        How error messages call it ("labels 2", "the true labels", ...).
    ndim : sequence of int, optional
        Dimensions allowed (default 2D or a stack of 2D planes); None for any.
    nonnegative : bool
        Refuse negative ids (the whole array is scanned once).

    Returns
    -------
    numpy.ndarray
        Of the input's integer dtype; int64 for whole-number floats; int32
        connected components for a bool mask.

    Raises
    ------
    ValueError
        One line naming the problem and the fix.

    Examples
    --------
    >>> check_labels(np.array([[0, 2.0], [2, 5]])).dtype
    dtype('int64')
    >>> check_labels(np.array([[True, False, True]]))
    array([[1, 0, 2]], dtype=int32)
    """
    if not (hasattr(value, "shape") and hasattr(value, "dtype")) and not isinstance(
            value, (list, tuple)):
        raise ValueError(f"{name} must be an array of cell ids, not {type(value).__name__}")
    arr = np.asarray(value)
    if ndim is not None and arr.ndim not in tuple(ndim):
        forms = {2: "2D (row, col)", 3: "a stack (plane, row, col)"}
        want = " or ".join(forms.get(int(d), f"{d}D") for d in ndim)
        raise ValueError(f"{name} must be {want}, got shape {arr.shape}")
    if arr.dtype == bool:
        from skimage.measure import label as connected

        if arr.ndim <= 2:
            return connected(arr, connectivity=1).astype(np.int32)
        out = np.zeros(arr.shape, np.int32)
        next_id = 0
        for z in range(arr.shape[0]):
            lab = connected(arr[z], connectivity=1).astype(np.int32)
            out[z] = np.where(lab > 0, lab + next_id, 0)
            next_id = int(out[z].max(initial=next_id))
        return out
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold whole-number cell ids (0 = background), not values "
                         f"of dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise ValueError(
                f"{name} hold non-integer values; labels are whole-number cell ids "
                "(0 = background), for example a napari Labels layer"
            )
        arr = arr.astype(np.int64)
    if nonnegative:
        check_nonnegative(arr, name)
    return arr


def check_nonnegative(labels: np.ndarray, name: str = "labels", hint: str = "") -> None:
    """Refuse negative ids (one line; ``hint`` is added to the advice)."""
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise ValueError(f"{name} hold negative ids ({int(labels.min())}); use 0 for background "
                         f"and positive ids (1, 2, ...) for cells{hint}")
