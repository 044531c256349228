"""Minimal hand-written runner, the baseline for `edge-pneumo infer` (bench/bench_infer.py).

    python bench/minimal_onnx.py MODEL.onnx IMAGE [--equalize | --clahe=CLIP,TILES]

cv2 + onnxruntime only: imread grayscale, resize to 64x64 (INTER_AREA), [equalizeHist or CLAHE, as the
manifest's preprocessing says], replicate to 3 channels, float32, run, print prob.
No checks, no manifest, no threshold: the least work that gives the same probability.
"""

import sys

import cv2
import numpy as np
import onnxruntime as ort

model, image = sys.argv[1], sys.argv[2]
x = cv2.resize(cv2.imread(image, cv2.IMREAD_GRAYSCALE), (64, 64), interpolation=cv2.INTER_AREA)
if "--equalize" in sys.argv[3:]:
    x = cv2.equalizeHist(x)
for arg in sys.argv[3:]:
    if arg.startswith("--clahe="):
        clip, tiles = arg.split("=", 1)[1].split(",")
        x = cv2.createCLAHE(float(clip), (int(tiles), int(tiles))).apply(x)
x = np.repeat(x[None, :, :, None], 3, axis=3).astype(np.float32)
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
out = [
    o.name for o in sess.get_outputs() if o.shape[1:] == [1]
]  # the probability (the others feed the guard and Grad-CAM)
prob = sess.run(out, {sess.get_inputs()[0].name: x})[0]
print(f"{float(prob.reshape(-1)[-1]):.6f}")
