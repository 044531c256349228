"""Where the CPU time of `infer --dir` goes, stage by stage, against the hand-written loop (issue 27).

    python bench/profile_folder.py --artifact tflite_int8 [--images 2000] [--cprofile]

One process, one thread for everything (decoding and the model), CPU time (`time.process_time`:
steadier than wall on a shared machine). Each stage is one pass over the same images, with the
package's own functions, in the order `predict_many` runs them; then the whole of `predict_many`
plus writing JSON rows, and the loop's own steps (bench/folder_baseline.py: cv2.imread grey,
resize, CLAHE, channels, batches of 64, a JSON line). Milliseconds per image, medians of
--rounds passes. `--cprofile`: the whole path under cProfile, the top functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLI's entry point sets it

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as bl  # noqa: E402
from bench_folder import default_data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=default_data(), help="default: $EDGE_PNEUMO_DATA, else ../shared/...")
    ap.add_argument("--split", default="train")
    ap.add_argument("--artifact", default="tflite_int8")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cprofile", action="store_true")
    args = ap.parse_args()
    print(f"load {bl.loadavg()}", file=sys.stderr)
    rows = profile(args)
    print(f"\n`{' '.join(['python', *sys.argv])}` (load {bl.loadavg()})\n")
    print("| stage | ms/image (CPU, 1 thread) |\n|---|---|")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.3f} |")


def profile(args) -> dict[str, float]:
    import cv2
    import numpy as np

    from edge_pneumo.apps.infer import gather_paths
    from edge_pneumo.apps.rows import RowWriter
    from edge_pneumo.decoders.decode import read_bytes, read_grey
    from edge_pneumo.device.classifier import PER_TASK, Classifier

    paths = gather_paths([], args.data / args.split)[: args.images]
    clf = Classifier.load(None, artifact=args.artifact, threads=1)
    pp = clf.preprocessing
    hint = pp.min_side_hint
    n = len(paths)
    sink = open(os.devnull, "w")

    def per_image(fn) -> float:
        runs = []
        for _ in range(args.rounds):
            t = time.process_time()
            fn()
            runs.append(time.process_time() - t)
        return 1000 * statistics.median(runs) / n

    images = [read_grey(p, hint) for p in paths]
    smalls = [pp.resize(im.pixels) for im in images]
    prepared = [clf._prepare(p) for p in paths]
    ready = [p for p in prepared if hasattr(p, "x")]
    batch = np.stack([p.x for p in ready])
    chunks = [batch[i : i + 32] for i in range(0, len(batch), 32)]
    results = list(clf.predict_many(paths, decode_threads=1))
    out = {}
    out["infer: read file"] = per_image(lambda: [read_bytes(Path(p)) for p in paths])
    out["infer: read + decode (read_grey, with the colour thumbnail)"] = per_image(
        lambda: [read_grey(p, hint) for p in paths]
    )
    out["infer: resize to 64 px"] = per_image(lambda: [pp.resize(im.pixels) for im in images])
    if clf.guard is not None:
        out[f"infer: guard pixel checks ({PER_TASK} images at a time)"] = per_image(
            lambda: [
                clf.guard.check_pixels_many(images[i : i + PER_TASK], smalls[i : i + PER_TASK])
                for i in range(0, n, PER_TASK)
            ]
        )
    out["infer: CLAHE + channels"] = per_image(lambda: [pp.finish(s) for s in smalls])
    out["infer: _prepare_all, whole (decode, guard, CLAHE)"] = per_image(
        lambda: [clf._prepare_all(paths[i : i + PER_TASK]) for i in range(0, n, PER_TASK)]
    )
    out["infer: main model, batches of 32"] = per_image(lambda: [clf.backend.run(c) for c in chunks])
    if clf.view_check is not None:
        out["infer: view model, batches of 32"] = per_image(lambda: [clf.view_check.scores(c) for c in chunks])
    out["infer: _run_batch, whole (models, feature guard, calibration, results)"] = per_image(
        lambda: [clf._run_batch(prepared[i : i + 32]) for i in range(0, n, 32)]
    )
    writer = RowWriter("json", sink)
    out["infer: JSON rows (to_dict + dumps + write)"] = per_image(lambda: [writer.write(r) for r in results])
    out["infer: predict_many + JSON rows, whole (1 thread)"] = per_image(
        lambda: [writer.write(r) for r in clf.predict_many(paths, decode_threads=1)]
    )
    clahe = cv2.createCLAHE(2.0, (4, 4))

    def loop_load(p):
        x = cv2.resize(cv2.imread(p, cv2.IMREAD_GRAYSCALE), (pp.size, pp.size), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(clahe.apply(x), cv2.COLOR_GRAY2BGR)

    out["loop: imread grey + resize + CLAHE + channels"] = per_image(lambda: [loop_load(p) for p in paths])
    big = [batch[i : i + 64] for i in range(0, len(batch), 64)]
    out["loop: model (probability only), batches of 64"] = per_image(lambda: [clf.backend.predict(c) for c in big])
    out["loop: JSON line"] = per_image(
        lambda: [sink.write(json.dumps({"path": p, "probability": round(0.5, 6)}) + "\n") for p in paths]
    )
    if args.cprofile:
        pr = cProfile.Profile()
        pr.enable()
        for r in clf.predict_many(paths, decode_threads=1):
            writer.write(r)
        pr.disable()
        pstats.Stats(pr, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    return out


if __name__ == "__main__":
    main()
