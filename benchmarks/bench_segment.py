"""Benchmark of instance decoding (probabilities -> labels) on the CPU, against one EDT.

Prints, measured in one run, for each image size (default 2048² and 8192²):

* one whole-image Euclidean distance transform (``scipy.ndimage.distance_transform_edt``)
  of the foreground, the yardstick;
* ``probabilities_to_labels`` of this tree, and the decoding napari-unet had up to e43b0d5
  (``tests/decode_reference.py``: ``expand_labels`` + disk min/max filters), on the same
  probabilities, each as a ratio to the EDT measured next to it (median of the repeats), and
  whether their labels are identical;
* ``segment`` of the image end to end (packaged model, CPU) and decoding's share of it: the
  time spent in the block engine's labelling, merging and growing (``_local_components``,
  ``_merge``, ``_halo_pieces``, ``_grow_block``), which are timed in place.

``--device cuda`` runs ``segment`` on a GPU (decoding stays on the CPU): its Mpx/s and
decoding's share are the figures to compare with the network's time there.

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
"""

from __future__ import annotations

import argparse
import hashlib
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


def child(size: int, repeats: int, reference: bool, device: str) -> dict:
    """Measure with the napari_unet found on sys.path (this tree or a baseline's)."""
    import torch
    from scipy import ndimage as ndi

    import napari_unet
    from napari_unet import probabilities_to_labels, segment
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

    # decoding's share of segment: time the block engine's decoding steps in place
    spent = [0.0]
    for name in ("_local_components", "_merge", "_halo_pieces", "_grow_block"):
        original = getattr(blocks, name)

        def wrapper(*args, _f=original, **kwargs):
            t = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t

        setattr(blocks, name, wrapper)
    seg_seconds, (labels, probs) = timed(
        lambda: segment(image, model, device=device, return_probabilities=True))
    decode_in_segment = spent[0]

    old = None
    if reference:
        sys.path.insert(0, str(REPO / "tests"))
        from decode_reference import reference_probabilities_to_labels

        def old():
            return reference_probabilities_to_labels(probs, model.classes, min_size=16,
                                                     grow=grow)
    foreground = probs[list(model.classes).index("cell")] >= 0.5
    rows: dict[str, list[float]] = {"edt": [], "decode": [], "old": []}
    new_labels = old_labels = None
    for _ in range(repeats):  # interleaved, so that load changes hit all alike
        rows["edt"].append(timed(lambda: ndi.distance_transform_edt(foreground))[0])
        seconds, new_labels = timed(lambda: probabilities_to_labels(
            probs, model.classes, min_size=16, grow=grow))
        rows["decode"].append(seconds)
        if old is not None:
            seconds, old_labels = timed(old)
            rows["old"].append(seconds)
    return {
        "size": size, "device": device, "source": str(Path(napari_unet.__file__).parents[1]),
        "torch_threads": torch.get_num_threads(), "n_cells": int(labels.max()),
        "segment": seg_seconds, "decode_in_segment": decode_in_segment,
        "edt": rows["edt"], "decode": rows["decode"], "old": rows["old"],
        "labels": digest(new_labels), "old_labels": digest(old_labels) if old_labels is not None
        else "", "segment_labels": digest(labels),
        "segment_equals_decode": bool((labels == new_labels).all()),
    }


def run_child(src: Path, size: int, repeats: int, reference: bool, device: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(size), "--repeats",
           str(repeats), "--device", device] + (["--reference"] if reference else [])
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


def median_ratio(a: list[float], b: list[float]) -> float:
    return float(np.median(np.asarray(a) / np.asarray(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="where segment runs the network")
    parser.add_argument("--baseline", help="a commit to measure too (e.g. e43b0d5)")
    parser.add_argument("--large", action="store_true",
                        help="also bench_large.py at 16384² on this tree and the baseline")
    parser.add_argument("--large-repeats", type=int, default=1)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeats, args.reference, args.device)))
        return

    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}", flush=True)
    trees = [("this tree", REPO / "src")]
    worktree = None
    try:
        if args.baseline:
            worktree = Path(tempfile.mkdtemp(prefix="bench-segment-baseline-"))
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--force",
                            str(worktree), args.baseline], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            trees.insert(0, (args.baseline, worktree / "src"))
        results = []
        for size in args.sizes:
            for name, src in trees:
                r = run_child(src, size, args.repeats, src == REPO / "src", args.device)
                r["tree"] = name
                results.append(r)
                print(f"  measured {size}² on {name}", file=sys.stderr, flush=True)
        print(f"\ndecoding on the CPU; segment on {args.device}, torch threads "
              f"{results[0]['torch_threads']}; medians of {args.repeats} repeats; ratios "
              "measured next to their EDT")
        print(f"{'size':>6} {'code':<26} {'EDT s':>7} {'decode s':>9} {'/ EDT':>6} "
              f"{'segment s':>10} {'Mpx/s':>6} {'decode in seg s':>16} {'share':>6}  labels")
        for r in results:
            edt, dec = np.median(r["edt"]), np.median(r["decode"])
            share = r["decode_in_segment"] / r["segment"]
            print(f"{r['size']:>6} {r['tree']:<26} {edt:>7.3f} {dec:>9.3f} "
                  f"{median_ratio(r['decode'], r['edt']):>6.2f} {r['segment']:>10.1f} "
                  f"{r['size'] ** 2 / r['segment'] / 1e6:>6.2f} "
                  f"{r['decode_in_segment']:>16.2f} {share:>6.1%}  {r['labels']}")
            if r["old"]:
                same = "identical" if r["old_labels"] == r["labels"] else "DIFFERENT"
                print(f"{r['size']:>6} {'old decoding (reference)':<26} {edt:>7.3f} "
                      f"{np.median(r['old']):>9.3f} {median_ratio(r['old'], r['edt']):>6.2f} "
                      f"{'':>10} {'':>6} {'':>16} {'':>6}  {r['old_labels']} ({same})")
                print(f"{'':>6} {'old / new decoding':<26} {'':>7} "
                      f"{median_ratio(r['old'], r['decode']):>9.1f}x faster now")
            if not r["segment_equals_decode"]:
                print(f"{'':>6} segment's labels DIFFER from probabilities_to_labels'")
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
