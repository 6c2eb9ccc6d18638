"""Render PNG contact sheets of synthetic samples, and compare them with real nuclei images.

Contact sheet: each row shows one kind; each cell of the grid is a sample image
(contrast stretched to its 0.5-99.8 percentiles) next to the same image with the
label boundaries drawn in colour::

    python scripts/show_synthetic.py -o /tmp/synthetic.png
    python scripts/show_synthetic.py -o /tmp/nuclei.png --kinds nuclei --seeds 8 --size 384

Comparison with real images (``--compare``): real fluorescence nuclei images side
by side with synthetic ones of the same size and dtype, each shown whole, as a 3x
zoom (noise, texture, edges) and as a histogram of its raw values, with the
measured statistics printed: nucleus size from a classical Otsu + distance
transform watershed segmentation (the same on every image), and from the true
labels where there are some; background, noise, contrast, dynamic range::

    python scripts/show_synthetic.py --compare -o /tmp/compare.png
    python scripts/show_synthetic.py --compare --real img.tif:img_labels.tif -o /tmp/c.png

Real images are never downloaded. Used when present: ``skimage.data.human_mitosis()``
if it is in scikit-image's local data cache already; the 2018 Data Science Bowl
test image with its labels that ships inside the ``stardist`` package (found
without importing stardist; to get it without installing stardist:
``pip download stardist --no-deps`` and unzip ``stardist/data/images/`` from the
wheel, then pass ``--real .../img2d.tif:.../mask2d.tif``); any ``--real`` files.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from napari_unet.core.synthetic import KINDS, make_sample

__all__ = ["contact_sheet", "compare_sheet", "image_stats", "real_nuclei_images", "main"]

_GAP = 6


def _stretch(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (0.5, 99.8))
    return np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)


def _overlay(gray: np.ndarray, labels: np.ndarray) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    edges = find_boundaries(labels, mode="inner")
    # A colour per cell, so that touching cells are told apart.
    palette = np.random.default_rng(0).uniform(0.3, 1.0, (int(labels.max()) + 1, 3))
    palette[:, 0] = 1.0
    rgb[edges] = palette[labels[edges]]
    return rgb


def contact_sheet(
    kinds: Sequence[str], seeds: Sequence[int], shape: tuple[int, int], **kwargs: Any
) -> tuple[np.ndarray, dict[str, float]]:
    """An RGB uint8 grid (kinds x seeds, image | overlay) and mean ms per sample."""
    h, w = shape
    tile_w = 2 * w + 2
    sheet = np.full(
        (len(kinds) * (h + _GAP) + _GAP, len(seeds) * (tile_w + _GAP) + _GAP, 3), 0.15, np.float32
    )
    timings = {}
    for i, kind in enumerate(kinds):
        spent = 0.0
        for j, seed in enumerate(seeds):
            start = time.perf_counter()
            image, labels = make_sample(kind, shape=shape, seed=seed, **kwargs)
            spent += time.perf_counter() - start
            gray = _stretch(image)
            y = _GAP + i * (h + _GAP)
            x = _GAP + j * (tile_w + _GAP)
            sheet[y : y + h, x : x + w] = gray[..., None]
            sheet[y : y + h, x + w + 2 : x + tile_w] = _overlay(gray, labels)
        timings[kind] = 1000 * spent / len(seeds)
    return (sheet * 255).round().astype(np.uint8), timings


# ------------------------------------------------------------------- real images


def real_nuclei_images(extra: Sequence[str] = ()) -> list[tuple[str, np.ndarray, Any]]:
    """Real fluorescence nuclei images available without a download: ``(name, image,
    labels or None)``. ``extra`` entries are ``IMAGE`` or ``IMAGE:LABELS`` paths."""
    import tifffile

    found: list[tuple[str, np.ndarray, Any]] = []
    try:  # only if scikit-image has it in its local cache already
        import pooch
        import skimage
        from skimage import data

        cached = Path(pooch.os_cache("scikit-image")) / skimage.__version__ / "data/mitosis.tif"
        if cached.exists():
            found.append(("skimage human_mitosis", data.human_mitosis(), None))
    except ImportError:
        pass
    spec = importlib.util.find_spec("stardist")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "images"
        if (folder / "img2d.tif").exists():
            found.append(("DSB 2018 (stardist test image)", tifffile.imread(folder / "img2d.tif"),
                          tifffile.imread(folder / "mask2d.tif")))
    for item in extra:
        image_path, _, labels_path = item.partition(":")
        read = tifffile.imread if image_path.endswith((".tif", ".tiff")) else _imread
        image = np.asarray(read(image_path))
        if image.ndim == 3:  # RGB(A): the brightest channel
            image = image[..., :3].max(axis=-1)
        labels = tifffile.imread(labels_path) if labels_path else None
        found.append((Path(image_path).name, image, labels))
    return found


def _imread(path: str) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(path)


# -------------------------------------------------------------------- statistics


def classical_segmentation(image: np.ndarray) -> np.ndarray:
    """Otsu threshold of the smoothed image, then a watershed of the distance transform
    from its maxima: the classical nuclei pipeline, used to measure real and synthetic
    images the same way."""
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    smooth = ndi.gaussian_filter(image.astype(np.float32), 1.0)
    mask = ndi.binary_fill_holes(smooth > threshold_otsu(smooth))
    mask = ndi.binary_opening(mask, iterations=1)
    dist = ndi.distance_transform_edt(mask)
    comp, _ = ndi.label(mask)
    sizes = np.bincount(comp.ravel())[1:]
    r_est = np.sqrt(np.median(sizes[sizes >= 15]) / np.pi) if (sizes >= 15).any() else 4.0
    peaks = peak_local_max(ndi.gaussian_filter(dist, 1.0), min_distance=max(2, int(0.6 * r_est)),
                           labels=comp, exclude_border=False)
    markers = np.zeros(image.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-dist, markers, mask=mask)
    sizes = np.bincount(labels.ravel())
    labels[sizes[labels] < 15] = 0
    return labels


def _contacts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per label: does it touch another label (4-adjacency), and its contact length (px)."""
    n = int(labels.max()) + 1
    length = np.zeros(n)
    for a, b in ((labels[1:], labels[:-1]), (labels[:, 1:], labels[:, :-1])):
        sel = (a != b) & (a > 0) & (b > 0)
        length += np.bincount(a[sel], minlength=n) + np.bincount(b[sel], minlength=n)
    return length > 0, length


def image_stats(image: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
    """Simple measurements of a nuclei image (see the module docstring)."""
    from skimage.measure import regionprops

    seg = classical_segmentation(image) if labels is None else np.asarray(labels).astype(np.int32)
    im = image.astype(np.float64)
    fg = seg > 0
    bg = ~ndi.binary_dilation(fg, iterations=3)
    props = [pr for pr in regionprops(seg) if pr.area >= 15]
    areas = np.array([pr.area for pr in props], float)
    aspect = np.array([pr.axis_major_length / max(pr.axis_minor_length, 1.0) for pr in props])
    bg_level = float(np.median(im[bg])) if bg.any() else float(np.percentile(im, 5))
    # noise: std of differences of neighbouring background pixels (1 % tails cut off)
    pair = bg[:, 1:] & bg[:, :-1]
    diff = (im[:, 1:] - im[:, :-1])[pair]
    noise = 0.0
    if diff.size:
        lo, hi = np.percentile(diff, (1, 99))
        noise = float(diff[(diff >= lo) & (diff <= hi)].std() / np.sqrt(2))
    means = ndi.mean(im, seg, [pr.label for pr in props]) if props else np.zeros(0)
    above = np.clip(np.asarray(means) - bg_level, 1e-3, None)
    touching, length = _contacts(seg)
    ids = [pr.label for pr in props]
    radius = np.sqrt(areas / np.pi) if areas.size else np.zeros(1)
    top = np.iinfo(image.dtype).max if np.issubdtype(image.dtype, np.integer) else 1.0
    return {
        "nuclei": len(props),
        "radius p5": float(np.percentile(radius, 5)),
        "radius p50": float(np.percentile(radius, 50)),
        "radius p95": float(np.percentile(radius, 95)),
        "aspect p50": float(np.median(aspect)) if aspect.size else 0.0,
        "touching %": 100 * float(touching[ids].mean()) if ids else 0.0,
        "contact/r": float(np.median(length[ids][touching[ids]] / radius[touching[ids]]))
        if ids and touching[ids].any() else 0.0,
        "coverage %": 100 * float(fg.mean()),
        "background": bg_level,
        "nucleus": float(np.median(means)) if props else 0.0,
        "noise": noise,
        "contrast/noise": float(np.median(above) / max(noise, 1e-6)) if props else 0.0,
        "brightness p95/p5": float(np.percentile(above, 95) / np.percentile(above, 5))
        if props else 0.0,
        "max": float(im.max()),
        "range used %": 100 * float(im.max()) / top,
        "distinct values": int(np.unique(image).size),
    }


# ------------------------------------------------------------------- comparison


def _histogram(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """A log-count histogram of the raw values (minimum to the 99.9th percentile), as gray
    bars; integer images get whole-number bins."""
    lo, hi = float(image.min()), float(np.percentile(image, 99.9))
    bins = width
    if np.issubdtype(image.dtype, np.integer) and hi - lo + 1 < width:
        bins = int(hi - lo + 1)
        lo, hi = lo - 0.5, hi + 0.5
    counts, _ = np.histogram(image, bins=bins, range=(lo, max(hi, lo + 1e-6)))
    bars = np.log1p(counts) / max(np.log1p(counts).max(), 1e-9)
    bars = bars[np.minimum(np.arange(width) * bins // width, bins - 1)]
    rows = np.arange(height)[::-1, None] / height
    return np.where(rows < bars[None, :], 0.85, 0.1).astype(np.float32)


def _tile(image: np.ndarray, size: int, zoom: int, hist: int) -> np.ndarray:
    """A size x size crop of the image's centre | a zoom of the crop's centre, with the
    histogram of the crop's raw values below."""
    h, w = image.shape
    y0, x0 = max((h - size) // 2, 0), max((w - size) // 2, 0)
    crop = image[y0 : y0 + size, x0 : x0 + size]
    gray = _stretch(crop)
    c = size // zoom
    cy, cx = (gray.shape[0] - c) // 2, (gray.shape[1] - c) // 2
    zoomed = np.kron(gray[cy : cy + c, cx : cx + c], np.ones((zoom, zoom), np.float32))
    panel = np.full((size + 2 + hist, 2 * size + 2), 0.15, np.float32)
    panel[: gray.shape[0], : gray.shape[1]] = gray
    panel[: zoomed.shape[0], size + 2 : size + 2 + zoomed.shape[1]] = zoomed
    panel[size + 2 :, :] = _histogram(crop, 2 * size + 2, hist)
    return panel


def compare_sheet(
    real: Sequence[tuple[str, np.ndarray, Any]],
    synthetic: Sequence[tuple[str, np.ndarray, np.ndarray]],
    size: int = 192,
    zoom: int = 2,
    per_row: int = 4,
) -> np.ndarray:
    """Real images on the first row(s), synthetic ones below: each a crop at its own pixel
    size | a zoom | the histogram of its raw values, captioned with its name, dtype and
    value range. RGB uint8."""
    from PIL import Image, ImageDraw

    hist, cap = 40, 26
    real_items = [(f"REAL {n}", im) for n, im, _ in real]
    synthetic_items = [(n, im) for n, im, _ in synthetic]
    rows = [real_items[i : i + per_row] for i in range(0, len(real_items), per_row)]
    n_real_rows = len(rows)
    rows += [synthetic_items[i : i + per_row] for i in range(0, len(synthetic_items), per_row)]
    tile_h, tile_w = size + 2 + hist, 2 * size + 2
    sheet = np.full((len(rows) * (tile_h + cap + _GAP) + _GAP + 4,
                     per_row * (tile_w + _GAP) + _GAP), 0.15, np.float32)
    captions = []
    for i, row in enumerate(rows):
        for j, (name, image) in enumerate(row):
            y = _GAP + i * (tile_h + cap + _GAP) + (4 if i >= n_real_rows else 0)
            x = _GAP + j * (tile_w + _GAP)
            sheet[y + cap : y + cap + tile_h, x : x + tile_w] = _tile(image, size, zoom, hist)
            lo, hi = image.min(), image.max()
            rng = f"{int(lo)}-{int(hi)}" if image.dtype != np.float32 else f"{lo:.2f}-{hi:.2f}"
            captions.append(((x, y), f"{name}\n{image.dtype} {rng}"))
    img = Image.fromarray((sheet * 255).round().astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(img)
    for (x, y), text in captions:
        draw.multiline_text((x + 2, y + 1), text, fill=(255, 230, 120) if "REAL" in text
                            else (160, 220, 255))
    return np.asarray(img)


def _print_stats(rows: Sequence[tuple[str, dict[str, float]]]) -> None:
    keys = list(rows[0][1])
    print(f"{'':34s}" + "".join(f"{k[:11]:>12s}" for k in keys))
    for name, st in rows:
        print(f"{name[:34]:34s}" + "".join(
            f"{st[k]:12.0f}" if abs(st[k]) >= 100 else f"{st[k]:12.2f}" for k in keys))


def compare(args: argparse.Namespace) -> int:
    real = real_nuclei_images(args.real)
    if not real:
        print("no real nuclei image found: pass --real IMAGE[:LABELS] (see --help)")
    size = args.size[0] if args.size != [256] else 192
    rows = []
    for name, image, labels in real:
        rows.append((f"REAL {name} (classical)", image_stats(image)))
        if labels is not None:
            rows.append((f"REAL {name} (true labels)", image_stats(image, labels)))
    synthetic = []
    dtype = args.dtype
    if real and dtype == "auto":
        dtype = str(real[0][1].dtype) if real[0][1].dtype in (np.uint8, np.uint16) else "float32"
    dtype = "uint16" if dtype == "auto" else dtype
    shape = (512, 512)
    start = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        image, labels = make_sample("nuclei", shape=shape, seed=seed, dtype=dtype)
        synthetic.append((f"seed {seed}", image, labels))
    spent = time.perf_counter() - start
    for name, image, labels in synthetic:
        rows.append((f"synthetic {name} (classical)", image_stats(image)))
        rows.append((f"synthetic {name} (true labels)", image_stats(image, labels)))
    _print_stats(rows)
    print(f"({args.seeds} synthetic {shape[0]}x{shape[1]} {dtype} images in {spent:.1f} s)")
    sheet = compare_sheet(real, synthetic, size=size)
    import imageio.v3 as iio

    iio.imwrite(args.output, sheet)
    print(f"wrote {args.output} ({sheet.shape[1]}x{sheet.shape[0]})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="/tmp/synthetic.png", help="PNG file to write")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--seeds", type=int, default=4, help="samples per kind")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs="+", default=[256], help="rows [cols]")
    parser.add_argument("--dtype", default="auto",
                        choices=["auto", "uint8", "uint16", "float32"],
                        help="auto: uint8 for the contact sheet, the first real image's for "
                        "--compare")
    parser.add_argument("--compare", action="store_true",
                        help="real nuclei images next to synthetic ones, with statistics")
    parser.add_argument("--real", nargs="*", default=[], metavar="IMAGE[:LABELS]",
                        help="more real images (TIFF or PNG), optionally with a labels TIFF")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(args)
    shape = (args.size[0], args.size[-1])
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    dtype = "uint8" if args.dtype == "auto" else args.dtype
    sheet, timings = contact_sheet(args.kinds, list(seeds), shape, dtype=dtype)

    import imageio.v3 as iio

    iio.imwrite(args.output, sheet)
    for kind, ms in timings.items():
        print(f"{kind:>10}: {ms:7.1f} ms per {shape[0]}x{shape[1]} sample")
    print(f"wrote {args.output} ({sheet.shape[1]}x{sheet.shape[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
