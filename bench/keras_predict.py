"""The TensorFlow/Keras path, for comparison with `edge-pneumo infer` (bench/bench_infer.py).

    python bench/keras_predict.py MODEL.keras IMAGE [--equalize | --clahe=CLIP,TILES]

Same preprocessing as the minimal scripts, then keras.models.load_model + predict on the
float model. Needs the `train` extra (tensorflow-cpu).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import keras
import numpy as np

model_path, image = sys.argv[1], sys.argv[2]
x = cv2.resize(cv2.imread(image, cv2.IMREAD_GRAYSCALE), (64, 64), interpolation=cv2.INTER_AREA)
if "--equalize" in sys.argv[3:]:
    x = cv2.equalizeHist(x)
for arg in sys.argv[3:]:
    if arg.startswith("--clahe="):
        clip, tiles = arg.split("=", 1)[1].split(",")
        x = cv2.createCLAHE(float(clip), (int(tiles), int(tiles))).apply(x)
x = np.repeat(x[None, :, :, None], 3, axis=3).astype(np.float32)
model = keras.models.load_model(model_path, compile=False)
prob = model.predict(x, verbose=0)
print(f"{float(np.asarray(prob).reshape(-1)[-1]):.6f}")
