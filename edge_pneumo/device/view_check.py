"""The view check: is this a frontal chest radiograph, or a hand, a knee, a lateral chest...?

Radiographs of other body parts pass every pixel statistic of the guard (they are grey,
smooth, X-ray-like), and the feature check moves with the pneumonia model's weights. So a
tiny CNN of its own (`training/view_fit.py`, ~17 k weights), independent of those weights,
scores the model's own input (resized, CLAHE, one channel) for a whole batch at once; below
the manifest's `refuse_below` the image is rejected. Its files, sha256 and outputs on the
probe inputs live in the manifest's `view_check` section; a manifest without one runs
without the check (older exports), and `verify` checks it when present.

A model tier with another input (the 128 px `small` tier) carries the same view check with its
own preprocessing (`input.preprocessing`, the 64 px one it was fitted on): the Classifier then
makes the view input from the decoded image through that preprocessing, so the check sees
exactly what it was fitted on, whatever the pneumonia model reads.
"""

from __future__ import annotations

import numpy as np

from edge_pneumo.device.manifest import Manifest, sha256_cached, sha256_of
from edge_pneumo.errors import IntegrityError, MissingRuntimeError, ModelFileError

SECTION = "view_check"
REASON = (
    "not a frontal chest X-ray: a radiograph, but not a frontal chest view (another body part, a lateral "
    "view or another kind of image; view score {score:.1f} < {limit:.1f})"
)
REPRODUCE_TOLERANCE = 0.05  # logits: |drift from the outputs recorded at export| <= 0.05 * (1 + |logit|)


class ViewCheck:
    """One view artifact and its limit; `scores(batch)` -> logits, `check(batch)` -> verdicts."""

    def __init__(self, backend, refuse_below: float, size: int, name: str, preprocessing=None):
        self.backend, self.refuse_below, self.size, self.name = backend, refuse_below, size, name
        self.preprocessing = preprocessing  # its own input preprocessing, when not the model's (else None)

    def for_worker(self) -> ViewCheck:
        """The same check for one more thread of a folder run (runtime.Backend.for_worker)."""
        return ViewCheck(self.backend.for_worker(), self.refuse_below, self.size, self.name, self.preprocessing)

    def own_input(self, grey: np.ndarray, inverted: bool) -> np.ndarray | None:
        """The view input (s, s) made from a decoded grey image, when this check has its own
        preprocessing; None when it reads the model's input."""
        if self.preprocessing is None:
            return None
        small = self.preprocessing.resize(grey)
        if inverted:
            small = 255 - small
        return self.preprocessing.finish(small)[..., 0]

    @classmethod
    def from_manifest(
        cls,
        manifest: Manifest,
        verify: bool = True,
        artifact: str | None = None,
        runtime: str | None = None,
        cached: bool = False,
    ) -> ViewCheck | None:
        """The manifest's view check, or None when the export has none: `artifact`, else a float32
        file for `runtime` (the pneumonia artifact's: one runtime loaded, not two), else the default.
        `cached`: its sha256 check may reuse the digest recorded while the file is unchanged (hash_cache.py)."""
        section = manifest.raw.get(SECTION)
        if not section:
            return None
        from edge_pneumo.device.runtime import open_backend

        try:
            entry = artifact_entry(section, artifact or _for_runtime(section, runtime))
            path = manifest.folder / entry["file"]
            if verify:
                check_file(path, entry["sha256"], cached)
            backend = open_backend(path, threads=1)  # ~17 k weights: more threads only add overhead
            own = section["input"].get("preprocessing")
            if own is not None:
                from edge_pneumo.device.preprocess import Preprocessing

                own = Preprocessing.from_dict(own)
                own = None if own == manifest.preprocessing else own
            size = int(section["input"]["size"])
            return cls(backend, float(section["refuse_below"]), size, entry["name"], own)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(
                f"{manifest.folder}: the manifest's {SECTION} section is unusable ({type(e).__name__}: {e}); "
                "re-run `edge-pneumo train-view`, or pass --no-guard on purpose"
            ) from None

    def scores(self, grey: np.ndarray) -> np.ndarray:
        """Logits (n,) for grey inputs (n, s, s) or model inputs (n, s, s, c): the first channel is used."""
        if grey.ndim == 4:
            grey = grey[..., 0]
        if grey.shape[1:] != (self.size, self.size):
            import cv2

            grey = np.stack([cv2.resize(g, (self.size, self.size), interpolation=cv2.INTER_AREA) for g in grey])
        return self.backend.run(np.ascontiguousarray(grey[..., None]), ("probability",)).probability

    def check(self, grey: np.ndarray) -> list[tuple[float, str | None]]:
        """Per image: (score, rejection reason or None)."""
        out = []
        for s in self.scores(grey):
            s = float(s)
            out.append((s, REASON.format(score=s, limit=self.refuse_below) if s < self.refuse_below else None))
        return out


def _for_runtime(section: dict, runtime: str | None) -> str | None:
    for entry in section["artifacts"]:
        if runtime and entry.get("runtime") == runtime and entry.get("precision") == "float32":
            return entry["name"]
    return None


def artifact_entry(section: dict, name: str | None = None) -> dict:
    name = name or section["default_artifact"]
    for entry in section["artifacts"]:
        if entry["name"] == name:
            return entry
    raise KeyError(f"no view artifact named {name!r}")


def check_file(path, sha256: str, cached: bool = False) -> None:
    if not path.is_file():
        raise ModelFileError(
            f"{path}: view-check model listed in the manifest is missing; run `edge-pneumo train-view`"
        )
    if (sha256_cached if cached else sha256_of)(path) != sha256:
        raise IntegrityError(f"{path}: sha256 does not match the manifest; the file was changed after export")


def verify_rows(manifest: Manifest, probe: np.ndarray) -> list[dict]:
    """`verify`'s rows for the view artifacts: present, unchanged, and reproducing the logits
    recorded at export on the probe inputs (n, s, s, c)."""
    section = manifest.raw.get(SECTION)
    rows = []
    for entry in (section or {}).get("artifacts", []):
        row = {
            "name": entry.get("name", "?"),
            "file": entry.get("file", "-"),
            "runtime": entry.get("runtime", "-"),
            "precision": entry.get("precision", "-"),
            "status": "ok",
            "notes": [],
        }
        rows.append(row)
        try:
            view = ViewCheck.from_manifest(manifest, verify=True, artifact=row["name"])
            if view.preprocessing is not None:  # the probe inputs as its own preprocessing makes them
                from edge_pneumo.device.probe_inputs import verify_inputs

                probe = verify_inputs(view.preprocessing)
            got = view.scores(probe)
        except MissingRuntimeError as e:
            row["status"] = "skipped"
            row["notes"].append(str(e).split(": ", 1)[-1])
            continue
        except (ModelFileError, IntegrityError) as e:
            row["status"] = "FAILED"
            row["notes"].append(str(e))
            continue
        recorded = np.asarray(entry.get("verify_outputs", []), np.float32)
        if recorded.shape != got.shape:
            row["status"] = "FAILED"
            row["notes"].append("no outputs recorded at export for the probe inputs; re-run `edge-pneumo train-view`")
            continue
        drift = float(np.max(np.abs(got - recorded) / (1 + np.abs(recorded))))
        row["max_drift_from_export"] = drift
        if drift > REPRODUCE_TOLERANCE:
            row["status"] = "FAILED"
            row["notes"].append(
                f"view scores differ from those recorded at export by {drift:.2e} (> {REPRODUCE_TOLERANCE}): "
                "broken runtime build?"
            )
        else:
            row["notes"].append(f"view check, refuses below {float(section['refuse_below']):.2f}")
    return rows
