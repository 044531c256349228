"""The Python API for integrators, used by every front end (CLI, server, watcher, batch).

    from edge_pneumo import Classifier
    clf = Classifier.load("exported/")          # the device's fastest artifact (see profile.py)
    r = clf.predict("x.jpeg")                   # Result(status='classified', label='PNEUMONIA', probability=0.97, ...)
    for r in clf.predict_many(paths): ...       # one Result per path, in order; r.to_dict() is the row
    r = clf.explain("x.jpeg")                   # the same, plus r.heatmap (Grad-CAM, 64x64 in [0, 1])

Each image: decode -> resize -> input guard (pixels) -> CLAHE -> model -> input guard (the
model's own features) -> calibrated probability, label and confidence band.
"""

from __future__ import annotations

import copy
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np

from edge_pneumo.decoders.decode import GreyImage, decode_bytes, read_grey
from edge_pneumo.device import tta as flip_tta
from edge_pneumo.device.manifest import ArtifactEntry, Manifest, load_manifest
from edge_pneumo.device.result import CLASSIFIED, CONFIDENT, INDETERMINATE, REJECTED, Result, failure
from edge_pneumo.device.runtime import RUNTIME_BY_SUFFIX, Backend, Outputs, default_threads, open_backend
from edge_pneumo.device.scoring import TRAINING_POPULATION, decide, effective_band
from edge_pneumo.device.tiers import resolve_model
from edge_pneumo.errors import InputImageError, InputRejected, ModelFileError

GUARD_OFF_WARNING = "input guard turned off (--no-guard): nothing checked that this is a frontal chest X-ray"


class Calibration:
    """Temperature, threshold and confidence band: the manifest's (fitted at training time on the
    hardest population train/ offers) or a site file's (`edge-pneumo calibrate`, fitted on the
    site's own labelled images, optionally with a site head on the model's features).

    `threshold`, `rule_out` and `rule_in` are on the score scale: the model's raw probability, or
    the site head's output. Below `rule_out`: no pneumonia found; at or above `rule_in`: pneumonia
    likely; between them: indeterminate. `calibrated_on` says which population all this rests on."""

    __slots__ = (
        "threshold", "temperature", "rule_out", "rule_in", "calibrated_on", "site", "head", "_band",
        "calibrated_threshold",
    )  # fmt: skip

    def __init__(
        self,
        threshold: float,
        temperature: float = 1.0,
        rule_out: float | None = None,
        rule_in: float | None = None,
        calibrated_on: str = TRAINING_POPULATION,
        site: str | None = None,
        head=None,
    ):
        self.threshold, self.temperature, self.rule_out, self.rule_in = threshold, temperature, rule_out, rule_in
        self.calibrated_on, self.site, self.head = calibrated_on, site, head
        self._band = effective_band(threshold, rule_out, rule_in)
        self.calibrated_threshold = self.calibrate(threshold)  # every row states it: computed once

    @classmethod
    def from_manifest(cls, manifest: Manifest, tta: bool = False) -> Calibration:
        """The plain operating point, or (tta=True) the one chosen on validation with flip TTA."""
        if not tta:
            c = manifest.raw.get("calibration") or {}
            return cls(manifest.threshold, float(c.get("temperature", 1.0)), c.get("rule_out"), c.get("rule_in"))
        c = manifest.raw.get("tta") or {}
        if "threshold" not in c:
            raise ModelFileError(
                f"{manifest.folder}: this export has no operating point for flip TTA (its manifest "
                "has no 'tta' section); re-export with this version, or run without --tta"
            )
        return cls(float(c["threshold"]), float(c.get("temperature", 1.0)), c.get("rule_out"), c.get("rule_in"))

    @classmethod
    def from_site(cls, site) -> Calibration:
        """A site file's calibration (device/site.py has already checked its band and artifact)."""
        c = site.calibration
        return cls(
            float(c["threshold"]),
            float(c["temperature"]),
            float(c["rule_out"]),
            float(c["rule_in"]),
            calibrated_on=site.id,
            site=site.short,
            head=site.head,
        )

    def scores(self, probability: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        """The scores the threshold applies to: the model's probabilities, or the site head's."""
        if self.head is None:
            return np.asarray(probability, np.float64)
        if features is None:
            raise ModelFileError("this site file has a head on the model's features, but the artifact gave none")
        return self.head.score(probability, features)

    def calibrate(self, p: float) -> float:
        """sigmoid(logit(p) / T): the same ranking, probabilities that mean what they say. (Scalar math, the
        same clipping as scoring.apply_temperature: once per row, numpy's per-call overhead would dominate.)"""
        if self.temperature == 1.0:
            return float(p)
        q = min(max(float(p), 1e-7), 1 - 1e-7)
        return 1.0 / (1.0 + math.exp(-math.log(q / (1 - q)) / self.temperature))

    def confidence(self, p: float) -> str:
        lo, hi = self._band
        return INDETERMINATE if lo <= p < hi else CONFIDENT

    def decision(self, p: float) -> str:
        """pneumonia / no_pneumonia / indeterminate; a decided one always agrees with p >= threshold."""
        return decide(p, *self._band)


class _Prepared:
    """An image that passed the pixel checks, ready for the model (a plain class: no dataclass
    machinery at import, on every `infer` start)."""

    __slots__ = ("path", "x", "warnings", "guard", "seconds", "content_sha256", "view_x")

    def __init__(
        self,
        path: str,
        x: np.ndarray,
        warnings: list[str],
        guard: dict,
        seconds: float,
        content_sha256: str | None = None,
        view_x: np.ndarray | None = None,
    ):
        self.path, self.x, self.warnings, self.guard = path, x, warnings, guard
        self.seconds, self.content_sha256, self.view_x = seconds, content_sha256, view_x


class _Decoded:
    """A decoded image and its resize to the model's side, waiting for the pixel checks."""

    __slots__ = ("path", "image", "small", "seconds", "digest")

    def __init__(self, path: str, image: GreyImage, small: np.ndarray, seconds: float, digest: str | None):
        self.path, self.image, self.small, self.seconds, self.digest = path, image, small, seconds, digest


class Classifier:
    """One artifact, with the preprocessing, guard, calibration and threshold its manifest states."""

    def __init__(
        self,
        backend: Backend,
        manifest: Manifest,
        entry: ArtifactEntry,
        guard=None,
        gradcam=None,
        use_guard: bool = True,
        tta: bool = False,
        site=None,
        view_check=None,
    ):
        self.backend = backend
        self.manifest = manifest
        self.entry = entry
        self.preprocessing = manifest.preprocessing
        self.class_names = manifest.class_names
        self.tta = tta
        self.site = site  # a device.site.SiteFile, or None: the manifest's calibration
        if site is not None:
            site.check_artifact(entry.name, entry.sha256, tta)
        self.calibration = Calibration.from_site(site) if site is not None else Calibration.from_manifest(manifest, tta)
        self.threshold = self.calibration.threshold
        self.guard = guard if use_guard else None
        self.view_check = view_check if use_guard else None  # device/view_check.py: frontal chest or not
        self.gradcam = gradcam
        self.model_version = str(manifest.raw.get("model_version", ""))
        self.keep_features = False  # True: classified results carry the model's features (calibrate)
        self._model_lock = threading.Lock()  # a LiteRT interpreter serves one call at a time
        self._dicom_check = None
        if self.guard is not None:
            from edge_pneumo.device.guard import check_dicom_header

            self._dicom_check = check_dicom_header

    @classmethod
    def load(
        cls,
        model: str | os.PathLike | None = None,
        *,
        artifact: str | None = None,
        threads: int | None = None,
        verify: bool = True,
        guard: bool = True,
        tta: bool = False,
        site: str | os.PathLike | None = None,
    ) -> Classifier:
        """`model`: a shipped tier's name (`seed`, `small`), an exported/ folder, or an .onnx/.tflite
        file beside its manifest.json; None: $EDGE_PNEUMO_MODEL, else `seed` (device/tiers.py).

        `artifact`: a manifest name; default: this device's fastest (its profile, else int8
        TFLite when LiteRT is installed, else int8 ONNX). The artifact's and the parameter
        file's sha256 are checked against the manifest first (`verify=False` skips it); a file
        unchanged since it was last hashed in full is not read again (device/hash_cache.py).
        `guard=False` turns the input guard off (every result then says so). `tta=True` runs
        each image and its mirror image and averages them (flip TTA: twice the model time), with
        the operating point the manifest states for it. `site`: a site file (`edge-pneumo calibrate`)
        whose calibration replaces the manifest's; it must have been made for this artifact, and
        without `artifact` the artifact it names is the one loaded.
        """
        site_file = None
        if site is not None:
            from edge_pneumo.device.site import load_site

            site_file = load_site(site)
        path = resolve_model(model)
        if path.is_dir():
            manifest = load_manifest(path)
            if artifact is None and site_file is not None and site_file.artifact_name in manifest.artifacts:
                artifact = site_file.artifact_name
            name = artifact or _preferred_artifact(manifest)
            if name not in manifest.artifacts:
                raise ModelFileError(
                    f"{path}: no artifact named '{name}' in the manifest; it has {', '.join(manifest.artifacts)}"
                )
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
        if verify:  # every start: the digests recorded while the files are unchanged (device/hash_cache.py)
            manifest.verify(entry, cached=True)
        arrays = manifest.params(verify=verify, cached=True) if guard else None
        backend = open_backend(entry.path(manifest.folder), threads or default_threads())
        guard_obj = None
        if guard:
            from edge_pneumo.device.guard import Guard

            try:
                guard_obj = Guard.from_manifest(manifest.raw["guard"], arrays, entry.name)
            except (KeyError, TypeError, ValueError) as e:
                raise ModelFileError(
                    f"{manifest.folder}: the manifest's guard section is unusable ({e}); re-run "
                    "`edge-pneumo export`, or pass --no-guard on purpose"
                ) from None
        view = None
        if guard:
            from edge_pneumo.device.view_check import ViewCheck

            view = ViewCheck.from_manifest(manifest, verify=verify, runtime=entry.runtime, cached=True)
        return cls(backend, manifest, entry, guard_obj, None, use_guard=guard, tta=tta, view_check=view, site=site_file)

    # -- one image ------------------------------------------------------------------------

    def predict(self, image: str | os.PathLike) -> Result:
        """Classify one image file (never raises for a bad image: the result says `failed`)."""
        return next(self.predict_many([image], decode_threads=1))

    def predict_bytes(self, data: bytes, name: str = "upload", content_hash: bool = True) -> Result:
        """Classify an image held in memory (an upload, a DICOM received over the network)."""
        return self._run_batch([self._prepare_bytes(data, name, content_hash)])[0]

    def explain(self, image: str | os.PathLike | bytes, name: str = "upload") -> Result:
        """`predict`, plus `result.heatmap`: Grad-CAM from this artifact's own activations."""
        prepared = self._prepare_bytes(image, name, True) if isinstance(image, bytes) else self._prepare(image)
        return self._run_batch([prepared], explain=True)[0]

    def predict_array(self, batch: np.ndarray) -> np.ndarray:
        """Raw probabilities for already preprocessed uint8 images (n, size, size, channels); no guard."""
        return self.backend.predict(batch)

    # -- many images ----------------------------------------------------------------------

    def predict_many(
        self,
        paths: Iterable[str | os.PathLike],
        batch_size: int = 32,
        decode_threads: int | None = None,
        on_result: Callable[[Result], None] | None = None,
        explain: bool = False,
    ) -> Iterator[Result]:
        """Classify many files, in order. `decode_threads` (default: every core) threads each take
        `batch_size` files at a time through every step, decoding to results (Backend.for_worker:
        LiteRT gives each thread a one-thread interpreter of its own; onnxruntime's session serves
        concurrent calls and is shared): no thread waits for another's model call. With
        `decode_threads=1`, all in this thread (no pool to start for one image). A file that cannot
        be used gives a `failed` result; the others still get theirs."""
        threads = decode_threads or default_threads()
        chunks = _chunks(paths, _task_size(paths, batch_size, threads))
        with _decoder_pool(threads) as pool:
            if pool is None:
                done: Iterable[list[Result]] = (self._classify_all(chunk, explain) for chunk in chunks)
            else:
                local = threading.local()
                spare = [self] if self.backend.threads == 1 else []  # its sessions, under its model lock

                def classify(chunk: list) -> list[Result]:
                    worker = getattr(local, "worker", None)
                    if worker is None:
                        try:
                            worker = spare.pop()  # one thread runs on this classifier's own sessions
                        except IndexError:
                            worker = self._for_worker()
                        local.worker = worker
                    return worker._classify_all(chunk, explain)

                done = _bounded_map(pool, classify, chunks, 2 * threads)
            for results in done:
                for r in results:
                    yield _notify(r, on_result)

    def _for_worker(self) -> Classifier:
        """This classifier for one thread of a folder run: the same manifest, guard and calibration,
        the model and the view check on sessions of that thread's own."""
        worker = copy.copy(self)
        worker.backend = self.backend.for_worker()
        if self.view_check is not None:
            worker.view_check = self.view_check.for_worker()
        worker._model_lock = threading.Lock()
        return worker

    # -- the steps ------------------------------------------------------------------------

    def _classify_all(self, paths: list, explain: bool = False) -> list[Result]:
        """A few files through every step: decoded, their pixels checked together, one model call."""
        return self._run_batch(self._prepare_all(paths), explain)

    def _prepare_all(self, paths: list) -> list:
        """Decode a few files, then check their pixels together."""
        hint = self.preprocessing.min_side_hint
        return self._check_all([self._decode(str(p), read_grey, (p, hint, self._dicom_check)) for p in paths])

    def _prepare(self, path) -> _Prepared | Result:
        return self._prepare_all([path])[0]

    def _prepare_bytes(self, data: bytes, name: str, content_hash: bool) -> _Prepared | Result:
        digest = _sha256_hex(data) if content_hash else None
        hint = self.preprocessing.min_side_hint
        return self._check_all([self._decode(name, decode_bytes, (data, name, hint, self._dicom_check), digest)])[0]

    def _decode(self, path: str, decode, args: tuple, digest: str | None = None) -> _Decoded | Result:
        """Decode (a file or bytes) and resize: the image for the pixel checks, or its rejected/failed result."""
        t0 = time.perf_counter()
        try:
            image = decode(*args)
        except InputRejected as e:
            return self._rejected(path, e.reason, e.check, e.details, time.perf_counter() - t0, digest=digest)
        except InputImageError as e:
            return failure(
                path, str(e), ms=1000 * (time.perf_counter() - t0), content_sha256=digest, **self._provenance()
            )
        small = self.preprocessing.resize(image.pixels)
        return _Decoded(path, image, small, time.perf_counter() - t0, digest)

    def _check_all(self, items: list) -> list:
        """The pixel checks on the decoded items, all at once; each becomes a prepared image or its
        rejected result (a result from decoding passes through), in order."""
        decoded = [d for d in items if isinstance(d, _Decoded)]
        if not decoded:
            return items
        t0 = time.perf_counter()
        verdicts = (
            self.guard.check_pixels_many([d.image for d in decoded], [d.small for d in decoded])
            if self.guard is not None
            else [None] * len(decoded)
        )
        share = (time.perf_counter() - t0) / len(decoded)
        done = iter([self._checked(d, v, share) for d, v in zip(decoded, verdicts)])
        return [next(done) if isinstance(d, _Decoded) else d for d in items]

    def _checked(self, d: _Decoded, verdict, guard_seconds: float) -> _Prepared | Result:
        """One image after the pixel checks: its model input, or its rejection."""
        t0 = time.perf_counter()
        image, small = d.image, d.small
        warnings = list(image.warnings)
        scores: dict = {}
        if image.dicom:
            scores["dicom"] = {k: v for k, v in image.dicom.items() if k != "SOPInstanceUID"}
        if verdict is None:
            warnings.append(GUARD_OFF_WARNING)
            scores["enabled"] = False
        else:
            scores.update(verdict.scores)
            if verdict.reason:
                seconds = d.seconds + guard_seconds + time.perf_counter() - t0
                return self._rejected(d.path, verdict.reason, verdict.check, scores, seconds, warnings, d.digest)
            warnings += verdict.warnings
            if verdict.inverted:
                small = 255 - small
        x = self.preprocessing.finish(small)
        view_x = None
        if self.view_check is not None:  # its own input when its preprocessing is not the model's
            view_x = self.view_check.own_input(image.pixels, verdict is not None and verdict.inverted)
        seconds = d.seconds + guard_seconds + time.perf_counter() - t0
        return _Prepared(d.path, x, warnings, scores, seconds, d.digest, view_x)

    def _run_batch(self, items: list, explain: bool = False) -> list[Result]:
        """Model + feature guard + calibration for the prepared items; rejected/failed pass through, in order."""
        ready = [p for p in items if isinstance(p, _Prepared)]
        results: dict[int, Result] = {}
        if ready:
            t0 = time.perf_counter()
            want = ("probability", "features", "conv") if explain else ("probability", "features")
            batch = np.stack([p.x for p in ready])
            with self._model_lock:  # both models: a LiteRT interpreter serves one call at a time
                out = self.backend.run(flip_tta.with_mirrors(batch) if self.tta else batch, want)
                views = (
                    self.view_check.check(batch if ready[0].view_x is None else np.stack([p.view_x for p in ready]))
                    if self.view_check is not None
                    else [(None, None)] * len(ready)
                )
            if self.tta:  # the guard and the heatmap look at the image as it came
                n = len(ready)
                out = Outputs(
                    flip_tta.combine(out.probability, n),
                    None if out.features is None else out.features[:n],
                    None if out.conv is None else out.conv[:n],
                )
            share = (time.perf_counter() - t0) / len(ready)
            scores = self.calibration.scores(out.probability, out.features)
            verdicts = (
                self.guard.check_features(out.features)
                if self.guard is not None and out.features is not None
                else [(float("nan"), None, None)] * len(ready)
            )
            for i, (p, prob, score, (dist, reason, warning)) in enumerate(
                zip(ready, out.probability, scores, verdicts)
            ):
                guard = dict(p.guard)
                if not math.isnan(dist):
                    guard["features"] = round(dist, 3)
                ms = 1000 * (p.seconds + share)
                view_score, view_reason = views[i]
                if view_score is not None:
                    guard["view"] = round(view_score, 2)
                if view_reason:
                    results[id(p)] = self._rejected(
                        p.path, view_reason, "view", guard, ms / 1000, p.warnings, p.content_sha256
                    )
                    continue
                if reason:
                    results[id(p)] = self._rejected(
                        p.path, reason, "features", guard, ms / 1000, p.warnings, p.content_sha256
                    )
                    continue
                r = self._classified(
                    p, float(prob), float(score), guard, ms, p.warnings + ([warning] if warning else [])
                )
                if self.keep_features and out.features is not None:
                    r.features = out.features[i]
                if explain and out.conv is not None:
                    r.heatmap = self._heatmap(out.conv[i], out.features[i])
                results[id(p)] = r
        return [results[id(p)] if isinstance(p, _Prepared) else p for p in items]

    def _classified(
        self, p: _Prepared, prob: float, score: float, guard: dict, ms: float, warnings: list[str]
    ) -> Result:
        """`prob`: the model's output; `score`: what the threshold applies to (prob, or the site head's)."""
        cal = self.calibration
        label = self.class_names[1] if score >= cal.threshold else self.class_names[0]
        return Result(
            path=p.path,
            status=CLASSIFIED,
            label=label,
            decision=cal.decision(score),
            calibrated_on=cal.calibrated_on,
            probability=cal.calibrate(score),
            confidence=cal.confidence(score),
            warnings=warnings,
            raw_probability=prob,
            threshold=cal.calibrated_threshold,
            guard=guard,
            ms=ms,
            content_sha256=p.content_sha256,
            **self._provenance(),
        )

    def _rejected(self, path, reason, check, scores, seconds, warnings=None, digest=None) -> Result:
        guard = dict(scores or {})
        if check:
            guard["check"] = check
        return Result(
            path=str(path),
            status=REJECTED,
            reason=reason,
            warnings=list(warnings or []),
            guard=guard,
            ms=1000 * seconds,
            content_sha256=digest,
            **self._provenance(),
        )

    def _provenance(self) -> dict:
        return {
            "artifact": self.entry.name,
            "sha256": self.entry.sha256[:16],
            "model_version": self.model_version,
            "tta": flip_tta.NAME if self.tta else None,
            "site": self.calibration.site,
        }

    def _heatmap(self, conv: np.ndarray, features: np.ndarray) -> np.ndarray:
        from edge_pneumo.device.explain import gradcam_map

        if self.gradcam is None:
            self.gradcam = (*self.manifest.gradcam_params(self.entry.name), self.manifest.cam_geometry())
        channel_weights, w2, geometry = self.gradcam
        return gradcam_map(conv, features, channel_weights, w2, size=self.preprocessing.size, geometry=geometry)


def _sha256_hex(data: bytes) -> str:
    """An upload's content hash; hashlib (OpenSSL: ~4 ms and ~3.6 MB to load) only when one is asked for."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _preferred_artifact(manifest: Manifest) -> str:
    from edge_pneumo.device.device_profile import preferred_artifact

    return preferred_artifact(manifest)


@contextmanager
def _decoder_pool(threads: int):
    """A thread pool for decoding, or None for one thread (imported only when needed)."""
    if threads <= 1:
        yield None
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        yield pool


def _task_size(paths: Iterable, batch_size: int, threads: int) -> int:
    """Files per task: `batch_size`, or fewer when a short list would leave a thread without any."""
    if threads > 1 and hasattr(paths, "__len__"):
        return max(1, min(batch_size, math.ceil(len(paths) / threads)))
    return batch_size


def _chunks(items: Iterable, n: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


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
