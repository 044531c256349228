"""edge-pneumo: pneumonia screening on chest X-rays for CPU-only edge devices.

The public API is small: `Classifier` (load an exported model, classify files),
`Result` (one row per input) and `Preprocessing` (the one input contract).
Training and export live in `edge_pneumo.training` (the `train` extra); nothing
reachable from here imports TensorFlow. Names load lazily so `edge-pneumo --help` is fast.
"""

__version__ = "0.1.0"
__all__ = ["Classifier", "Preprocessing", "Result", "__version__"]

_LAZY = {"Classifier": "device.classifier", "Preprocessing": "device.preprocess", "Result": "device.result"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'edge_pneumo' has no attribute {name!r}")
