"""Synthetic microscopy images with exact instance labels, made from a seed.

napari-unet never downloads data or weights, so it makes its own training data.
Every generator returns ``(image, labels)``: a 2-D image and int32 instance labels
of the same (row, col) shape, 0 for background and cells numbered 1..N with no
gaps. Each pixel belongs to at most one cell and every cell is one 4-connected
component. The result is fully determined by the seed.

Three kinds of images are made (see :data:`KINDS`):

``"nuclei"`` (:func:`synthetic_nuclei`)
    Widefield fluorescence nuclei (DAPI/Hoechst-like) of a range of sizes and
    elongations, scattered or in colonies packed so tightly that they flatten
    against each other along long contacts; chromatin texture, nucleoli, dim
    nuclei next to bright ones, mitotic figures, debris; blur that varies across
    the field, haze, uneven background, vignetting, Poisson-Gaussian camera
    noise, and integer data that use only a part of their dtype's range.
``"membranes"`` (:func:`synthetic_membranes`)
    Packed cells outlined by their membranes: electron-microscopy-like (dark
    membranes, textured gray cytoplasm with organelles, as in the ISBI 2012 EM
    segmentation challenge) or membrane-stain fluorescence (thin bright outlines
    on dark cells).
``"phase"`` (:func:`synthetic_phase_contrast`)
    Phase-contrast-like cells: dark cell bodies with bright halos on a gray
    background (or the reverse), some of them elongated.

All appearance parameters are drawn from realistic ranges unless given, so that
a model trained on many samples generalises; fixing a parameter leaves every
other random choice of the same seed unchanged (geometry, texture and noise
come from separate streams), which makes controlled held-out variations:

>>> a, la = synthetic_nuclei((64, 64), rng=3, photons=20.0)
>>> b, lb = synthetic_nuclei((64, 64), rng=3, photons=2000.0)
>>> bool((la == lb).all()), bool((a != b).any())
(True, True)

Only numpy, scipy and scikit-image are used here (no Qt, napari or torch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "KINDS",
    "synthetic_nuclei",
    "synthetic_membranes",
    "synthetic_phase_contrast",
    "make_sample",
    "iter_samples",
    "partial_labels",
]

#: The kinds of images :func:`make_sample` makes.
KINDS: tuple[str, ...] = ("nuclei", "membranes", "phase")

RngLike = np.random.Generator | np.random.SeedSequence | int | None

# Harmonics 2..7 perturb the radius of star-convex cells.
_HARMONICS = np.arange(2, 8)
# Saturation of a 12-bit camera: uint16 membrane and phase images stop there.
_MAX12 = 4095


# ----------------------------------------------------------------------------- helpers


def _as_rng(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _streams(rng: RngLike, n: int) -> list[np.random.Generator]:
    """Independent generators: parameters, geometry, texture, noise, ..."""
    seeds = _as_rng(rng).integers(0, 2**63, size=n)
    return [np.random.default_rng(int(s)) for s in seeds]


def _pick(value: Any, default: Any) -> Any:
    """``value`` unless None. ``default`` is always drawn first, so that the
    random stream does not depend on which parameters the caller fixed."""
    return default if value is None else value


def _check_shape(shape: tuple[int, int] | int) -> tuple[int, int]:
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape), int(shape))
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 8:
        raise ValueError(f"shape must be two sizes of at least 8 pixels, got {shape}")
    return shape  # type: ignore[return-value]


def _check_range(name: str, value: tuple[float, float], low: float = 0.0) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not low < lo <= hi:
        raise ValueError(
            f"{name} must be a range (low, high) with {low} < low <= high, got {value}"
        )
    return lo, hi


def _check_unit(name: str, value: float, upper: float = 1.0) -> float:
    value = float(value)
    if not 0.0 <= value <= upper:
        raise ValueError(f"{name} must be between 0 and {upper}, got {value}")
    return value


def _check_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)):
        raise ValueError(f"dtype must be uint8, uint16 (12-bit range) or float32, got {dt}")
    return dt


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _smooth_noise(
    shape: tuple[int, int], sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian-smoothed white noise with zero mean and unit std (float32).

    Coarse fields are made on a small grid and interpolated up, so the cost does
    not grow with ``sigma``.
    """
    if sigma <= 3.0:
        field = rng.standard_normal(shape, dtype=np.float32)
        if sigma > 0:
            field = ndi.gaussian_filter(field, sigma, mode="wrap")
    else:
        factor = sigma / 2.0
        small = tuple(int(np.ceil(s / factor)) + 3 for s in shape)
        field = ndi.gaussian_filter(rng.standard_normal(small, dtype=np.float32), 2.0, mode="wrap")
        field = _upsample(field, factor, shape)
    field -= field.mean()
    field /= field.std() + 1e-12
    return field


def _upsample(small: np.ndarray, factor: float, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a coarse grid by ``factor`` (pixel centres aligned), cropped
    to ``shape``; separable gathers, no BLAS."""
    weights = []
    for n_out, n_in in zip(shape, small.shape):
        x = np.clip((np.arange(n_out) + 0.5) / factor - 0.5, 0, n_in - 1)
        i0 = np.floor(x).astype(np.intp)
        weights.append((i0, np.minimum(i0 + 1, n_in - 1), (x - i0).astype(np.float32)))
    (r0, r1, fr), (c0, c1, fc) = weights
    small = small.astype(np.float32)
    rows = small[r0] * (1 - fr)[:, None] + small[r1] * fr[:, None]
    return rows[:, c0] * (1 - fc) + rows[:, c1] * fc


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; large sigmas work on a block-averaged copy (haze, shading)."""
    if sigma <= 0:
        return image
    if sigma <= 4.0:
        return ndi.gaussian_filter(image, sigma, mode="reflect")
    f = int(sigma // 2)
    h, w = image.shape
    hh, ww = -(-h // f) * f, -(-w // f) * f
    padded = np.pad(image, ((0, hh - h), (0, ww - w)), mode="edge")
    small = padded.reshape(hh // f, f, ww // f, f).mean(axis=(1, 3))
    small = ndi.gaussian_filter(small, sigma / f, mode="reflect")
    return _upsample(small, f, (h, w))


def _illumination(
    shape: tuple[int, int], amount: float, rng: np.random.Generator
) -> np.ndarray:
    """A smooth multiplicative illumination field around 1 (linear ramp + shading)."""
    h, w = shape
    angle = rng.uniform(0, 2 * np.pi)
    rows = (np.arange(h, dtype=np.float32) / max(h - 1, 1) - 0.5)[:, None]
    cols = (np.arange(w, dtype=np.float32) / max(w - 1, 1) - 0.5)[None, :]
    ramp = 2 * (rows * np.cos(angle) + cols * np.sin(angle))
    shading = _smooth_noise(shape, max(h, w) / 4.0, rng)
    field = 1.0 + amount * (0.6 * ramp + 0.4 * shading)
    return np.clip(field, 0.2, None).astype(np.float32)


def _spots(
    candidates: np.ndarray, count: int, sigma: float, shape: tuple[int, int],
    rng: np.random.Generator,
) -> np.ndarray:
    """Gaussian spots (peak about 1) centred on ``count`` of the flat ``candidates``."""
    field = np.zeros(shape, np.float32)
    if count > 0 and candidates.size:
        idx = candidates[rng.integers(0, candidates.size, count)]
        np.add.at(field.ravel(), idx, 1.0)
        field = ndi.gaussian_filter(field, sigma) * np.float32(2 * np.pi * sigma**2)
    return field


def _to_dtype(
    image: np.ndarray, dtype: np.dtype, scale: float, offset: float, top: float | None = None
) -> np.ndarray:
    """Map relative intensities to ``dtype`` units: ``image * scale + offset``, rounded
    and clipped to ``top`` (the camera's saturation; default: the dtype's range, [0, 1]
    for float32)."""
    out = image * np.float32(scale) + np.float32(offset)
    if dtype == np.float32:
        return np.clip(out, 0.0, 1.0).astype(np.float32)
    top = np.iinfo(dtype).max if top is None else min(top, np.iinfo(dtype).max)
    return np.clip(np.rint(out), 0, top).astype(dtype)


def _camera(
    image: np.ndarray, photons: float, read_noise: float, rng: np.random.Generator
) -> np.ndarray:
    """Poisson shot noise (``photons`` per unit intensity) plus Gaussian read noise."""
    lam = np.clip(image, 0, None).astype(np.float64) * photons
    noisy = rng.poisson(lam).astype(np.float32) / np.float32(photons)
    noisy += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(read_noise)
    return noisy


def _levels(dtype: np.dtype, u: float, frac: tuple[float, float], offsets: float) -> tuple:
    """Scale and offset that put relative intensity 1 at a fraction of the dtype range.

    ``u`` in [0, 1) picks the fraction log-uniformly in ``frac``; ``offsets`` in [0, 1)
    picks a camera offset (only for uint16, as on scientific cameras).
    """
    level = float(np.exp(np.log(frac[0]) + u * (np.log(frac[1]) - np.log(frac[0]))))
    if dtype == np.float32:
        return level, 0.0
    if dtype == np.uint8:
        return level * 255, 0.0
    return level * _MAX12, 80.0 + 140.0 * offsets


# ------------------------------------------------------------------------ cell geometry


def _place(
    shape: tuple[int, int],
    radii: np.ndarray,
    *,
    sep: float,
    margin: float,
    rng: np.random.Generator,
    clusters: np.ndarray | None = None,
    scatter: float = 1.0,
    rounds: int = 24,
) -> tuple[np.ndarray, np.ndarray]:
    """Dart throwing in rounds: centres at least ``sep * (r_i + r_j)`` apart.

    In each round every cell not yet placed proposes one position: uniform over
    the image grown by ``margin`` or, with probability ``1 - scatter``, Gaussian
    around one of the ``clusters`` (rows: row, col, std). A proposal is accepted
    unless it is too close to a placed cell or to a proposal of a cell earlier
    in ``radii`` (earlier cells have priority). Returns the centres of the
    placed cells (in the order of ``radii``) and a mask of the placed cells.
    """
    from scipy.spatial import cKDTree

    h, w = shape
    n = len(radii)
    radii = np.asarray(radii, float)
    placed = np.zeros(n, bool)
    centres = np.zeros((n, 2))
    if n == 0:
        return centres, placed
    lo = np.array([-margin, -margin])
    size = np.array([h + 2 * margin, w + 2 * margin])
    reach = sep * 2 * radii.max()
    for _ in range(rounds):
        todo = np.flatnonzero(~placed)
        if todo.size == 0:
            break
        k = todo.size
        cand = lo + rng.random((k, 2)) * size
        if clusters is not None and len(clusters):
            which = rng.integers(0, len(clusters), k)
            gauss = clusters[which, :2] + rng.standard_normal((k, 2)) * clusters[which, 2:3]
            cand = np.where((rng.random(k) >= scatter)[:, None], gauss, cand)
        ok = ((cand >= lo) & (cand <= lo + size)).all(axis=1)
        tree = cKDTree(cand)
        done = np.flatnonzero(placed)
        if done.size:
            near = tree.sparse_distance_matrix(
                cKDTree(centres[done]), reach, output_type="ndarray"
            )
            bad = near["v"] < sep * (radii[todo[near["i"]]] + radii[done[near["j"]]])
            ok[near["i"][bad]] = False
        pairs = tree.query_pairs(reach, output_type="ndarray")
        if pairs.size:
            a, b = pairs[:, 0], pairs[:, 1]
            a, b = np.minimum(a, b), np.maximum(a, b)
            dist = np.hypot(*(cand[a] - cand[b]).T)
            clash = (dist < sep * (radii[todo[a]] + radii[todo[b]])) & ok[a] & ok[b]
            ok[b[clash]] = False
        placed[todo[ok]] = True
        centres[todo[ok]] = cand[ok]
    return centres[placed], placed


def _shape_window(centre: Any, reach: float, shape: tuple[int, int], radii: Any, aspect: Any,
                  angle: Any, coef: Any) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """The window ``(y0, y1, x0, x1)`` around one cell within ``reach`` of its centre, and the
    normalised radius of each of its pixels (1 on the cell's outline); None off the image."""
    h, w = shape
    cy, cx = centre
    y0, y1 = max(int(np.floor(cy - reach)), 0), min(int(np.ceil(cy + reach)) + 1, h)
    x0, x1 = max(int(np.floor(cx - reach)), 0), min(int(np.ceil(cx + reach)) + 1, w)
    if y0 >= y1 or x0 >= x1:
        return None
    # a tiny offset keeps the direction defined at the centre
    dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy) + np.float32(1e-3))[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx) + np.float32(1e-3))[None, :]
    d = np.hypot(dy, dx)
    return (y0, y1, x0, x1), d / _radius(dx / d, dy / d, radii, aspect, angle, coef)


def _radius(
    cos: np.ndarray,
    sin: np.ndarray,
    r: Any,
    aspect: Any,
    angle: Any,
    coef: np.ndarray,
) -> np.ndarray:
    """Radius of a star-convex cell in the direction (cos, sin): an area-preserving
    ellipse times ``exp(Re(sum_k coef_k e^{ik theta}))`` for k = 2..7."""
    a = r * np.sqrt(aspect)
    b = r / np.sqrt(aspect)
    ca, sa = np.cos(angle), np.sin(angle)
    ct = cos * ca + sin * sa
    st = sin * ca - cos * sa
    ellipse = a * b / np.sqrt((b * ct) ** 2 + (a * st) ** 2)
    # e^{ik theta} by complex multiplication, starting at k = 2
    zr, zi = cos * cos - sin * sin, 2 * cos * sin
    pert = 0.0
    for j in range(_HARMONICS.size):
        pert = pert + coef[..., j].real * zr - coef[..., j].imag * zi
        zr, zi = zr * cos - zi * sin, zr * sin + zi * cos
    return ellipse * np.exp(pert)


def _star_cells(
    shape: tuple[int, int],
    centres: np.ndarray,
    cells: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise star-convex cells, each on its bounding box only.

    A pixel belongs to the cell with the smallest normalised radius
    ``rho = distance / radius(direction)`` among the cells with ``rho < 1``, so
    overlapping outlines become touching cells with a curved contact line.
    Returns labels (1..n in the given order, some possibly absent) and ``rho``
    (inf on background).
    """
    h, w = shape
    labels = np.zeros(shape, np.int32)
    rho = np.full(shape, np.inf, np.float32)
    radii, aspect, angle = cells["radii"], cells["aspect"], cells["angle"]
    coef = (cells["amp"] * np.exp(1j * cells["phase"])).astype(np.complex64)
    n = len(radii)
    if n == 0:
        return labels, rho
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)[None, :]
    bound = _radius(
        np.cos(t), np.sin(t), radii[:, None], aspect[:, None], angle[:, None], coef[:, None, :]
    )
    reach = bound.max(axis=1) * 1.08 + 1.0
    for i in range(n):
        found = _shape_window(centres[i], reach[i], (h, w), radii[i], aspect[i], angle[i],
                              coef[i])
        if found is None:
            continue
        (y0, y1, x0, x1), q = found
        sub = rho[y0:y1, x0:x1]
        win = q < np.minimum(sub, 1.0)
        sub[win] = q[win]
        labels[y0:y1, x0:x1][win] = i + 1
    return labels, rho


def _clean(labels: np.ndarray, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the largest 4-connected piece of each cell, drop cells under ``min_area``
    pixels and renumber 1..N. Returns the new labels and, for each new id k, the
    old id at ``old[k - 1]``."""
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        sub = labels[sl]
        mask = sub == i
        pieces, count = ndi.label(mask)
        if count > 1:
            sizes = np.bincount(pieces.ravel())
            sizes[0] = 0
            big = int(sizes.argmax())
            sub[mask & (pieces != big)] = 0
            area = int(sizes[big])
        else:
            area = int(mask.sum())
        if area < min_area:
            sub[sub == i] = 0
    old = np.unique(labels)
    old = old[old > 0]
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[old] = np.arange(1, old.size + 1, dtype=np.int32)
    return lut[labels], old


def _thin_boundaries(labels: np.ndarray) -> np.ndarray:
    """A one-pixel line between different labels such that no two different
    labels stay 8-adjacent once the line is removed."""
    edge = np.zeros(labels.shape, bool)
    diff = labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= diff
    diff = labels[1:, :] != labels[:-1, :]
    edge[:-1, :] |= diff
    diff = labels[1:, 1:] != labels[:-1, :-1]
    edge[:-1, :-1] |= diff
    diff = labels[1:, :-1] != labels[:-1, 1:]
    edge[:-1, 1:] |= diff
    return edge


def _shapes(
    n: int,
    r0: float,
    spread: float,
    lo: float,
    hi: float,
    elongation: float,
    irregularity: float,
    g: np.random.Generator,
    irregularity_range: tuple[float, float] = (0.3, 1.6),
    smoothness: float = 1.3,
) -> dict[str, np.ndarray]:
    """Random radii (log-normal around ``r0``), aspect ratios, orientations and outline
    harmonics for n cells; each cell's irregularity is ``irregularity`` times a factor drawn
    from ``irregularity_range``, and harmonic k gets ``1 / k**smoothness`` of it."""
    radii = np.clip(r0 * np.exp(spread * g.standard_normal(n)), lo, hi)
    aspect = np.exp(np.abs(elongation * g.standard_normal(n)))
    angle = g.uniform(0, np.pi, n)
    irr = irregularity * g.uniform(*irregularity_range, n)
    amp = g.standard_normal((n, _HARMONICS.size)) * irr[:, None] / _HARMONICS**smoothness
    phase = g.uniform(0, 2 * np.pi, (n, _HARMONICS.size))
    return {"radii": radii, "aspect": aspect, "angle": angle, "amp": amp, "phase": phase}


def _layout(
    shape: tuple[int, int],
    cells: dict[str, np.ndarray],
    *,
    layout: str,
    sep: float,
    margin: float,
    r0: float,
    g: np.random.Generator,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Place the cells (largest first), return centres and the placed cells' arrays."""
    n = len(cells["radii"])
    order = np.argsort(-cells["radii"], kind="stable")
    cells = {k: v[order] for k, v in cells.items()}
    clusters = None
    scatter = 1.0
    if layout == "clustered" and n:
        per = g.uniform(4, 25)
        k = max(1, int(round(n / per)))
        h, w = shape
        clusters = np.column_stack(
            [
                g.uniform(0, h, k),
                g.uniform(0, w, k),
                r0 * np.sqrt(n / k) * g.uniform(0.45, 0.9, k),
            ]
        )
        scatter = g.uniform(0.0, 0.25)
    footprint = cells["radii"] * cells["aspect"] ** 0.25
    centres, ok = _place(
        shape, footprint, sep=sep, margin=margin, rng=g, clusters=clusters, scatter=scatter
    )
    return centres, {k: v[ok] for k, v in cells.items()}


# ------------------------------------------------------------------------------- nuclei

#: Ways a nucleus looks in mitosis: condensed (prophase-like), a bar (metaphase plate seen
#: edge-on) or two parallel bars (anaphase, two labels).
_MITOSIS_STAGES = ("condensed", "metaphase", "anaphase")


def _relax(
    centres: np.ndarray,
    radii: np.ndarray,
    *,
    sep: float,
    anchors: np.ndarray | None = None,
    pull: float = 0.0,
    iterations: int = 30,
) -> np.ndarray:
    """Soft-disk packing: push cells closer than ``sep * (r_i + r_j)`` apart.

    Each cell with a finite row in ``anchors`` (segment ends ``r0, c0, r1, c1``: the
    spine of its cluster) is also pulled toward the nearest point of its segment by
    ``pull * r_i`` per iteration, so that clusters pack densely and take round or
    elongated shapes. Small cells give way more than large ones. The last quarter of
    the iterations only pushes apart.
    """
    from scipy.spatial import cKDTree

    c = np.array(centres, float, copy=True)
    n = len(c)
    if n == 0:
        return c
    radii = np.asarray(radii, float)
    reach = sep * 2 * radii.max()
    mass = radii**2
    pulled = None if anchors is None else np.isfinite(anchors[:, 0])
    for it in range(iterations):
        if pulled is not None and pulled.any() and it < iterations * 3 // 4:
            a, b = anchors[pulled, :2], anchors[pulled, 2:]
            ab = b - a
            t = np.clip(((c[pulled] - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-9), 0, 1)
            d = a + t[:, None] * ab - c[pulled]
            dist = np.hypot(d[:, 0], d[:, 1])
            step = np.minimum(dist, pull * radii[pulled])
            c[pulled] += d * (step / np.maximum(dist, 1e-9))[:, None]
        pairs = cKDTree(c).query_pairs(reach, output_type="ndarray")
        if pairs.size == 0:
            continue
        i, j = pairs[:, 0], pairs[:, 1]
        d = c[j] - c[i]
        dist = np.hypot(d[:, 0], d[:, 1]) + 1e-9
        over = sep * (radii[i] + radii[j]) - dist
        hit = over > 0
        if not hit.any():
            if pulled is None or it >= iterations * 3 // 4:
                break
            continue
        i, j, d, dist, over = i[hit], j[hit], d[hit], dist[hit], over[hit]
        u = d / dist[:, None]
        share = mass[j] / (mass[i] + mass[j])
        for axis in (0, 1):
            c[:, axis] -= 0.6 * np.bincount(i, u[:, axis] * over * share, n)
            c[:, axis] += 0.6 * np.bincount(j, u[:, axis] * over * (1 - share), n)
    return c


def _drop_crowded(centres: np.ndarray, radii: np.ndarray, sep: float) -> np.ndarray:
    """Mask of the cells kept when, in order, every cell closer than ``sep * (r_i + r_j)``
    to an earlier kept cell is dropped."""
    from scipy.spatial import cKDTree

    n = len(centres)
    keep = np.ones(n, bool)
    if n < 2:
        return keep
    pairs = cKDTree(centres).query_pairs(sep * 2 * radii.max(), output_type="ndarray")
    if pairs.size == 0:
        return keep
    i, j = pairs.min(axis=1), pairs.max(axis=1)
    dist = np.hypot(*(centres[i] - centres[j]).T)
    bad = dist < sep * (radii[i] + radii[j])
    i, j = i[bad], j[bad]
    for a, b in sorted(zip(i.tolist(), j.tolist())):
        if keep[a]:
            keep[b] = False
    return keep


def _soft_cells(
    shape: tuple[int, int],
    centres: np.ndarray,
    cells: dict[str, np.ndarray],
    inflate: float,
    passes: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise star-convex cells that flatten against each other like soft bodies.

    A pixel goes to the cell with the smallest ``q = rho / s`` among those with
    ``q < 1``, where ``rho`` is the pixel's normalised radius in the cell's outline
    and ``s >= 1`` the cell's swelling. Overlapping outlines first meet along a
    straight or gently curved contact (a chord of the overlap); then every cell that
    lost area to its neighbours swells (``s`` up to ``inflate``) until it has its
    area back, which lengthens the contacts, flattens the cells against each other
    and fills the narrow gaps in packed clusters, as soft nuclei pressed together do.
    Returns labels 1..n (some possibly absent) and the winning ``q`` (inf outside).
    """
    h, w = shape
    n = len(cells["radii"])
    labels = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf, np.float32)
    if n == 0:
        return labels, best
    radii, aspect, angle = cells["radii"], cells["aspect"], cells["angle"]
    coef = (cells["amp"] * np.exp(1j * cells["phase"])).astype(np.complex64)
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)[None, :]
    bound = _radius(
        np.cos(t), np.sin(t), radii[:, None], aspect[:, None], angle[:, None], coef[:, None, :]
    )
    reach = bound.max(axis=1) * 1.05 * max(inflate, 1.0) + 1.0
    crops: list[tuple[int, slice, slice, np.ndarray]] = []
    target = np.zeros(n + 1)
    for i in range(n):
        found = _shape_window(centres[i], reach[i], (h, w), radii[i], aspect[i], angle[i],
                              coef[i])
        if found is None:
            continue
        (y0, y1, x0, x1), rho = found
        if not (rho < max(inflate, 1.0)).any():
            continue
        crops.append((i, slice(y0, y1), slice(x0, x1), rho.astype(np.float32)))
        target[i + 1] = np.count_nonzero(rho < 1)
    swell = np.ones(n + 1, np.float32)
    for p in range(passes + 1):
        labels[:] = 0
        best[:] = np.inf
        for i, sy, sx, rho in crops:
            q = rho / swell[i + 1]
            sub = best[sy, sx]
            win = q < np.minimum(sub, 1.0)
            sub[win] = q[win]
            labels[sy, sx][win] = i + 1
        if p == passes or inflate <= 1.0:
            break
        area = np.bincount(labels.ravel(), minlength=n + 1).astype(float)
        lost = target > 0
        ratio = np.ones(n + 1)
        ratio[lost] = target[lost] / np.maximum(area[lost], 1.0)
        swell = np.clip(swell * np.sqrt(ratio), 1.0, inflate).astype(np.float32)
    return labels, best


def _nucleus_shapes(
    n: int, r0: float, spread: float, lo: float, hi: float, elongation: float,
    irregularity: float, g: np.random.Generator,
) -> dict[str, np.ndarray]:
    """:func:`_shapes` of ``n`` interphase nuclei: smoother outlines (ellipses, ovals,
    beans, rarely lobed)."""
    return _shapes(n, r0, spread, lo, hi, elongation, irregularity, g,
                   irregularity_range=(0.2, 1.5), smoothness=1.8)


def _nucleus_layout(
    shape: tuple[int, int],
    radii: np.ndarray,
    *,
    layout: str,
    touching: float,
    margin: float,
    r0: float,
    g: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Centres of nuclei (in the order of ``radii``) and a mask of those kept.

    ``"random"``: uniform scatter, relaxed until no two are closer than
    ``sep * (r_i + r_j)`` with ``sep`` from 1.25 (apart) to 0.7 (pressed together).
    ``"clustered"``: most cells belong to colonies of 3-40 cells, each pulled toward
    its spine (a point or a short segment) while pushing its neighbours away, which
    packs them into round or elongated clusters; ``touching`` sets how hard they are
    pressed together (``sep`` 1.05 down to 0.72).
    """
    h, w = shape
    n = len(radii)
    lo = np.array([-margin, -margin])
    size = np.array([h + 2 * margin, w + 2 * margin])
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0, bool)
    centres = lo + g.random((n, 2)) * size
    anchors = None
    if layout == "clustered":
        sep = 1.05 - 0.33 * touching
        scatter = g.uniform(0.0, 0.3)
        per = np.exp(g.uniform(np.log(3), np.log(40)))
        k = max(1, int(round(n * (1 - scatter) / per)))
        member = g.random(n) >= scatter
        which = g.integers(0, k, n)
        mid = lo + g.random((k, 2)) * size
        count = np.bincount(which[member], minlength=k)
        extent = r0 * np.sqrt(np.maximum(count, 1)) * 0.9
        half = extent * g.uniform(0.0, 1.6, k)  # half-length of the spine
        theta = g.uniform(0, np.pi, k)
        u = np.column_stack([np.cos(theta), np.sin(theta)]) * half[:, None]
        spines = np.column_stack([mid - u, mid + u])
        anchors = np.full((n, 4), np.nan)
        anchors[member] = spines[which[member]]
        along = g.uniform(0, 1, n)[:, None]
        start = spines[which, :2] + along * (spines[which, 2:] - spines[which, :2])
        jitter = g.standard_normal((n, 2)) * (0.5 * extent[which])[:, None]
        centres = np.where(member[:, None], start + jitter, centres)
        pull = 0.06 + 0.12 * touching
    else:
        sep = 1.25 - 0.55 * touching
        pull = 0.0
    centres = _relax(centres, radii, sep=sep, anchors=anchors, pull=pull, iterations=40)
    keep = _drop_crowded(centres, radii, sep * (1.0 if touching == 0 else 0.85))
    return centres, keep


def _mitoses(
    cells: dict[str, np.ndarray], centres: np.ndarray, mito: np.ndarray,
    g: np.random.Generator,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Turn the cells flagged in ``mito`` into mitotic figures: condensed round
    chromatin, a metaphase bar, or an anaphase pair of parallel bars (two cells).
    Returns the new cells, centres and the stage of each cell (-1 interphase)."""
    n = len(centres)
    stage = np.full(n, -1)
    stage[mito] = g.integers(0, len(_MITOSIS_STAGES), int(mito.sum()))
    cells = {k: v.copy() for k, v in cells.items()}
    r = cells["radii"]
    cond = stage == 0
    r[cond] *= g.uniform(0.55, 0.8, int(cond.sum()))
    cells["aspect"][cond] = g.uniform(1.0, 1.4, int(cond.sum()))
    bars = stage >= 1
    r[bars] *= g.uniform(0.4, 0.6, int(bars.sum()))
    cells["aspect"][bars] = g.uniform(2.0, 4.0, int(bars.sum()))
    cells["amp"][mito] *= 0.5
    pairs = np.flatnonzero(stage == 2)
    if pairs.size == 0:
        return cells, centres, stage
    # the second bar of each anaphase: parallel, across the short axis of the first
    r[pairs] *= 0.8
    minor = r[pairs] / np.sqrt(cells["aspect"][pairs])
    gap = minor * g.uniform(2.5, 5.0, pairs.size)
    # _radius puts the long axis along (row, col) = (sin, cos) of the angle
    normal = np.column_stack([np.cos(cells["angle"][pairs]), -np.sin(cells["angle"][pairs])])
    offset = normal * gap[:, None] / 2
    twin = {k: v[pairs].copy() for k, v in cells.items()}
    twin["phase"] = twin["phase"] + g.uniform(0, 2 * np.pi, twin["phase"].shape)
    centres = np.concatenate([centres, centres[pairs] - offset])
    centres[pairs] += offset
    cells = {k: np.concatenate([v, twin[k]]) for k, v in cells.items()}
    stage = np.concatenate([stage, np.full(pairs.size, 2)])
    return cells, centres, stage


def _vignetting(shape: tuple[int, int], amount: float, rng: np.random.Generator) -> np.ndarray:
    """Radial fall-off of the light toward the edge of the field of view (``1 - amount``
    at one field radius from the optical axis), for an image that may be an off-centre
    crop of the field."""
    h, w = shape
    cy = h / 2 + rng.uniform(-0.5, 0.5) * h
    cx = w / 2 + rng.uniform(-0.5, 0.5) * w
    field = np.hypot(h, w) / 2 * rng.uniform(0.9, 1.6)
    rows = ((np.arange(h, dtype=np.float32) - cy) / field)[:, None]
    cols = ((np.arange(w, dtype=np.float32) - cx) / field)[None, :]
    return np.clip(1.0 - amount * (rows**2 + cols**2), 0.15, 1.0).astype(np.float32)


def _variable_blur(image: np.ndarray, sigma: float, extra: np.ndarray, spread: float
                   ) -> np.ndarray:
    """Gaussian blur whose sigma is ``sigma + spread * extra`` at each pixel
    (``extra`` in [0, 1]): the image blurred at four sigmas, interpolated."""
    if spread < 0.15:
        return _blur(image, sigma + spread * float(extra.mean()))
    levels = np.linspace(0.0, 1.0, 4)
    stack = [_blur(image, sigma + spread * lv) for lv in levels]
    x = np.clip(extra, 0, 1) * (len(levels) - 1)
    k = np.minimum(x.astype(np.intp), len(levels) - 2)
    f = (x - k).astype(np.float32)
    out = np.zeros_like(image)
    for j in range(len(levels) - 1):
        sel = k == j
        out[sel] = stack[j][sel] * (1 - f[sel]) + stack[j + 1][sel] * f[sel]
    return out


def _dynamic_range(dtype: np.dtype, g: np.random.Generator) -> tuple[float, float, float]:
    """A typical nucleus level (output units above the offset), a camera offset and the
    saturation value, as microscopes store data: 8-bit files that use a part of 0-255;
    16-bit files holding 8-bit data (values up to ~250), 12-bit camera data (saturating
    at 4095, with an offset) or 16-bit sCMOS data; float32 in [0, 1]."""
    if dtype == np.float32:
        return _log_uniform(g, 0.08, 0.6), 0.0, 1.0
    if dtype == np.uint8:
        return _log_uniform(g, 12, 110), float(g.choice([0.0, 0.0, g.uniform(1, 12)])), 255.0
    mode = g.random()
    if mode < 0.35:  # 8-bit data in a 16-bit file
        return _log_uniform(g, 12, 110), float(g.choice([0.0, g.uniform(1, 12)])), 255.0
    if mode < 0.7:  # 12-bit camera
        return _log_uniform(g, 120, 1800), g.uniform(0, 220), float(_MAX12)
    offset = float(g.choice([100.0, 400.0, g.uniform(50, 1000)]))
    return _log_uniform(g, 400, 15000), offset, 65535.0


def synthetic_nuclei(
    shape: tuple[int, int] | int = (256, 256),
    *,
    n_cells: int | None = None,
    radius: tuple[float, float] = (6.0, 14.0),
    density: float | None = None,
    touching: float | None = None,
    layout: str | None = None,
    size_spread: float | None = None,
    elongation: float | None = None,
    irregularity: float | None = None,
    mitotic: float | None = None,
    brightness_spread: float | None = None,
    dim: float | None = None,
    texture: float | None = None,
    nucleoli: float | None = None,
    debris: float | None = None,
    blur: float | None = None,
    defocus: float | None = None,
    background: float | None = None,
    gradient: float | None = None,
    vignetting: float | None = None,
    photons: float | None = None,
    read_noise: float | None = None,
    level: float | None = None,
    offset: float | None = None,
    invert: bool = False,
    dtype: Any = "uint8",
    rng: RngLike = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fluorescence nuclei (DAPI/Hoechst-like) as a widefield microscope records them,
    with exact instance labels.

    **Geometry.** Nuclei are ellipses, ovals and beans (area-preserving ellipses
    whose radius is perturbed by smooth low harmonics) with a typical radius per
    image, a log-normal spread of sizes and a spread of elongations around it.
    They are scattered, or gathered in colonies packed by a soft-body relaxation
    (each cell pushes its neighbours away while the colony pulls it in). Where
    nuclei press on each other they flatten: the outlines are cut along a contact
    line, and each cell that lost area swells elsewhere until its area is back,
    which makes long flat contacts and closes the gaps in packed clusters. Labels
    are exact: every nucleus has its own id, and touching nuclei touch in the
    labels where their pixels meet. A few cells are in mitosis: condensed,
    metaphase bars or anaphase pairs of bars (two labels), small and bright.

    **Appearance.** Brightness varies between nuclei (log-normal spread, plus a
    share of dim nuclei next to bright ones) and within them: a dome-shaped
    profile (the thickness of the nucleus), chromatin texture at two scales, dark
    nucleoli, sometimes bright chromocentres or a brighter heterochromatin rim,
    and a slightly dimmer contact line between touching nuclei. Unlabelled debris
    (small bright specks) lies on the background. The optics blur the image with a
    sigma that varies across the field (a tilted or uneven sample) and more for
    some out-of-focus nuclei, and add haze from out-of-focus light. The sample
    sits on an uneven background, under an illumination ramp and vignetting. The
    camera adds Poisson shot noise and Gaussian read noise, an offset and
    quantisation, and the data use only a part of the dtype's range (for example
    8-bit values stored in a uint16 file, or 12-bit camera data).

    Every argument left as None is drawn at random from a realistic range, and
    fixing one leaves every other random choice of the same seed unchanged.

    Parameters
    ----------
    shape : (int, int) or int
        Image shape (rows, cols); default 256 x 256.
    n_cells : int, optional
        Number of nuclei to place (cells pushed out of the image, crowded out or
        under 5 pixels are dropped; an anaphase counts twice). Overrides ``density``.
    radius : (float, float)
        Range of interphase nucleus radii in pixels. Each image draws a typical
        radius in it (log-uniformly) and cells spread around that, clipped to the
        range. Mitotic figures are 0.4-0.8 times smaller.
    density : float, optional
        Fraction of the area covered by nuclei before packing, 0-1 (random 0.05-0.45).
    touching : float, optional
        0 keeps nuclei apart; 1 presses them together so that they flatten along
        long contacts (random 0-1).
    layout : {"random", "clustered"}, optional
        Uniform scatter, or colonies of 3-40 packed cells (random, half each).
    size_spread : float, optional
        Log-normal spread of radii within the image (random 0.05-0.3).
    elongation : float, optional
        Spread of log aspect ratios (0 = round; random 0.1-0.8: median aspect ratio
        1.05-1.7).
    irregularity : float, optional
        Amplitude of the outline perturbation (0 = ellipses; random 0-0.25).
    mitotic : float, optional
        Fraction of cells in mitosis (random 0-0.06).
    brightness_spread : float, optional
        Log-normal spread of nucleus brightness (random 0.1-0.5).
    dim : float, optional
        Fraction of nuclei 2-4 times dimmer than the rest (random 0-0.25).
    texture : float, optional
        Amplitude of the chromatin texture within nuclei (random 0.03-0.35).
    nucleoli : float, optional
        Contrast of the dark nucleoli, 0-1 (0 = none; random 0-0.6).
    debris : float, optional
        Unlabelled bright specks per 100 x 100 pixels of background (random 0-0.8).
    blur : float, optional
        Gaussian PSF sigma in pixels where the sample is in focus (random 0.6-2.2, at
        most 0.4 + 0.3 times the typical radius: small nuclei mean a low magnification).
    defocus : float, optional
        Extra blur sigma in pixels at the most out-of-focus places and nuclei
        (0 = the same blur everywhere; random from 0 to a quarter of the typical
        radius, at most 3).
    background : float, optional
        Background (autofluorescence, stray light) relative to a typical nucleus
        (random 0.01-0.6, log-uniform).
    gradient : float, optional
        Strength of the uneven illumination: ramp and smooth shading (random 0-0.5).
    vignetting : float, optional
        Relative fall-off of the light at the edge of the field of view (random 0-0.5).
    photons : float, optional
        Expected photon count at a typical nucleus intensity: lower is noisier
        (random 10-3000, log-uniform).
    read_noise : float, optional
        Gaussian noise std relative to a typical nucleus intensity (random 0.003-0.12,
        log-uniform, and at least 0.7 / ``photons``: 0.7 electrons of read noise).
    level : float, optional
        Intensity of a typical nucleus in the output, in output units above the
        offset (random per dtype: 12-110 for uint8; for uint16 8-bit data 12-110,
        12-bit data 120-1800 or 16-bit data 400-15000; 0.08-0.6 for float32).
    offset : float, optional
        Camera offset added to every pixel, in output units (random per dtype).
    invert : bool
        Dark nuclei on a bright background, like stained brightfield images.
    dtype : {"uint8", "uint16", "float32"}
        Output type: uint8 and uint16 are clipped to their full range, float32 to
        [0, 1]. How much of the range is used is set by ``level`` and ``offset``.
    rng : numpy.random.Generator or int, optional
        Random generator or seed; the result is fully determined by a seed.

    Returns
    -------
    image : numpy.ndarray
        The image, of ``dtype`` and ``shape``.
    labels : numpy.ndarray
        int32 instance labels of ``shape``: 0 background, nuclei 1..N.

    Examples
    --------
    >>> image, labels = synthetic_nuclei((64, 96), rng=0)
    >>> image.shape, image.dtype, labels.dtype
    ((64, 96), dtype('uint8'), dtype('int32'))
    >>> ids = np.unique(labels)
    >>> bool((ids == np.arange(ids.size)).all())  # 0, 1, ..., N
    True
    >>> bool(image[labels > 0].mean() > image[labels == 0].mean())
    True
    """
    shape = _check_shape(shape)
    lo, hi = _check_range("radius", radius, low=1.0)
    dt = _check_dtype(dtype)
    # separate streams: parameters, geometry, per-cell looks, camera noise, dynamic range,
    # nucleoli and chromocentres, debris, optics (blur field, background, illumination)
    p, g, t, z, o, k, d, f = _streams(rng, 8)

    # Parameters, always drawn in this order.
    density = _check_unit("density", _pick(density, p.uniform(0.05, 0.45)))
    touching = _check_unit("touching", _pick(touching, p.uniform(0, 1)))
    layout = _pick(layout, "clustered" if p.random() < 0.5 else "random")
    if layout not in ("random", "clustered"):
        raise ValueError(f"layout must be 'random' or 'clustered', got {layout!r}")
    size_spread = float(_pick(size_spread, p.uniform(0.05, 0.3)))
    elongation = float(_pick(elongation, p.uniform(0.1, 0.8)))
    irregularity = float(_pick(irregularity, p.uniform(0.0, 0.25)))
    mitotic = _check_unit("mitotic", _pick(mitotic, p.uniform(0, 0.06)))
    brightness_spread = float(_pick(brightness_spread, p.uniform(0.1, 0.5)))
    dim = _check_unit("dim", _pick(dim, p.uniform(0, 0.25)))
    texture = float(_pick(texture, p.uniform(0.03, 0.35)))
    nucleoli = _check_unit("nucleoli", _pick(nucleoli, p.uniform(0, 0.6)))
    debris = float(_pick(debris, p.uniform(0, 0.8)))
    blur_u = p.uniform(0.6, 2.2)
    defocus_u = p.uniform(0, 1)
    background = float(_pick(background, _log_uniform(p, 0.01, 0.6)))
    gradient = float(_pick(gradient, p.uniform(0, 0.5)))
    vignetting = _check_unit("vignetting", _pick(vignetting, p.uniform(0, 0.5)), upper=0.85)
    photons = float(_pick(photons, _log_uniform(p, 10, 3000)))
    # a camera's read noise is at least ~0.7 electrons: it also hides the steps of single
    # photons in the output units when a photon is worth many of them
    read_noise = float(_pick(read_noise, max(_log_uniform(p, 0.003, 0.12), 0.7 / photons)))
    drawn_level, drawn_offset, saturation = _dynamic_range(dt, o)
    if invert:  # a bright field fills much of the range
        drawn_level = saturation * o.uniform(0.5, 0.9)
    if level is not None:
        saturation = None  # the dtype's range
    level = float(_pick(level, drawn_level))
    offset = float(_pick(offset, drawn_offset))
    if photons <= 0 or read_noise < 0 or background < 0:
        raise ValueError("photons must be > 0; read_noise and background >= 0")
    if debris < 0 or texture < 0 or level <= 0 or offset < 0:
        raise ValueError("debris, texture and offset must be >= 0 and level > 0")
    haze = p.uniform(0, 0.25)
    haze_sigma = p.uniform(5, 20)
    seam = p.uniform(0, 0.35)
    out_of_focus = p.uniform(0, 0.2)  # share of nuclei in another focal plane
    chromocentres = p.uniform(0.3, 1.0) if p.random() < 0.3 else 0.0
    rim = p.uniform(0.1, 0.5) if p.random() < 0.3 else 0.0
    uneven_bg = p.uniform(0, 0.5)
    contact_depth = p.uniform(0.3, 1.0)

    # Geometry.
    h, w = shape
    r0 = _log_uniform(g, lo, hi)
    # the depth of field in pixels grows with the magnification, as the nuclei do
    defocus = float(_pick(defocus, defocus_u * min(3.0, 0.25 * r0)))
    blur = float(_pick(blur, min(blur_u, 0.4 + 0.3 * r0)))
    if defocus < 0 or blur < 0:
        raise ValueError(f"blur and defocus must be >= 0, got {blur} and {defocus}")
    margin = hi
    if n_cells is None:
        area = (h + 2 * margin) * (w + 2 * margin)
        n = int(round(density * area / (np.pi * r0**2 * np.exp(2 * size_spread**2))))
    else:
        n = int(n_cells)
        if n < 0:
            raise ValueError(f"n_cells must be >= 0, got {n_cells}")
    cells = _nucleus_shapes(n, r0, size_spread, lo, hi, elongation, irregularity, g)
    mito = g.random(n) < mitotic
    order = np.argsort(-cells["radii"], kind="stable")  # large cells first
    cells = {k: v[order] for k, v in cells.items()}
    mito = mito[order]
    footprint = cells["radii"] * cells["aspect"] ** 0.25
    centres, keep = _nucleus_layout(shape, footprint, layout=layout, touching=touching,
                                    margin=margin, r0=r0, g=g)
    cells = {k: v[keep] for k, v in cells.items()}
    centres, mito = centres[keep], mito[keep]
    cells, centres, stage = _mitoses(cells, centres, mito, g)
    inflate = 1.0 + 0.35 * touching
    labels, q = _soft_cells(shape, centres, cells, inflate)
    labels, old = _clean(labels, min_area=5)
    m = old.size

    # Per-cell appearance (index 0 = background).
    st = np.concatenate([[-1], stage[old - 1]])
    is_mito = st >= 0
    bright = np.exp(brightness_spread * t.standard_normal(m + 1))
    bright[t.random(m + 1) < dim] *= t.uniform(0.25, 0.5)
    bright[is_mito] = np.exp(0.2 * t.standard_normal(int(is_mito.sum()))) * t.uniform(1.8, 3.5)
    edge = t.uniform(0.3, 1.0, m + 1)
    power = t.uniform(1.5, 6.0, m + 1)
    # chromatin texture finer than the optics resolve fades in small (low-magnification) nuclei
    tex_amp = texture * min(1.0, r0 / 8) * t.uniform(0.5, 1.5, m + 1)
    tex_amp[is_mito] = np.maximum(tex_amp[is_mito] * 1.5, 0.35)
    focus = np.where(t.random(m + 1) < out_of_focus, t.uniform(0.5, 1.0, m + 1), 0.0)
    focus[0] = 0.0

    inside = labels > 0
    lab_in = labels[inside]
    # Depth below the outline: the normalised radius, or, near a contact with another
    # nucleus, the distance to that contact, so that pressed nuclei still thin out
    # toward each other and a darker seam shows where they meet.
    r_cell = np.sqrt(np.bincount(lab_in, minlength=m + 1) / np.pi) + 1.0
    depth = ndi.distance_transform_edt(inside & ~_edges(labels, between_cells=True))[inside]
    qi = np.clip(np.maximum(q[inside], 1 - depth / (contact_depth * r_cell[lab_in])), 0, 1)
    fine = _smooth_noise(shape, t.uniform(0.6, 1.2), t)[inside]
    medium = _smooth_noise(shape, max(0.12 * r0 * t.uniform(0.7, 1.4), 1.0), t)[inside]
    coarse = _smooth_noise(shape, max(r0 * 0.5, 1.0), t)[inside]
    profile = (1 - edge[lab_in]) + edge[lab_in] * np.sqrt(np.clip(1 - qi ** power[lab_in], 0, 1))
    if rim > 0:
        profile *= 1 + rim * np.exp(-(((1 - qi) / 0.15) ** 2)) * ~is_mito[lab_in]
    tex = 1.0 + tex_amp[lab_in] * (0.6 * fine + 0.6 * medium) + 0.3 * texture * coarse
    signal = np.zeros(shape, np.float32)
    signal[inside] = bright[lab_in] * profile * np.clip(tex, 0.05, None)
    interphase = inside & ~is_mito[labels]
    if nucleoli > 0 and r0 >= 3.5:
        core = np.flatnonzero(interphase & (q < 0.65))
        count = int(round(k.uniform(0.5, 2.5) * m))
        holes = _spots(core, count, max(0.8, 0.14 * r0 * k.uniform(0.7, 1.3)), shape, k)
        signal *= 1 - nucleoli * np.clip(holes, 0, 1)
    if chromocentres > 0 and r0 >= 5:
        core = np.flatnonzero(interphase & (q < 0.85))
        count = int(round(k.uniform(2, 10) * m))
        dots = _spots(core, count, max(0.6, 0.06 * r0), shape, k)
        signal *= 1 + chromocentres * np.clip(dots, 0, 1.5)
    signal[_edges(labels, between_cells=True)] *= np.float32(1 - seam)  # dimmer contact line
    if debris > 0:
        free = ndi.distance_transform_edt(~inside) > 2 + 2 * blur
        specks = int(d.poisson(debris * h * w / 1e4))
        sigma = d.uniform(0.5, max(0.6, min(1.5, 0.25 * r0)))
        dust = _spots(np.flatnonzero(free), specks, sigma, shape, d)
        signal += dust * np.float32(d.uniform(0.3, 2.0))

    # Optics: blur varying across the field and for out-of-focus nuclei, haze.
    tilt = _illumination(shape, 1.0, f) - 1.0  # a smooth ramp plus unevenness
    extra = np.clip(0.5 + 0.5 * tilt, 0, 1)
    if out_of_focus > 0 and m:
        extra = np.maximum(extra, _blur(focus[labels].astype(np.float32), max(1.0, r0 / 3)) * 1.3)
    image = _variable_blur(signal, blur, extra, defocus)
    if haze > 0:
        image += haze * _blur(signal, haze_sigma)
    bg = background * (1.0 + uneven_bg * _smooth_noise(shape, max(h, w) / 6.0, f))
    light = _illumination(shape, gradient, f) * _vignetting(shape, vignetting, f)
    image = light * (image + np.clip(bg, 0, None))

    # Camera.
    if invert:
        # Absorbing stain on a bright field: transmitted light ~ exp(-absorbance).
        image = light * 0.9 * np.exp(-0.9 * (image - light * bg))
        image = _camera(image, photons * 3, read_noise, z)
    else:
        image = _camera(image, photons, read_noise, z)
    return _to_dtype(image, dt, level, offset, top=saturation), labels


# ---------------------------------------------------------------------------- membranes


def synthetic_membranes(
    shape: tuple[int, int] | int = (256, 256),
    *,
    style: str | None = None,
    radius: tuple[float, float] = (8.0, 24.0),
    membrane_width: float | None = None,
    irregularity: float | None = None,
    gaps: float | None = None,
    texture: float | None = None,
    blur: float | None = None,
    photons: float | None = None,
    noise: float | None = None,
    gradient: float | None = None,
    dtype: Any = "uint8",
    rng: RngLike = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Packed cells outlined by membranes, with the cell interiors as labels.

    Cells tile the plane like a Voronoi diagram of dart-thrown seeds whose
    edges are bent by a smooth random warp. Two looks:

    ``"em"``
        Electron-microscopy-like (ISBI 2012 neuronal EM): dark membranes,
        gray cytoplasm with texture, dark vesicles and mitochondria.
    ``"fluorescence"``
        Membrane stain: thin bright outlines of uneven brightness on dark,
        faintly textured cells; some cells may be missing (dark gaps).

    **Labels.** As in the U-Net paper's EM task, membranes are background:
    each label is the interior of one cell, and cells are separated by a
    membrane line at least one pixel wide, so that no two cells are even
    diagonally adjacent (their 8-connected components are the cells). A
    U-Net trained on these learns "cell interior versus membrane", and
    instances follow from connected components of its foreground.

    Every argument left as None is drawn at random from a realistic range.

    Parameters
    ----------
    shape : (int, int) or int
        Image shape (rows, cols).
    style : {"em", "fluorescence"}, optional
        The look (random, half each).
    radius : (float, float)
        Range of typical cell radii in pixels; each image draws one typical
        radius in it and cells vary around it.
    membrane_width : float, optional
        Membrane width in pixels, at least 1 (random 1.5-5 for EM, 1-2.5 for
        fluorescence).
    irregularity : float, optional
        Bending of the cell edges, relative to the cell radius (random 0.05-0.4).
    gaps : float, optional
        Fraction of cells left out (background) in the fluorescence style
        (random: none half the time, else up to 0.25); ignored for EM.
    texture : float, optional
        Amplitude of the cytoplasm texture (random 0.03-0.12).
    blur : float, optional
        Gaussian PSF sigma in pixels (random 0.4-1.2 EM, 0.6-1.6 fluorescence).
    photons : float, optional
        Photons at membrane intensity, fluorescence only (random 10-1000).
    noise : float, optional
        Gaussian noise std relative to the full contrast (random 0.01-0.08).
    gradient : float, optional
        Strength of uneven illumination (random 0-0.3).
    dtype : {"uint8", "uint16", "float32"}
        Output type, as in :func:`synthetic_nuclei`.
    rng : numpy.random.Generator or int, optional
        Random generator or seed.

    Returns
    -------
    image : numpy.ndarray
    labels : numpy.ndarray
        int32 cell interiors, 0 on membranes (and gaps), cells 1..N.

    Examples
    --------
    >>> image, labels = synthetic_membranes((80, 80), style="em", rng=1)
    >>> image.dtype, labels.max() > 3
    (dtype('uint8'), np.True_)
    >>> # membranes are background and darker than the cells in EM
    >>> bool(image[labels == 0].mean() < image[labels > 0].mean())
    True
    """
    shape = _check_shape(shape)
    lo, hi = _check_range("radius", radius, low=1.0)
    dt = _check_dtype(dtype)
    p, g, t, z = _streams(rng, 4)

    style = _pick(style, "em" if p.random() < 0.5 else "fluorescence")
    if style not in ("em", "fluorescence"):
        raise ValueError(f"style must be 'em' or 'fluorescence', got {style!r}")
    em = style == "em"
    width_draw = p.uniform(1.5, 5.0) if em else p.uniform(1.0, 2.5)
    membrane_width = float(_pick(membrane_width, width_draw))
    if membrane_width < 1:
        raise ValueError(f"membrane_width must be >= 1 pixel, got {membrane_width}")
    irregularity = float(_pick(irregularity, p.uniform(0.05, 0.4)))
    gaps_draw = 0.0 if p.random() < 0.5 else p.uniform(0, 0.25)
    gaps = _check_unit("gaps", _pick(gaps, gaps_draw), upper=0.9) if not em else 0.0
    texture = float(_pick(texture, p.uniform(0.03, 0.12)))
    blur_draw = p.uniform(0.4, 1.2) if em else p.uniform(0.6, 1.6)
    blur = float(_pick(blur, blur_draw))
    photons = float(_pick(photons, _log_uniform(p, 10, 1000)))
    noise = float(_pick(noise, p.uniform(0.01, 0.08)))
    gradient = float(_pick(gradient, p.uniform(0, 0.3)))
    if photons <= 0 or noise < 0 or blur < 0:
        raise ValueError("photons must be > 0; noise and blur >= 0")
    level_u, offset_u = p.random(), p.random()

    # Geometry: Voronoi cells of dart-thrown seeds on a padded canvas, warped.
    h, w = shape
    r0 = _log_uniform(g, lo, hi)
    pad = int(np.ceil(2 * hi)) + 2
    big = (h + 2 * pad, w + 2 * pad)
    n = int(np.ceil(1.6 * big[0] * big[1] / (np.pi * r0**2)))
    spread = g.uniform(0.3, 0.6) if em else g.uniform(0.1, 0.3)
    radii = np.sort(np.clip(r0 * np.exp(spread * g.standard_normal(n)), lo, hi))
    centres, _ = _place(big, radii[::-1], sep=0.75, margin=0.0, rng=g, rounds=12)
    seeds = np.zeros(big, np.int32)
    rc = np.clip(np.rint(centres).astype(int), 0, np.array(big) - 1)
    seeds[rc[:, 0], rc[:, 1]] = np.arange(1, len(rc) + 1)
    idx = ndi.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True)
    voronoi = seeds[idx[0], idx[1]]
    amount = irregularity * r0
    warp_sigma = r0 * g.uniform(0.5, 1.0)
    rows = np.arange(h)[:, None] + pad + amount * _smooth_noise(shape, warp_sigma, g)
    cols = np.arange(w)[None, :] + pad + amount * _smooth_noise(shape, warp_sigma, g)
    rows = np.clip(np.rint(rows), 0, big[0] - 1).astype(np.intp)
    cols = np.clip(np.rint(cols), 0, big[1] - 1).astype(np.intp)
    cells = voronoi[rows, cols]

    thin = _thin_boundaries(cells)
    half = (membrane_width - 1) / 2 * (1 + 0.35 * _smooth_noise(shape, r0 * 0.4, g))
    membrane = thin | (ndi.distance_transform_edt(~thin) <= np.clip(half, 0, None))
    kept = np.ones(int(cells.max()) + 1, bool)
    if gaps > 0:
        kept[1:] = g.random(kept.size - 1) >= gaps
        kept_px = kept[cells]
        near = ndi.distance_transform_edt(~(kept_px & ~membrane)) <= membrane_width + 1
        membrane &= near
        outside = ~kept_px & ~membrane
    else:
        outside = np.zeros(shape, bool)
    labels = np.where(membrane | outside, 0, cells).astype(np.int32)
    labels, old = _clean(labels, min_area=4)
    m = old.size

    # Appearance.
    fine = _smooth_noise(shape, t.uniform(0.5, 1.0), t)
    medium = _smooth_noise(shape, t.uniform(2.0, 4.0), t)
    along = _smooth_noise(shape, t.uniform(3.0, 8.0), t)
    cell_ids = cells  # the full partition, for per-cell values under membranes too
    per_cell = t.standard_normal(int(cells.max()) + 1)
    interior = np.flatnonzero(labels > 0)
    if em:
        gray = np.clip(0.62 + 0.06 * per_cell, 0.4, 0.85).astype(np.float32)
        image = gray[cell_ids] * (1 + texture * fine + 0.6 * texture * medium)
        vesicles = _spots(interior, int(interior.size * t.uniform(0, 0.004)),
                          t.uniform(0.8, 2.0), shape, t)
        image -= t.uniform(0.15, 0.35) * np.clip(vesicles, 0, 1)
        _mitochondria(image, labels, membrane, r0, int(round(m * t.uniform(0.2, 1.0))), t)
        dark = t.uniform(0.05, 0.25)
        image[membrane] = dark * (1 + 0.3 * along[membrane])
        image = _blur(image, blur)
        image *= _illumination(shape, gradient, t)
        image += z.standard_normal(shape, dtype=np.float32) * np.float32(noise)
        frac = (0.75, 1.0)
    else:
        cyto = t.uniform(0.03, 0.2)
        level = np.clip(cyto * np.exp(0.4 * per_cell), 0, 0.5).astype(np.float32)
        image = level[cell_ids] * np.clip(1 + 2 * texture * fine + 2 * texture * medium, 0, None)
        image[outside] *= t.uniform(0.1, 0.6)
        image[membrane] = np.clip(1 + 0.4 * along[membrane], 0.15, None)
        image = _blur(image, blur) * _illumination(shape, gradient, t)
        image = _camera(image, photons, noise, z)
        frac = (0.2, 0.9)
    scale, offset = _levels(dt, level_u, frac, offset_u)
    return _to_dtype(image, dt, scale, offset, top=_MAX12), labels


def _mitochondria(
    image: np.ndarray, labels: np.ndarray, membrane: np.ndarray, r0: float, count: int,
    rng: np.random.Generator,
) -> None:
    """Draw dark elongated organelles into EM cells (in place), each inside one cell."""
    from skimage.draw import ellipse

    interior = np.flatnonzero(labels > 0)
    if interior.size == 0:
        return
    shade = rng.uniform(0.25, 0.45)
    for flat in interior[rng.integers(0, interior.size, count)]:
        r, c = divmod(int(flat), labels.shape[1])
        a = r0 * rng.uniform(0.3, 0.6)
        rr, cc = ellipse(r, c, a, a * rng.uniform(0.4, 0.7), shape=labels.shape,
                         rotation=rng.uniform(0, np.pi))
        own = labels[rr, cc] == labels[r, c]
        rr, cc = rr[own], cc[own]
        image[rr, cc] = shade * (1 + 0.15 * rng.standard_normal(rr.size))


# -------------------------------------------------------------------------------- phase


def synthetic_phase_contrast(
    shape: tuple[int, int] | int = (256, 256),
    *,
    n_cells: int | None = None,
    radius: tuple[float, float] = (8.0, 20.0),
    density: float | None = None,
    touching: float | None = None,
    elongated: float | None = None,
    irregularity: float | None = None,
    polarity: int | None = None,
    halo: float | None = None,
    halo_width: float | None = None,
    texture: float | None = None,
    blur: float | None = None,
    noise: float | None = None,
    gradient: float | None = None,
    dtype: Any = "uint8",
    rng: RngLike = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Phase-contrast-like cultured cells: dark bodies with bright halos.

    Cells are star-convex shapes as in :func:`synthetic_nuclei`, some of them
    strongly elongated (fibroblast-like). Each cell body is darker than the gray
    background, most at its edge and fading toward its centre (the shade-off
    effect of large flat cells), with a darker nucleus region and granules; a
    bright halo surrounds it, and a faint bright line marks contacts between
    touching cells. ``polarity=-1`` reverses the contrast (bright bodies, dark
    halos), as in defocused brightfield.

    Every argument left as None is drawn at random from a realistic range.

    Parameters
    ----------
    shape : (int, int) or int
        Image shape (rows, cols).
    n_cells : int, optional
        Number of cells to try to place; overrides ``density``.
    radius : (float, float)
        Range of equivalent cell radii in pixels.
    density : float, optional
        Fraction of the area covered by cells (random 0.05-0.4).
    touching : float, optional
        0 keeps cells apart, 1 packs them against each other (random 0-1).
    elongated : float, optional
        Fraction of strongly elongated cells, aspect 2-5 (random 0-0.5).
    irregularity : float, optional
        Outline perturbation amplitude (random 0.05-0.35).
    polarity : {1, -1}, optional
        1: dark cells, bright halos; -1: the reverse (random, 80 % 1).
    halo : float, optional
        Halo strength relative to the background (random 0.15-0.6).
    halo_width : float, optional
        Halo width in pixels (random 1.5-4).
    texture : float, optional
        Granularity inside cells (random 0.02-0.1).
    blur : float, optional
        Gaussian PSF sigma in pixels (random 0.5-1.5).
    noise : float, optional
        Gaussian noise std relative to the background (random 0.01-0.06).
    gradient : float, optional
        Strength of uneven illumination (random 0-0.3).
    dtype : {"uint8", "uint16", "float32"}
        Output type, as in :func:`synthetic_nuclei`.
    rng : numpy.random.Generator or int, optional
        Random generator or seed.

    Returns
    -------
    image : numpy.ndarray
    labels : numpy.ndarray
        int32 cell labels, 0 background, cells 1..N (touching cells allowed).

    Examples
    --------
    >>> image, labels = synthetic_phase_contrast((96, 64), polarity=1, rng=2)
    >>> image.shape, labels.shape
    ((96, 64), (96, 64))
    >>> bool(image[labels > 0].mean() < np.median(image))  # dark bodies
    True
    """
    shape = _check_shape(shape)
    lo, hi = _check_range("radius", radius, low=1.0)
    dt = _check_dtype(dtype)
    p, g, t, z = _streams(rng, 4)

    density = _check_unit("density", _pick(density, p.uniform(0.05, 0.4)))
    touching = _check_unit("touching", _pick(touching, p.uniform(0, 1)))
    elongated = _check_unit("elongated", _pick(elongated, p.uniform(0, 0.5)))
    irregularity = float(_pick(irregularity, p.uniform(0.05, 0.35)))
    polarity = int(_pick(polarity, 1 if p.random() < 0.8 else -1))
    if polarity not in (1, -1):
        raise ValueError(f"polarity must be 1 or -1, got {polarity}")
    halo = float(_pick(halo, p.uniform(0.15, 0.6)))
    halo_width = float(_pick(halo_width, p.uniform(1.5, 4.0)))
    texture = float(_pick(texture, p.uniform(0.02, 0.1)))
    blur = float(_pick(blur, p.uniform(0.5, 1.5)))
    noise = float(_pick(noise, p.uniform(0.01, 0.06)))
    gradient = float(_pick(gradient, p.uniform(0, 0.3)))
    if halo_width <= 0 or noise < 0 or blur < 0:
        raise ValueError("halo_width must be > 0; noise and blur >= 0")
    body = p.uniform(0.1, 0.35)
    shade_off = p.uniform(0.2, 0.9)
    level_u, offset_u = p.random(), p.random()

    h, w = shape
    r0 = _log_uniform(g, lo, hi)
    margin = hi
    spread = g.uniform(0.1, 0.3)
    if n_cells is None:
        area = (h + 2 * margin) * (w + 2 * margin)
        n = int(round(density * area / (np.pi * r0**2 * np.exp(2 * spread**2))))
    else:
        n = int(n_cells)
        if n < 0:
            raise ValueError(f"n_cells must be >= 0, got {n_cells}")
    cells = _shapes(n, r0, spread, lo, hi, 0.2, irregularity, g)
    long = g.random(n) < elongated
    cells["aspect"][long] = g.uniform(2.0, 5.0, int(long.sum()))
    sep = 1.2 - 0.5 * touching
    centres, cells = _layout(shape, cells, layout="random", sep=sep, margin=margin, r0=r0, g=g)
    labels, rho = _star_cells(shape, centres, cells)
    labels, _ = _clean(labels, min_area=8)

    inside = labels > 0
    contacts = _thin_boundaries(labels) & inside
    contacts &= ndi.binary_erosion(inside, border_value=1)
    d_out = ndi.distance_transform_edt(~inside).astype(np.float32)
    d_in = ndi.distance_transform_edt(inside & ~_edges(labels)).astype(np.float32)
    decay = t.uniform(1.5, 5.0) * max(1.0, r0 / 10)
    dark = body * (shade_off + (1 - shade_off) * np.exp(-d_in / decay))
    nucleus = inside & (rho < t.uniform(0.3, 0.5))
    grains = _spots(np.flatnonzero(inside), int(inside.sum() * 0.01), 0.8, shape, t)
    fine = _smooth_noise(shape, 1.0, t)
    contrast = np.where(inside, -dark, halo * np.exp(-(d_out - 1) / halo_width))
    contrast -= nucleus * body * t.uniform(0.1, 0.5)
    contrast -= 0.5 * body * np.clip(grains, 0, 1) * inside
    contrast += contacts * halo * 0.5
    contrast += inside * texture * fine
    image = 0.5 + 0.5 * polarity * contrast
    image = _blur(image.astype(np.float32), blur) * _illumination(shape, gradient, t)
    image += z.standard_normal(shape, dtype=np.float32) * np.float32(noise * 0.5)
    scale, offset = _levels(dt, level_u, (0.6, 1.3), offset_u)
    return _to_dtype(image, dt, scale, offset, top=_MAX12), labels


def _edges(labels: np.ndarray, between_cells: bool = False) -> np.ndarray:
    """Pixels of a cell 4-adjacent to another label (or, with ``between_cells``, to
    another cell only: the contact lines of touching cells)."""
    edge = np.zeros(labels.shape, bool)
    for axis in (0, 1):
        a = labels[:-1, :] if axis == 0 else labels[:, :-1]
        b = labels[1:, :] if axis == 0 else labels[:, 1:]
        diff = a != b
        if between_cells:
            diff &= (a > 0) & (b > 0)
        if axis == 0:
            edge[1:, :] |= diff
            edge[:-1, :] |= diff
        else:
            edge[:, 1:] |= diff
            edge[:, :-1] |= diff
    return edge & (labels > 0)


# ----------------------------------------------------------------------------- dispatch


_GENERATORS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "nuclei": synthetic_nuclei,
    "membranes": synthetic_membranes,
    "phase": synthetic_phase_contrast,
}


def make_sample(
    kind: str = "nuclei",
    shape: tuple[int, int] | int = (256, 256),
    seed: RngLike = None,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic ``(image, labels)`` sample of a given kind.

    Parameters
    ----------
    kind : {"nuclei", "membranes", "phase"}
        :func:`synthetic_nuclei`, :func:`synthetic_membranes` or
        :func:`synthetic_phase_contrast`.
    shape : (int, int) or int
        Image shape (rows, cols).
    seed : int or numpy.random.Generator, optional
        Seed or generator; the same seed gives the same sample.
    **kwargs
        Passed on to the generator (e.g. ``dtype="uint16"``, ``photons=50``).

    Returns
    -------
    image, labels : numpy.ndarray
        The image and its int32 instance labels.

    Examples
    --------
    >>> image, labels = make_sample("membranes", shape=(48, 64), seed=7)
    >>> image.shape == labels.shape == (48, 64)
    True
    >>> again, _ = make_sample("membranes", shape=(48, 64), seed=7)
    >>> bool((image == again).all())
    True
    """
    try:
        generator = _GENERATORS[kind]
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}") from None
    return generator(shape, rng=seed, **kwargs)


def iter_samples(
    kind: str = "nuclei",
    n: int | None = None,
    seed: int | np.random.SeedSequence | None = None,
    **kwargs: Any,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``n`` independent samples (endlessly if ``n`` is None).

    Sample ``i`` depends only on ``seed`` and ``i``, not on ``n``.

    Parameters
    ----------
    kind : {"nuclei", "membranes", "phase"}
        As in :func:`make_sample`.
    n : int, optional
        Number of samples; None for an endless stream.
    seed : int or numpy.random.SeedSequence, optional
        Seed of the whole stream.
    **kwargs
        Passed to :func:`make_sample` (``shape``, ``dtype``, ...).

    Yields
    ------
    image, labels : numpy.ndarray

    Examples
    --------
    >>> samples = list(iter_samples("phase", 2, seed=0, shape=(32, 32)))
    >>> len(samples), samples[0][0].shape
    (2, (32, 32))
    """
    if kind not in _GENERATORS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    i = 0
    while n is None or i < n:
        (child,) = root.spawn(1)
        yield make_sample(kind, seed=np.random.default_rng(child), **kwargs)
        i += 1


def partial_labels(
    labels: np.ndarray,
    fraction: float = 0.3,
    rng: RngLike = None,
    *,
    relabel: bool = True,
) -> np.ndarray:
    """A copy of ``labels`` in which only a random subset of whole cells is kept.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels, 0 for background.
    fraction : float
        Fraction of the cells to keep, 0-1 (at least one cell when > 0 and there
        are cells).
    rng : numpy.random.Generator or int, optional
        Random generator or seed.
    relabel : bool
        Number the kept cells 1..k (default) or keep their original ids.

    Returns
    -------
    numpy.ndarray
        Labels of the same shape and dtype; dropped cells become 0.

    Examples
    --------
    >>> labels = np.array([[1, 1, 0, 2], [3, 0, 4, 4]], dtype=np.int32)
    >>> few = partial_labels(labels, fraction=0.5, rng=0)
    >>> int(few.max()), int(np.count_nonzero(np.unique(few)))
    (2, 2)
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    fraction = _check_unit("fraction", fraction)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    k = int(round(fraction * ids.size))
    if fraction > 0 and ids.size:
        k = max(k, 1)
    chosen = np.sort(_as_rng(rng).choice(ids, size=k, replace=False)) if k else ids[:0]
    lut = np.zeros(int(labels.max(initial=0)) + 1, labels.dtype)
    lut[chosen] = np.arange(1, k + 1) if relabel else chosen
    out = lut[np.clip(labels, 0, None)]
    return out
