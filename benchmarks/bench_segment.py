"""Benchmark of instance decoding (probabilities -> labels) on the CPU, against one EDT.

Prints, measured in one run, for each image size (default 2048² and 8192²):

* one whole-image Euclidean distance transform (``scipy.ndimage.distance_transform_edt``)
  of the foreground, the yardstick;
* ``probabilities_to_labels`` of this tree, and the decoding napari-unet had up to e43b0d5
  (``tests/decode_reference.py``: ``expand_labels`` + disk min/max filters), on the same
  probabilities, each as a ratio to the EDT measured next to it (median of the repeats), and
  whether their labels are identical (the old decoding against this tree's without the
  cutting of merged nuclei, ``split=0``); what the cutting adds, and how many cells it makes;
* ``segment`` of the image end to end (packaged model, CPU) and decoding's share of it: the
  time spent in the block engine's labelling, merging, growing and cutting
  (``_local_components``, ``_merge``, ``_halo_pieces``, ``_grow_block``,
  ``_find_block_splits``, ``_apply_block_splits``), which are timed in place.

``--device cuda`` runs ``segment`` on a GPU (decoding stays on the CPU, overlapping the
network): its Mpx/s and decoding's share are the figures to compare with the network's time
there. ``--segment-repeats N`` times segment N more times after the first run (which includes
starting CUDA) and prints first run, median of the others, the network alone
(``predict_tiled`` of the same image) and what decoding adds to it; ``--variants`` times other
batch sizes and block layouts on this tree (``1:1x1``: batch 1, blocks of one tile).

With ``--baseline COMMIT`` the same child measurements also run on that commit's code
(checked out in a temporary ``git worktree``), in the same run, one after the other for
each size; ``--large`` then also runs ``bench_large.py --sizes 16384`` on both, alternately
(``--large-repeats`` times each).

The image is ``bench_large.py``'s synthetic cells (uint8, a cell per 24x24 square); the
probabilities are those ``segment`` predicts for it. The machine is noisy: compare the
ratios measured in the same run, not the seconds of different runs.

Usage::

    python benchmarks/bench_segment.py                       # 2048² and 8192², ~10 min
    python benchmarks/bench_segment.py --sizes 2048 --repeats 5
    python benchmarks/bench_segment.py --baseline e43b0d5 --large   # + old code, + 16k runs
    # a GPU machine without the history (git archive 46d6ce0 src | tar -x -C base):
    python benchmarks/bench_segment.py --device cuda --sizes 4096 --repeats 1 \
        --segment-repeats 3 --no-reference --baseline base --variants auto:1x1 9:3x3
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def image_of(size: int, seed: int = 0) -> np.ndarray:
    """``bench_large``'s synthetic image, made in bands of rows (little memory)."""
    sys.path.insert(0, str(HERE))
    from bench_large import synthetic_block

    out = np.empty((size, size), np.uint8)
    for r in range(0, size, 1024):
        out[r : r + 1024] = synthetic_block(r, min(r + 1024, size), 0, size, seed)
    return out


def digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:12]


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def child(size: int, repeats: int, reference: bool, device: str, segment_repeats: int = 0,
          variant_specs: list = ()) -> dict:
    """Measure with the napari_unet found on sys.path (this tree or a baseline's)."""
    import torch
    from scipy import ndimage as ndi

    import napari_unet
    from napari_unet import predict_tiled, probabilities_to_labels, segment
    from napari_unet.core import blocks, load_model, packaged_model_path

    path = packaged_model_path()
    if path is not None:
        model = load_model(path)
    else:
        from napari_unet.core.training import new_model

        torch.manual_seed(0)
        model = new_model()
    image = image_of(size)
    grow = int(model.metadata.get("target", {}).get("gap", 1)) + 1

    # decoding's share of segment: time the block engine's decoding steps in place (summed
    # over threads: where decoding overlaps the network, this is more than it adds)
    spent = [0.0]
    for name in ("_local_components", "_merge", "_halo_pieces", "_grow_block",
                 "_find_block_splits", "_apply_block_splits"):
        original = getattr(blocks, name, None)
        if original is None:  # a baseline from before cutting merged nuclei
            continue

        def wrapper(*args, _f=original, **kwargs):
            t = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t

        setattr(blocks, name, wrapper)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def run_segment(**kw):
        spent[0] = 0.0
        sync()
        seconds, result = timed(lambda: segment(image, model, device=device,
                                                return_probabilities=True, **kw))
        return seconds, spent[0], result

    # the first run in the process includes starting CUDA (context, cuDNN); the rest are
    # what every later segmentation costs
    seg_first, _, (labels, probs) = run_segment()
    seg_runs, dec_runs = [], []
    rerun_differs = 0.0  # a GPU's convolutions need not be deterministic
    for _ in range(segment_repeats):
        seconds, dec, (again, _) = run_segment()
        seg_runs.append(seconds)
        dec_runs.append(dec)
        rerun_differs = max(rerun_differs, float(np.mean(again != labels)))
    seg_seconds = float(np.median(seg_runs)) if seg_runs else seg_first
    decode_in_segment = float(np.median(dec_runs)) if dec_runs else spent[0]
    network = []
    for _ in range(segment_repeats):
        sync()
        network.append(timed(lambda: predict_tiled(model, image, device=device))[0])
    variants = []
    from napari_unet.core.options import SegmentOptions

    # the tiles (and so their step) follow the memory, not the batch: one plan gives them
    step = blocks.plan_segmentation(image, model, SegmentOptions(device=device)).grid.plan.step
    for batch, per_block in variant_specs:
        kw = {"batch_size": batch}
        if per_block is not None:
            kw["block_shape"] = (per_block[0] * step[0], per_block[1] * step[1])
        times, differs = [], 0.0
        for _ in range(max(segment_repeats, 1)):
            seconds, dec, (got, _) = run_segment(**kw)
            times.append(seconds)
            # another batch size may pick other GPU convolution algorithms (TF32 on by
            # default): probabilities differ in the last bits, a few pixels may flip
            differs = max(differs, float(np.mean(got != labels)))
        plan = blocks.plan_segmentation(image, model, SegmentOptions(device=device, **kw))
        variants.append({"batch": plan.batch, "block_tiles": list(plan.grid.block_tiles),
                         "blocks": plan.grid.total, "segment": times, "differs": differs})
    old = None
    if reference:
        sys.path.insert(0, str(REPO / "tests"))
        from decode_reference import reference_probabilities_to_labels

        def old():
            return reference_probabilities_to_labels(probs, model.classes, min_size=16,
                                                     grow=grow)
    foreground = probs[list(model.classes).index("cell")] >= 0.5
    rows: dict[str, list[float]] = {"edt": [], "decode": [], "old": [], "nosplit": []}
    new_labels = old_labels = uncut_labels = None
    # since the cutting of merged nuclei, the decoding is the old one followed by the cut
    cuts = "split" in inspect.signature(probabilities_to_labels).parameters
    for _ in range(repeats):  # interleaved, so that load changes hit all alike
        rows["edt"].append(timed(lambda: ndi.distance_transform_edt(foreground))[0])
        seconds, new_labels = timed(lambda: probabilities_to_labels(
            probs, model.classes, min_size=16, grow=grow))
        rows["decode"].append(seconds)
        if cuts:
            seconds, uncut_labels = timed(lambda: probabilities_to_labels(
                probs, model.classes, min_size=16, grow=grow, split=0))
            rows["nosplit"].append(seconds)
        if old is not None:
            seconds, old_labels = timed(old)
            rows["old"].append(seconds)
    return {
        "size": size, "device": device, "source": str(Path(napari_unet.__file__).parents[1]),
        "torch_threads": torch.get_num_threads(), "n_cells": int(labels.max()),
        "segment": seg_seconds, "decode_in_segment": decode_in_segment,
        "segment_first": seg_first, "segment_runs": seg_runs, "network": network,
        "variants": variants, "rerun_differs": rerun_differs,
        "edt": rows["edt"], "decode": rows["decode"], "old": rows["old"],
        "nosplit": rows["nosplit"], "n_uncut": int(uncut_labels.max()) if cuts else None,
        "labels": digest(new_labels), "old_labels": digest(old_labels) if old_labels is not None
        else "", "uncut_labels": digest(uncut_labels) if cuts else digest(new_labels),
        "segment_labels": digest(labels),
        "segment_equals_decode": bool((labels == new_labels).all()),
    }


def run_child(src: Path, size: int, repeats: int, reference: bool, device: str,
              segment_repeats: int = 0, variants: list[str] = ()) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(size), "--repeats",
           str(repeats), "--device", device, "--segment-repeats", str(segment_repeats)]
    cmd += (["--reference"] if reference else []) + (["--variants", *variants] if variants else [])
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_large(src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, str(HERE / "bench_large.py"), "--sizes", "16384"],
                         env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    print(out, end="", flush=True)
    line = next(x for x in out.splitlines() if x.strip().startswith("16384x16384"))
    wall, cpu = (float(part.split()[-1]) for part in line.split(" s ")[:2])
    return {"seconds": wall, "cpu_seconds": cpu, "line": line}


def parse_variant(text: str) -> tuple[int | None, tuple[int, int] | None]:
    """``"BATCH:RxC"`` -> (batch or None for auto, (R, C) tiles per block or None)."""
    batch, _, block = text.partition(":")
    b = None if batch in ("", "auto") else int(batch)
    if block in ("", "auto"):
        return b, None
    r, c = block.split("x")
    return b, (int(r), int(c))


def median_ratio(a: list[float], b: list[float]) -> float:
    return float(np.median(np.asarray(a) / np.asarray(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="where segment runs the network")
    parser.add_argument("--baseline", help="a commit to measure too (e.g. e43b0d5), or a folder "
                        "holding its src/ (git archive COMMIT src), e.g. on a machine without "
                        "the history")
    parser.add_argument("--segment-repeats", type=int, default=0,
                        help="time segment this many more times after the first run (which "
                        "includes starting CUDA) and report their median")
    parser.add_argument("--variants", nargs="+", default=[], metavar="BATCH:RxC",
                        help="also time segment with these batch sizes and blocks of RxC "
                        "tiles on this tree (auto for the default), e.g. 1:1x1 auto:1x3")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the old decoding (tests/decode_reference.py) on this tree")
    parser.add_argument("--large", action="store_true",
                        help="also bench_large.py at 16384² on this tree and the baseline")
    parser.add_argument("--large-repeats", type=int, default=1)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeats, args.reference, args.device,
                               args.segment_repeats, [parse_variant(v) for v in args.variants])))
        return

    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}", flush=True)
    trees = [("this tree", REPO / "src")]
    worktree = None
    try:
        if args.baseline and Path(args.baseline, "src").is_dir():
            trees.insert(0, (Path(args.baseline).name, Path(args.baseline, "src")))
        elif args.baseline:
            worktree = Path(tempfile.mkdtemp(prefix="bench-segment-baseline-"))
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--force",
                            str(worktree), args.baseline], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            trees.insert(0, (args.baseline, worktree / "src"))
        results = []
        for size in args.sizes:
            for name, src in trees:
                mine = src == REPO / "src"
                r = run_child(src, size, args.repeats, mine and not args.no_reference,
                              args.device, args.segment_repeats, args.variants if mine else [])
                r["tree"] = name
                results.append(r)
                print(f"  measured {size}² on {name}", file=sys.stderr, flush=True)
        print(f"\ndecoding on the CPU; segment on {args.device}, torch threads "
              f"{results[0]['torch_threads']}; medians of {args.repeats} repeats; ratios "
              "measured next to their EDT; 'decode in seg' is summed over threads, so on a GPU "
              "(where decoding overlaps the network) its share can exceed what it adds")
        print(f"{'size':>6} {'code':<26} {'EDT s':>7} {'decode s':>9} {'/ EDT':>6} "
              f"{'segment s':>10} {'Mpx/s':>6} {'decode in seg s':>16} {'share':>6}  labels")
        for r in results:
            edt, dec = np.median(r["edt"]), np.median(r["decode"])
            share = r["decode_in_segment"] / r["segment"]
            print(f"{r['size']:>6} {r['tree']:<26} {edt:>7.3f} {dec:>9.3f} "
                  f"{median_ratio(r['decode'], r['edt']):>6.2f} {r['segment']:>10.1f} "
                  f"{r['size'] ** 2 / r['segment'] / 1e6:>6.2f} "
                  f"{r['decode_in_segment']:>16.2f} {share:>6.1%}  {r['labels']}")
            if r.get("nosplit"):
                cut = np.median(r["decode"]) - np.median(r["nosplit"])
                ratio = median_ratio(r["nosplit"], r["edt"])
                print(f"{r['size']:>6} {'  without cutting nuclei':<26} {edt:>7.3f} "
                      f"{np.median(r['nosplit']):>9.3f} {ratio:>6.2f}"
                      f" {'':>10} {'':>6} {'':>16} {'':>6}  {r['uncut_labels']}")
                print(f"{'':>6} {'  cutting merged nuclei':<26} {'':>7} {cut:>9.3f} "
                      f"{cut / edt:>6.2f}   {r['n_uncut']} -> {r['n_cells']} cells")
            if r["old"]:
                same = "identical" if r["old_labels"] == r["uncut_labels"] else "DIFFERENT"
                print(f"{r['size']:>6} {'old decoding (reference)':<26} {edt:>7.3f} "
                      f"{np.median(r['old']):>9.3f} {median_ratio(r['old'], r['edt']):>6.2f} "
                      f"{'':>10} {'':>6} {'':>16} {'':>6}  {r['old_labels']} ({same})")
                print(f"{'':>6} {'old / new (uncut) decoding':<26} {'':>7} "
                      f"{median_ratio(r['old'], r['nosplit'] or r['decode']):>9.1f}x faster now")
            if not r["segment_equals_decode"]:
                print(f"{'':>6} segment's labels DIFFER from probabilities_to_labels'")
        if args.segment_repeats:
            print(f"\nsegment on {args.device}, end to end (labels and probabilities returned): "
                  "the first run in a process (CUDA start included), then the median of "
                  f"{args.segment_repeats} more; the network alone = predict_tiled of the "
                  "same image (median); decoding = the engine's labelling, merging and "
                  "growing, summed over threads")
            print(f"{'size':>6} {'code':<26} {'first s':>8} {'segment s':>10} {'Mpx/s':>7} "
                  f"{'network s':>10} {'Mpx/s':>7} {'decoding s':>11} {'seg - net s':>12}")
            for r in results:
                seg, net = r["segment"], float(np.median(r["network"]))
                print(f"{r['size']:>6} {r['tree']:<26} {r['segment_first']:>8.2f} {seg:>10.3f} "
                      f"{r['size'] ** 2 / seg / 1e6:>7.2f} {net:>10.3f} "
                      f"{r['size'] ** 2 / net / 1e6:>7.2f} {r['decode_in_segment']:>11.3f} "
                      f"{seg - net:>12.3f}")
                for v in r.get("variants", []):
                    t = float(np.median(v["segment"]))
                    name = (f"batch {v['batch']}, blocks of {v['block_tiles'][0]}x"
                            f"{v['block_tiles'][1]} tiles ({v['blocks']})")
                    print(f"{'':>6}   {name:<45} {t:>10.3f} {r['size'] ** 2 / t / 1e6:>7.2f}"
                          f"   labels differ from the default's at {v['differs']:.5%} of pixels")
                if r.get("rerun_differs"):
                    print(f"{'':>6}   reruns differed at {r['rerun_differs']:.5%} of pixels")
            if len(results) >= 2 and results[0]["tree"] != results[1]["tree"]:
                for size in args.sizes:
                    pair = [r for r in results if r["size"] == size]
                    if len(pair) == 2:
                        print(f"{size}²: {pair[0]['tree']} / {pair[1]['tree']} segment time: "
                              f"{pair[0]['segment'] / pair[1]['segment']:.2f}x")
        if args.large:
            print("\nbench_large.py --sizes 16384 (segment into zarr on the CPU; CPU time = "
                  "the process's user + system seconds, less sensitive to the load):")
            large: dict[str, list[dict]] = {name: [] for name, _ in trees}
            for _ in range(args.large_repeats):
                for name, src in trees:
                    print(f"-- {name}", flush=True)
                    large[name].append(run_large(src))
            for name, runs in large.items():
                wall = [r["seconds"] for r in runs]
                cpu = [r["cpu_seconds"] for r in runs]
                print(f"16384² {name:<12} wall {np.median(wall):6.0f} s, CPU "
                      f"{np.median(cpu):6.0f} s (runs, wall/CPU: "
                      f"{', '.join(f'{w:.0f}/{c:.0f}' for w, c in zip(wall, cpu))})")
            if len(trees) == 2:
                (_, base), (_, new) = large.items()
                for key, what in (("seconds", "wall"), ("cpu_seconds", "CPU")):
                    ratio = np.median([r[key] for r in new]) / np.median([r[key] for r in base])
                    print(f"this tree / {trees[0][0]}, {what} time: {ratio:.3f}")
        print(f"load average now {os.getloadavg()[0]:.1f}")
    finally:
        if worktree is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(worktree)], check=False)
            shutil.rmtree(worktree, ignore_errors=True)


if __name__ == "__main__":
    main()
