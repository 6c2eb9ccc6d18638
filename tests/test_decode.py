"""Growing cells with a cost bounded by the growing distance: the same labels as the old
whole-image decoding (``decode_reference``), ties included, in one piece and in blocks."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
from blocks_helpers import as_image, passthrough_unet
from decode_reference import reference_grow, reference_probabilities_to_labels
from scipy import ndimage as ndi

import napari_unet as nu
from napari_unet import SegmentOptions, predict_tiled, probabilities_to_labels, segment
from napari_unet.core.decode import grow_cells, grow_halo, reach_offsets

THREE = ("background", "interior", "boundary")


def documented_rule(labels: np.ndarray, region: np.ndarray | None, grow: int) -> np.ndarray:
    """The rule as the module docstring states it, pixel by pixel (independent of scipy)."""
    out = labels.astype(np.int32)
    if grow <= 0:
        return out
    reach = grow * np.sqrt(2) if region is not None else float(grow)
    rr, cc = np.nonzero(labels)
    for r in range(labels.shape[0]):
        for c in range(labels.shape[1]):
            if labels[r, c] or (region is not None and not region[r, c]) or not len(rr):
                continue
            d2 = (rr - r) ** 2 + (cc - c) ** 2
            inside = np.sqrt(d2.astype(np.float64)) <= reach
            if not inside.any():
                continue
            if region is None and len(np.unique(labels[rr[inside], cc[inside]])) < 2:
                continue  # two-class: only where two different cells are in reach
            nearest = np.flatnonzero(d2 == d2.min())
            col, row = min((cc[i], rr[i]) for i in nearest)  # leftmost, then topmost
            out[r, c] = labels[row, col]
    return out


def random_labels(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Sparse single pixels and small blobs of a few ids: many equidistant cells."""
    density = rng.uniform(0.01, 0.5)
    ids = rng.integers(1, int(rng.integers(2, 9)), shape)
    labels = np.where(rng.random(shape) < density, ids, 0)
    if rng.random() < 0.5:  # blobs too
        labels = np.where(labels == 0, ndi.maximum_filter(labels, 2) * (rng.random(shape) < .3),
                          labels)
    return labels.astype(np.int32)


@pytest.mark.parametrize("three_class", [False, True])
def test_growing_equals_the_old_decoding_and_the_documented_rule(three_class):
    rng = np.random.default_rng(7)
    for trial in range(300):
        shape = tuple(int(s) for s in rng.integers(1, 26, 2))
        labels = random_labels(rng, shape)
        grow = int(rng.integers(1, 6))
        region = None
        if three_class:
            region = (rng.random(shape) < 0.7) | (labels > 0)
        new = grow_cells(labels, region, grow)
        msg = f"trial {trial}, grow {grow}:\n{labels}"
        np.testing.assert_array_equal(new, reference_grow(labels, region, grow), err_msg=msg)
        if trial < 60:  # the slow pure-Python rule on a part of them
            np.testing.assert_array_equal(new, documented_rule(labels, region, grow), err_msg=msg)


def test_ties_go_to_the_leftmost_then_topmost_cell():
    labels = np.zeros((7, 7), np.int32)
    labels[3, 1], labels[3, 5] = 1, 2  # left and right of (3, 3)
    assert grow_cells(labels, None, 2)[3, 3] == 1
    labels[3, 1], labels[3, 5] = 2, 1  # the ids do not matter, the side does
    assert grow_cells(labels, None, 2)[3, 3] == 2
    labels[:] = 0
    labels[1, 3], labels[5, 3] = 5, 4  # above and below: the upper one
    assert grow_cells(labels, None, 2)[3, 3] == 5
    labels[:] = 0
    labels[4, 2], labels[2, 4], labels[4, 4] = 3, 1, 2  # three diagonal neighbours
    assert grow_cells(labels, None, 2)[3, 3] == 3  # leftmost beats topmost
    labels[2, 2] = 4
    assert grow_cells(labels, None, 2)[3, 3] == 4  # leftmost, then topmost


def test_growing_reaches_only_the_distance_and_leaves_inputs_alone():
    labels = np.zeros((9, 30), np.int64)
    labels[2:7, 2:8] = 1
    labels[2:7, 11:17] = 2  # a 3-pixel gap (columns 8 to 10) between cells 1 and 2
    labels[2:7, 24:28] = 3  # alone: never grown
    before = labels.copy()
    once = grow_cells(labels, None, 1)  # no gap pixel has both cells within 1
    assert once.dtype == np.int32
    np.testing.assert_array_equal(once, labels)
    twice = grow_cells(labels, None, 2)  # only the middle column has both within 2
    np.testing.assert_array_equal(twice[2:7, 8:11], [[0, 1, 0]] * 5)  # tie: the left cell
    thrice = grow_cells(labels, None, 3)  # all of the gap: to the nearest cell
    np.testing.assert_array_equal(thrice[2:7, 8:11], [[1, 1, 2]] * 5)
    for grown in (once, twice, thrice):
        np.testing.assert_array_equal(grown[:, 18:], labels[:, 18:])
        np.testing.assert_array_equal(grown[:, :8], labels[:, :8])
    np.testing.assert_array_equal(labels, before)
    np.testing.assert_array_equal(grow_cells(labels, None, 0), labels)
    region = np.ones(labels.shape, bool)
    three = grow_cells(labels, region, 1)  # up to √2: one pixel all around, corners too
    np.testing.assert_array_equal(three[1:8, 1:9] > 0, True)
    assert three[0].max() == three[:, 9].max() == three[:, 18:23].max() == 0


def test_bad_labels_are_refused_clearly():
    with pytest.raises(ValueError, match="2D integer"):
        grow_cells(np.zeros((2, 3, 4), np.int32), None, 1)
    with pytest.raises(ValueError, match="2D integer"):
        grow_cells(np.zeros((3, 4), np.float32), None, 1)
    with pytest.raises(ValueError, match="positive int32"):
        grow_cells(np.array([[-1, 0, 2]]), None, 1)
    with pytest.raises(ValueError, match="region has shape"):
        grow_cells(np.array([[1, 0, 2]]), np.ones((2, 3), bool), 1)


def test_offsets_come_in_tie_order():
    rows, cols, d2 = reach_offsets(2.0)
    assert len(d2) == 12 and d2.tolist() == sorted(d2.tolist())
    key = list(zip(d2.tolist(), cols.tolist(), rows.tolist()))
    assert key == sorted(key)
    assert not rows.flags.writeable
    # three-class reach grow·√2 includes the diagonal corner (float64, as the EDT compares)
    r3, c3, _ = reach_offsets(3 * np.sqrt(2))
    assert (3, 3) in set(zip(r3.tolist(), c3.tolist()))
    assert grow_halo(3, THREE) == 5 and grow_halo(3, ("background", "cell")) == 3


def network_like_probabilities(rng: np.random.Generator, shape, three_class: bool,
                               n_cells: int) -> np.ndarray:
    """Touching cells (a Voronoi tessellation) with carved gaps, background, blur and noise:
    what a U-Net gives, with many ties between equally near cells."""
    seeds = np.zeros(shape, bool)
    seeds[tuple(rng.integers(0, shape, (n_cells, 2)).T)] = True
    _, (rr, cc) = ndi.distance_transform_edt(~seeds, return_indices=True)
    cells = (rr * shape[1] + cc + 1) * (ndi.gaussian_filter(rng.random(shape), 3) > 0.47)
    edge = np.zeros(shape, bool)
    edge[:-1] |= cells[:-1] != cells[1:]
    edge[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    if rng.random() < 0.5:  # gaps of two pixels, not one
        edge[1:] |= cells[1:] != cells[:-1]
        edge[:, 1:] |= cells[:, 1:] != cells[:, :-1]
    interior = ndi.gaussian_filter(((cells > 0) & ~edge).astype(float), 0.5)
    interior = np.clip(interior + rng.normal(0, 0.08, shape), 0, 1)
    if not three_class:
        return np.stack([1 - interior, interior]).astype(np.float32)
    boundary = np.clip((edge & (ndi.maximum_filter(cells, 3) > 0)) * 0.8
                       + rng.normal(0, 0.08, shape), 0, 1 - interior)
    return np.stack([1 - interior - boundary, interior, boundary]).astype(np.float32)


@pytest.mark.parametrize("three_class", [False, True])
def test_probabilities_to_labels_equals_the_old_decoding(three_class):
    rng = np.random.default_rng(3)
    classes = THREE if three_class else ("background", "cell")
    for shape, threshold, min_size, grow in [((90, 120), 0.5, 16, 2), ((64, 64), 0.45, 6, 3),
                                             ((33, 97), 0.55, 1, 1), ((80, 80), 0.5, 30, 4)]:
        probs = network_like_probabilities(rng, shape, three_class, shape[0] * shape[1] // 150)
        new = probabilities_to_labels(probs, classes, threshold=threshold, min_size=min_size,
                                      grow=grow, split=0, min_share=0)  # the old decoding
        # neither cut nor dropped fragments
        old = reference_probabilities_to_labels(probs, classes, threshold=threshold,
                                                min_size=min_size, grow=grow)
        assert old.max() > 10 and (old != 0).mean() > 0.3
        np.testing.assert_array_equal(new, old, err_msg=f"{shape} {threshold} {grow}")


def gap_ties_at_block_corners(grid, shape):
    """Cells around each block corner with a one-pixel cross of gap between them, whose centre
    (the corner pixel) is equally near all of them: four cells, or (every other corner) only
    the top-right and bottom-left ones, where leftmost and topmost differ; and pairs of cells
    on both sides of each block border with the gap on the border. The ties must go the same
    way in blocks."""
    truth = np.zeros(shape, np.int32)

    def put(r0, r1, c0, c1):
        truth[max(r0, 0) : r1, max(c0, 0) : c1] = truth.max() + 1

    rows = [grid.bounds(i, 0)[0] for i in range(1, grid.n_blocks[0])]
    cols = [grid.bounds(0, j)[2] for j in range(1, grid.n_blocks[1])]
    for a, r in enumerate(rows):
        for b, c in enumerate(cols):
            for r0 in (r - 5, r + 1):
                for c0 in (c - 5, c + 1):
                    if (a + b) % 2 == 0 or (r0 < r) != (c0 < c):
                        put(r0, r0 + 5, c0, c0 + 5)
        c = cols[0] // 2  # the gap on a border row
        put(r - 5, r, c - 4, c + 4)
        put(r + 1, r + 6, c - 4, c + 4)
    for c in cols:  # the gap on a border column
        r = rows[0] // 2
        put(r - 4, r + 4, c - 5, c)
        put(r - 4, r + 4, c + 1, c + 6)
    return truth


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("three_class", [False, True])
def test_ties_on_block_borders_and_corners_equal_one_piece_and_the_old_decoding(three_class):
    from napari_unet.core.tiling import BlockGrid, plan_tiles

    net = passthrough_unet(three_class)
    shape, tile = (150, 170), 80
    grid = BlockGrid.make(plan_tiles(net, shape, (tile, tile)), shape, 40, min_side=3)
    assert grid.n_blocks[0] >= 3 and grid.n_blocks[1] >= 3
    truth = gap_ties_at_block_corners(grid, shape)
    image = as_image(truth, three_class)
    probs = predict_tiled(net, image, tile_shape=tile)
    old = reference_probabilities_to_labels(probs, net.classes, min_size=16, grow=2)
    np.testing.assert_array_equal(probabilities_to_labels(probs, net.classes, min_size=16, split=0,
                                                          grow=2), old)
    for block in (grid.block_shape, (20, 60), 1):
        labels = segment(image, net, tile_shape=tile, block_shape=block, min_size=16, grow=2,
                         split=0)
        np.testing.assert_array_equal(labels, old, err_msg=f"blocks of {block}")
    if not three_class:  # the ties were met: the corner pixel goes to the leftmost cell,
        r, c = grid.bounds(1, 1)[0], grid.bounds(1, 1)[2]  # the top-left of four
        assert labels[r, c] > 0 and labels[r, c] == labels[r - 1, c - 1]
        assert labels[r, c + 1] == labels[r - 1, c + 1] != labels[r + 1, c + 1]
        r, c = grid.bounds(1, 2)[0], grid.bounds(1, 2)[2]  # the bottom-left of two
        assert labels[r, c] > 0 and labels[r, c] == labels[r + 1, c - 1] != labels[r - 1, c + 1]


# ------------------------------------------------------------------ SegmentOptions
def test_options_are_checked_and_normalised():
    o = SegmentOptions(tile_shape=np.int64(96), block_shape=[64, 128], threshold=np.float32(.25),
                       min_size=4.0, device=nu.core.resolve_device("cpu"))
    assert o.tile_shape == (96, 96) and o.block_shape == (64, 128)
    assert o.threshold == 0.25 and o.min_size == 4 and o.device == "cpu"
    assert pickle.loads(pickle.dumps(o)) == o and hash(o) == hash(SegmentOptions(**o.as_dict()))
    for bad, match in [(dict(threshold=1.5), "probability"), (dict(threshold=float("nan")),
                       "probability"), (dict(min_size=-1), "min_size must be 0 or more"),
                       (dict(grow=1.5), "grow must be a whole number"),
                       (dict(batch_size=0), "batch_size"), (dict(tile_shape=(1, 2, 3)),
                       "one or two sizes"), (dict(device="tpu"), "unknown device"),
                       (dict(axes=3), "axes")]:
        with pytest.raises(ValueError, match=match):
            SegmentOptions(**bad)
    with pytest.raises(TypeError, match="unexpected keyword argument 'treshold'"):
        SegmentOptions.merge(None, {"treshold": 0.3})
    merged = SegmentOptions.merge(SegmentOptions(threshold=0.3), {"grow": 3})
    assert (merged.threshold, merged.grow) == (0.3, 3)


@pytest.mark.usefixtures("one_torch_thread")
def test_segment_takes_options_or_keywords_alike():
    net = passthrough_unet()
    image = as_image(np.kron(np.eye(6, dtype=np.int32), np.ones((10, 10), np.int32)), False)
    by_keywords = segment(image, net, tile_shape=48, block_shape=32, min_size=4, grow=1)
    options = SegmentOptions(tile_shape=48, block_shape=32, min_size=4, grow=1)
    np.testing.assert_array_equal(segment(image, net, options), by_keywords)
    np.testing.assert_array_equal(segment(image, net, options, grow=1), by_keywords)
    assert by_keywords.max() == 6
    with pytest.raises(TypeError, match="unexpected keyword argument 'tile'"):
        segment(image, net, tile=48)
    with pytest.raises(ValueError, match="threshold must be a probability"):
        segment(image, net, threshold=2)
    assert SegmentOptions().grow_for(net) == 2  # the model's gap (default 1) plus one


@pytest.mark.usefixtures("one_torch_thread")
def test_batch_plans_the_blocks_once(tmp_path, monkeypatch):
    from napari_unet import batch
    from napari_unet.core import blocks

    calls = []
    plan = blocks.plan_segmentation
    monkeypatch.setattr(blocks, "plan_segmentation", lambda *a, **k: calls.append(1) or
                        plan(*a, **k))
    net = passthrough_unet()
    image = as_image(np.kron(np.eye(4, dtype=np.int32), np.ones((12, 12), np.int32)), False)
    np.save(tmp_path / "in.npy", (image * 100).astype(np.uint8))
    result = batch.segment_file(tmp_path / "in.npy", tmp_path / "out.ome.zarr", net,
                                tile_shape=48, block_shape=24, min_size=4,
                                probabilities=tmp_path / "p.ome.zarr")
    assert result.status == "done", result.error
    assert len(calls) == 1 and result.n_cells == 4


# ------------------------------------------------------------------ import graph
SRC = Path(nu.__file__).parent
LAYERS = ["core/decode.py", "core/options.py", "core/blocks.py", "core/cellsize.py",
          "core/segmentation.py", "batch.py"]  # each may import those before, never after


def relative_imports(path: Path) -> list[tuple[str, list[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            found.append((node.module or "", [a.name for a in node.names]))
    return found


def test_segmentation_modules_import_one_way_and_no_private_names():
    stems = [Path(p).stem for p in LAYERS]
    for k, rel in enumerate(LAYERS):
        for module, names in relative_imports(SRC / rel):
            last = module.rsplit(".", 1)[-1]
            assert last not in stems[k + 1 :], f"{rel} imports {module}, which is above it"
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{rel} imports private {private} from {module}"
    assert not (SRC / "core" / "instances.py").exists()


def _module_of(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_circles_in_the_package():
    """Relative imports, at module level or inside functions, form no circle (packages'
    ``__init__`` re-exports aside): e.g. checkpoints and bioimageio both sit below
    core.loading, which is the only module that knows both model formats."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        if path.name == "__init__.py":
            continue
        here = _module_of(path).split(".")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = here[: len(here) - node.level]
                target = ".".join(base + ([node.module] if node.module else []))
                for name in ([""] if node.module else [a.name for a in node.names]):
                    full = f"{target}.{name}" if name else target
                    if (SRC / (full.replace(".", "/") + ".py")).exists():
                        graph.setdefault(".".join(here), set()).add(full)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != 1, "import circle: " + " -> ".join(trail + [node, nxt])
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [])
    assert "core.bioimageio" not in graph.get("core.checkpoints", set())
