"""The folder baseline: a hand-written loop, the floor `edge-pneumo infer --dir` is measured against.

    python bench/folder_baseline.py --models exported --runtime tflite|onnx --dir DIR --output FILE

cv2 decode (grey) on 2 threads, the manifest's preprocessing (resize to its size with INTER_AREA,
its intensity step, the grey plane repeated into its channels), batches of 64 through LiteRT or
onnxruntime on the same int8 artifact `infer` runs, one JSON line per image ({"path", "probability"}:
the model's raw output). No guard, no calibration, no hashes, no checks: the least work that gives
the same probabilities. Imports nothing from edge_pneumo (bench/bench_folder.py runs it).
"""

import argparse
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

SUFFIXES = {".jpg", ".jpeg", ".png"}
ARTIFACT = {"tflite": "tflite_int8", "onnx": "onnx_int8"}

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--models", type=Path, default=Path("exported"))
ap.add_argument("--runtime", choices=sorted(ARTIFACT), default="tflite")
ap.add_argument("--dir", type=Path, required=True)
ap.add_argument("--output", type=Path, required=True)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--batch", type=int, default=64)
args = ap.parse_args()

manifest = json.loads((args.models / "manifest.json").read_text())
pp = manifest["preprocessing"]
size, channels = int(pp["size"]), int(pp.get("channels", 3))
model_file = str(args.models / next(a["file"] for a in manifest["artifacts"] if a["name"] == ARTIFACT[args.runtime]))
cv2.setNumThreads(1)
local = threading.local()


def intensity(x):
    if pp.get("intensity") == "equalize":
        return cv2.equalizeHist(x)
    if pp.get("intensity") == "clahe":
        clahe = getattr(local, "clahe", None)
        if clahe is None:
            c = pp.get("clahe", {"clip_limit": 2.0, "tile_grid": [4, 4]})
            clahe = local.clahe = cv2.createCLAHE(float(c["clip_limit"]), tuple(c["tile_grid"]))
        return clahe.apply(x)
    return x


def load(path):
    x = cv2.resize(cv2.imread(path, cv2.IMREAD_GRAYSCALE), (size, size), interpolation=cv2.INTER_AREA)
    x = intensity(x)
    return cv2.cvtColor(x, cv2.COLOR_GRAY2BGR) if channels == 3 else x[:, :, None]


if args.runtime == "tflite":
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=model_file, num_threads=args.threads)
    inp = interp.get_input_details()[0]
    batch_now = [None]

    def run(x):
        if batch_now[0] != len(x):
            interp.resize_tensor_input(inp["index"], [len(x), size, size, channels])
            interp.allocate_tensors()
            batch_now[0] = len(x)
        d = interp.get_input_details()[0]
        if d["dtype"] != np.uint8:  # uint8 input with scale 1/255: raw pixels feed straight in
            scale, zero = d["quantization"]
            info = np.iinfo(d["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(d["dtype"])
        interp.set_tensor(d["index"], x)
        interp.invoke()
        out = next(o for o in interp.get_output_details() if list(o["shape"][1:]) == [1])
        y = interp.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] != np.float32:
            y = (y - out["quantization"][1]) * out["quantization"][0]
        return y.reshape(-1)

else:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # decoders share the cores
    sess = ort.InferenceSession(model_file, sess_options=opts, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    in_dtype = np.uint8 if sess.get_inputs()[0].type == "tensor(uint8)" else np.float32
    out_name = next(o.name for o in sess.get_outputs() if o.shape[1:] == [1])

    def run(x):
        return sess.run([out_name], {in_name: x.astype(in_dtype)})[0].reshape(-1)


paths = sorted(str(p) for p in args.dir.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
chunks = [paths[i : i + args.batch] for i in range(0, len(paths), args.batch)]
with open(args.output, "w") as out, ThreadPoolExecutor(args.threads) as pool:
    ahead = [pool.submit(load, p) for p in chunks[0]] if chunks else []
    for i, chunk in enumerate(chunks):
        ready, ahead = ahead, [pool.submit(load, p) for p in chunks[i + 1]] if i + 1 < len(chunks) else []
        probs = run(np.stack([f.result() for f in ready]))  # the next batch decodes meanwhile
        out.write(
            "".join(json.dumps({"path": p, "probability": round(float(q), 6)}) + "\n" for p, q in zip(chunk, probs))
        )
print(f"{len(paths)} images", file=sys.stderr)
