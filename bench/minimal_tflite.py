"""Minimal hand-written runner with LiteRT and the full-integer TFLite artifact (bench/bench_infer.py).

    python bench/minimal_tflite.py MODEL.tflite IMAGE [--equalize | --clahe=CLIP,TILES]

cv2 + ai-edge-litert only: imread grayscale, resize to 64x64 (INTER_AREA), [equalizeHist or CLAHE],
replicate to 3 channels, quantize with the input's scale/zero point, invoke, dequantize, print prob.
"""

import sys

import cv2
import numpy as np
from ai_edge_litert.interpreter import Interpreter

model, image = sys.argv[1], sys.argv[2]
x = cv2.resize(cv2.imread(image, cv2.IMREAD_GRAYSCALE), (64, 64), interpolation=cv2.INTER_AREA)
if "--equalize" in sys.argv[3:]:
    x = cv2.equalizeHist(x)
for arg in sys.argv[3:]:
    if arg.startswith("--clahe="):
        clip, tiles = arg.split("=", 1)[1].split(",")
        x = cv2.createCLAHE(float(clip), (int(tiles), int(tiles))).apply(x)
x = np.repeat(x[None, :, :, None], 3, axis=3)
interp = Interpreter(model_path=model)
interp.allocate_tensors()
inp = interp.get_input_details()[0]
out = [d for d in interp.get_output_details() if list(d["shape"]) == [1, 1]][
    0
]  # the probability (the others feed the guard and Grad-CAM)
scale, zero = inp["quantization"]
if inp["dtype"] == np.float32:
    x = x.astype(np.float32)
else:
    info = np.iinfo(inp["dtype"])
    x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(inp["dtype"])
interp.set_tensor(inp["index"], x)
interp.invoke()
y = interp.get_tensor(out["index"]).astype(np.float32)
if out["dtype"] != np.float32:
    oscale, ozero = out["quantization"]
    y = (y - ozero) * oscale
print(f"{float(y.reshape(-1)[-1]):.6f}")
