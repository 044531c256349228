"""The Python API for integrators, used by the CLI itself.

    from edge_pneumo import Classifier
    clf = Classifier.load("exported/")          # the manifest's default artifact (int8 ONNX)
    p = clf.predict("x.jpeg")                   # Prediction(label='PNEUMONIA', probability=0.97, ...)
    for r in clf.predict_many(paths): ...       # Prediction or Failure per path, in order
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputImageError, ModelFileError
from .formats import RUNTIME_BY_SUFFIX
from .manifest import ArtifactEntry, Manifest, default_model_folder, load_manifest
from .runtime import Backend, default_threads, open_backend


@dataclass
class Prediction:
    path: str
    label: str
    probability: float  # of PNEUMONIA
    threshold: float
    artifact: str
    ms: float  # decode + preprocess + this image's share of the model call
    warnings: list[str] = field(default_factory=list)

    ok = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["probability"] = round(self.probability, 6)
        d["ms"] = round(self.ms, 3)
        d["damaged"] = bool(self.warnings)
        return d


@dataclass
class Failure:
    path: str
    error: str

    ok = False

    def to_dict(self) -> dict:
        return {"path": self.path, "error": self.error}


class Classifier:
    """One artifact, with the preprocessing and threshold its manifest states."""

    def __init__(self, backend: Backend, manifest: Manifest, entry: ArtifactEntry):
        self.backend = backend
        self.manifest = manifest
        self.entry = entry
        self.preprocessing = manifest.preprocessing
        self.threshold = manifest.threshold
        self.class_names = manifest.class_names

    @classmethod
    def load(
        cls,
        model: str | os.PathLike | None = None,
        *,
        artifact: str | None = None,
        threads: int | None = None,
        verify: bool = True,
    ) -> "Classifier":
        """`model`: an exported/ folder, or an .onnx/.tflite file beside its manifest.json.

        The artifact's sha256 is checked against the manifest first (`verify=False` skips it).
        """
        path = Path(model) if model is not None else default_model_folder()
        if path.is_dir():
            manifest = load_manifest(path)
            name = artifact or manifest.default_artifact
            if name not in manifest.artifacts:
                raise ModelFileError(f"{path}: no artifact named '{name}' in the manifest; it has {', '.join(manifest.artifacts)}")
            entry = manifest.artifacts[name]
        elif path.suffix.lower() in RUNTIME_BY_SUFFIX:
            if not path.exists():
                raise ModelFileError(f"{path}: model file not found")
            manifest = load_manifest(path.parent)
            entry = manifest.entry_for_file(path)
            if entry is None:
                raise ModelFileError(
                    f"{path}: not described by {path.parent / 'manifest.json'}, so its input contract is unknown; "
                    "export it with `edge-pneumo export`"
                )
        elif path.exists():
            raise ModelFileError(f"{path}: not a model file; expected .onnx or .tflite, or an exported/ folder")
        else:
            raise ModelFileError(f"{path}: no such model file or folder")
        if verify:
            manifest.verify(entry)
        backend = open_backend(entry.path(manifest.folder), threads or default_threads())
        return cls(backend, manifest, entry)

    def _result(self, path: str, p: float, ms: float, warnings: list[str]) -> Prediction:
        label = self.class_names[1] if p >= self.threshold else self.class_names[0]
        return Prediction(path, label, float(p), self.threshold, self.entry.file, ms, warnings)

    def predict(self, image: str | os.PathLike) -> Prediction:
        """Classify one image file; raises InputImageError if the file cannot be used."""
        t0 = time.perf_counter()
        x, warnings = self.preprocessing.load(image)
        p = float(self.backend.predict(x[None])[0])
        return self._result(str(image), p, 1000 * (time.perf_counter() - t0), warnings)

    def predict_array(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for already preprocessed uint8 images (n, size, size, channels)."""
        return self.backend.predict(batch)

    def predict_many(
        self,
        paths: Iterable[str | os.PathLike],
        batch_size: int = 32,
        decode_threads: int | None = None,
        on_result: Callable[[Prediction | Failure], None] | None = None,
    ) -> Iterator[Prediction | Failure]:
        """Classify many files, in order: decoding runs on a thread pool while the model runs
        batches (with `decode_threads=1`, in this thread: no pool to start for one image).
        A file that cannot be used yields a Failure; the others still get results."""
        threads = decode_threads or default_threads()

        def decode(p):
            t0 = time.perf_counter()
            try:
                x, warnings = self.preprocessing.load(p)
                return str(p), x, warnings, time.perf_counter() - t0
            except InputImageError as e:
                return str(p), e, [], 0.0

        def flush(pending):
            if not pending:
                return
            t0 = time.perf_counter()
            probs = self.backend.predict(np.stack([x for _, x, _, _ in pending]))
            share = (time.perf_counter() - t0) / len(pending)
            for (p, _, warnings, dt), prob in zip(pending, probs):
                yield self._result(p, float(prob), 1000 * (dt + share), warnings)

        with _decoder_pool(threads) as pool:
            decoded = map(decode, paths) if pool is None else _bounded_map(pool, decode, paths, window=8 * batch_size)
            pending: list = []
            # Ramp up: the first model calls take 4, 8, 16... images, so the model starts while
            # the decoders fill the pipeline instead of waiting for a whole first batch.
            target = min(batch_size, 4)
            # Results come out in input order: a failure waits until the batch before it is out.
            for p, x, warnings, dt in decoded:
                if isinstance(x, InputImageError):
                    for r in flush(pending):
                        yield _notify(r, on_result)
                    pending = []
                    yield _notify(Failure(p, str(x)), on_result)
                    continue
                pending.append((p, x, warnings, dt))
                if len(pending) >= target:
                    for r in flush(pending):
                        yield _notify(r, on_result)
                    pending = []
                    target = min(batch_size, 2 * target)
            for r in flush(pending):
                yield _notify(r, on_result)


@contextmanager
def _decoder_pool(threads: int):
    """A thread pool for decoding, or None for one thread (imported only when needed)."""
    if threads <= 1:
        yield None
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        yield pool


def _bounded_map(pool, fn, items, window: int):
    """pool.map that keeps at most `window` items in flight (a huge folder does not fill memory)
    and keeps the pool busy: a new item is submitted each time the oldest one is taken."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _notify(result, callback):
    if callback:
        callback(result)
    return result
