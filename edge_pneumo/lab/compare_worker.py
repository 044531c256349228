"""One row of `edge-pneumo compare`, in its own process.

Run as `python -m edge_pneumo.lab.compare_worker JOB.json`. A separate process gives each
artifact an honest peak RSS and load time, and a crash in one runtime cannot take the
whole comparison down. The job names the model, the preprocessed images (.npy) and where
to write the result (JSON).
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def run(job: dict) -> dict:
    images = np.load(job["images"])
    t0 = time.perf_counter()
    if job["kind"] == "keras":
        from edge_pneumo.training.fit import predict as keras_predict
        from edge_pneumo.training.keras_io import load_keras

        t_import = time.perf_counter()
        import tensorflow as tf  # timed apart: TensorFlow's import is not the model's load

        tf.config.threading.set_intra_op_parallelism_threads(job["threads"])
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import_s = time.perf_counter() - t_import
        km = load_keras(job["model"], record_optional=True)  # only its predictions are needed

        def predict(x):
            return keras_predict(km.model, x)
    else:
        from edge_pneumo.device.runtime import open_backend

        import_s = 0.0
        backend = open_backend(job["model"], threads=job["threads"])
        predict = backend.predict
    load_s = time.perf_counter() - t0 - import_s

    probs = np.concatenate([predict(images[i : i + 64]) for i in range(0, len(images), 64)])
    for i in range(job["warmup"]):
        predict(images[i % len(images)][None])
    times = []
    for i in range(job["runs"]):
        t = time.perf_counter()
        predict(images[i % len(images)][None])
        times.append(time.perf_counter() - t)
    return {
        "probabilities": [float(p) for p in probs],
        "load_ms": 1000 * load_s,
        "import_s": import_s,
        "latency_ms": [1000 * t for t in times],
        "peak_rss_mb": _peak_rss_mb(),
    }


def main() -> None:
    job = json.loads(open(sys.argv[1]).read())
    try:
        result = run(job)
    except Exception as e:  # reported in this artifact's row; the comparison goes on
        result = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    with open(job["result"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
