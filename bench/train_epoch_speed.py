"""Where a student epoch's time goes, and what a faster epoch could buy (issue 13: 30 epochs
already take about 10 minutes on 2 cores, the student run's budget).

    python bench/train_epoch_speed.py --data ../shared/data/chest_xray --out bench/results_train_speed.json

One epoch of the seed CNN on all 5,216 training images (the full-train refit's size), with the
shipped recipe's pipeline and with variants of it. Every variant builds a fresh model and runs
--epochs epochs; the first is graph building and warm-up, the median of the others is reported.
Diagnostic only: the variants are assembled here from `training.fit`'s parts; the package's
training path is not changed.
Rows:
- shipped: `fit`'s tf.data pipeline (augmentation map, 1 call at a time), Adam, cosine decay;
- no augmentation: the same without the augmentation map (the floor a faster augmenter could reach);
- parallel augmentation: the map with 2 parallel calls, order kept;
- XLA: the shipped pipeline, the model compiled with jit_compile=True.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("bench/results_train_speed.json"))
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()

    import numpy as np
    import tensorflow as tf

    from edge_pneumo.device.preprocess import Preprocessing
    from edge_pneumo.lab.dataset import discover, find_split, load_images
    from edge_pneumo.training import fit as F
    from edge_pneumo.training.model import build_augmenter, build_seed_model

    train = load_images(discover(find_split(args.data, "train")), Preprocessing(intensity="clahe"))
    x, y = train.x, train.y
    recipe = F.Recipe()
    weights = F.class_weights(y)
    steps = math.ceil(len(x) / recipe.batch_size)

    def pipeline(parallel: int | None, augment: bool):
        sw = np.array([weights[int(c)] for c in y], np.float32)
        ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.float32), sw))
        ds = ds.shuffle(len(x), seed=0, reshuffle_each_iteration=True).batch(recipe.batch_size)
        if augment:
            aug = build_augmenter(recipe.augment, 0)
            ds = ds.map(
                lambda a, b, c: (tf.clip_by_value(aug(tf.cast(a, tf.float32), training=True), 0.0, 255.0), b, c),
                num_parallel_calls=parallel or 1,
                deterministic=True,
            )
        else:
            ds = ds.map(lambda a, b, c: (tf.cast(a, tf.float32), b, c))
        return ds.prefetch(2)

    variants = {
        "shipped": dict(ds=lambda: F._dataset(x, y, recipe, 0, weights), jit=False),
        "no augmentation": dict(ds=lambda: pipeline(None, augment=False), jit=False),
        "parallel augmentation (2 calls)": dict(ds=lambda: pipeline(2, augment=True), jit=False),
        "XLA (jit_compile)": dict(ds=lambda: F._dataset(x, y, recipe, 0, weights), jit=True),
    }
    rows = []
    for name, v in variants.items():
        F.set_determinism(0)
        model = build_seed_model(tuple(x.shape[1:]))
        F._compile(model, recipe, steps, 30)
        if v["jit"]:
            model.compile(optimizer=model.optimizer, loss=model.loss, metrics=[F._hard_accuracy], jit_compile=True)
        ds = v["ds"]()
        times = []
        try:
            for _ in range(args.epochs):
                t0 = time.perf_counter()
                model.fit(ds, epochs=1, verbose=0)
                times.append(time.perf_counter() - t0)
            row = {
                "variant": name,
                "first_epoch_s": round(times[0], 2),
                "epoch_s": round(statistics.median(times[1:] or times), 2),
                "images_per_s": round(len(x) / statistics.median(times[1:] or times), 1),
                "jit_compile": bool(getattr(model, "jit_compile", False)),
            }  # Keras falls back when it cannot
        except Exception as e:  # a variant that cannot run here is reported, not fatal
            row = {"variant": name, "error": f"{type(e).__name__}: {e}"[:300]}
        print(json.dumps(row), flush=True)
        rows.append(row)

    result = {
        "images": len(x),
        "batch_size": recipe.batch_size,
        "epochs_timed": args.epochs - 1,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "tensorflow": tf.__version__},
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    md = [
        "# Student epoch time (bench/train_epoch_speed.py)",
        "",
        f"{len(x)} training images, batch {recipe.batch_size}, {result['machine']['cpus']} CPUs, "
        f"TensorFlow {tf.__version__}; median of {args.epochs - 1} epoch(s) after the first.",
        "",
        "| variant | epoch s | images/s | first epoch s | XLA in effect |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['variant']} | {r.get('epoch_s', '-')} | {r.get('images_per_s', '-')} | "
            f"{r.get('first_epoch_s', r.get('error', '-'))} | {'yes' if r.get('jit_compile') else 'no'} |"
        )
    args.out.with_name("RESULTS_train_speed.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
