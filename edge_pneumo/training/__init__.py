"""Training side: TensorFlow/Keras and tf2onnx live here and only here.

Installed with the `train` extra. This package may import the runtime side
(`edge_pneumo.device.preprocess`, `edge_pneumo.lab.dataset`, ...); the runtime side never imports this.
"""

import os as _os
import warnings as _warnings

# TensorFlow's C++ start-up chatter (oneDNN, CPU features, CUDA) is noise for our users.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_warnings.filterwarnings("ignore", message=".*shuffle=True.*was passed.*")
