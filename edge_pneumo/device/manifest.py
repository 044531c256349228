"""`manifest.json`: the contract between export and the device.

It states, once, the preprocessing, class names and decision threshold, and for each
artifact its file, sha256, input/output and validation figures. The runner trusts
nothing that the manifest does not describe.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edge_pneumo import jsonout
from edge_pneumo.device.hash_cache import sha256_cached, sha256_of  # noqa: F401  (sha256_of: re-exported)
from edge_pneumo.device.preprocess import Preprocessing
from edge_pneumo.device.tiers import MODEL_ENV, resolve_model  # noqa: F401 (MODEL_ENV: its old home)
from edge_pneumo.errors import IntegrityError, ModelFileError

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 2  # 2: guard, calibration, model_version, parameter file, three outputs (+ optional "model", "cam")


class ArtifactEntry:
    """One artifact of the manifest; `raw` is the whole entry as written. (Plain classes here and in
    the rest of the runtime path: each @dataclass costs ~0.5-1 ms at import, on every `infer` start.)"""

    __slots__ = ("name", "file", "runtime", "precision", "sha256", "size_bytes", "raw")

    def __init__(self, name: str, file: str, runtime: str, precision: str, sha256: str, size_bytes: int, raw: dict):
        self.name, self.file, self.runtime, self.precision = name, file, runtime, precision
        self.sha256, self.size_bytes, self.raw = sha256, size_bytes, raw

    def path(self, folder: Path) -> Path:
        return folder / self.file


class Manifest:
    """The parsed manifest of an exported folder (`raw`: the JSON as written)."""

    def __init__(
        self,
        folder: Path,
        class_names: tuple[str, str],
        threshold: float,
        preprocessing: Preprocessing,
        artifacts: dict[str, ArtifactEntry],
        default_artifact: str,
        raw: dict,
    ):
        self.folder, self.class_names, self.threshold = folder, class_names, threshold
        self.preprocessing, self.artifacts, self.default_artifact, self.raw = (
            preprocessing,
            artifacts,
            default_artifact,
            raw,
        )

    def entry_for_file(self, path: Path) -> ArtifactEntry | None:
        for entry in self.artifacts.values():
            if entry.file == path.name:
                return entry
        return None

    def params(self, verify: bool = True, cached: bool = False):
        """The parameter file's arrays (guard statistics, Grad-CAM weights), checked against its sha256
        (`cached`: the digest recorded while the file's stat is unchanged, device/hash_cache.py)."""
        info = self.raw.get("params_file")
        if not info:
            raise ModelFileError(
                f"{self.folder / MANIFEST_NAME}: no parameter file (guard, explanation); re-run `edge-pneumo export`"
            )
        path = self.folder / info["file"]
        if not path.is_file():
            raise ModelFileError(
                f"{path}: parameter file listed in the manifest is missing; run `edge-pneumo export` again"
            )
        if verify and (sha256_cached if cached else sha256_of)(path) != info["sha256"]:
            raise IntegrityError(f"{path}: sha256 does not match the manifest; the file was changed after export")
        return read_params(path, info.get("arrays", {}))

    def gradcam_params(self, artifact: str) -> tuple:
        """(channel weights (c, k), output weights (k,)) of one artifact's head, for Grad-CAM."""
        arrays = self.params(verify=False)
        try:
            return arrays[f"{artifact}/gradcam_channel_weights"], arrays[f"{artifact}/head_w2"]
        except KeyError:
            raise ModelFileError(
                f"{self.folder}: no Grad-CAM weights for {artifact}; re-run `edge-pneumo export`"
            ) from None

    def cam_geometry(self):
        """Where the Grad-CAM grid sits on the model input (the "cam" section; the seed's without one)."""
        from edge_pneumo.device.explain import CamGeometry

        try:
            return CamGeometry.from_manifest(self.raw)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"{self.folder}: unusable 'cam' section ({e}); re-run `edge-pneumo export`") from None

    def verify(self, entry: ArtifactEntry, cached: bool = False) -> None:
        """Raise unless the artifact exists and its bytes hash to the manifest's sha256 (`cached`: a
        start's check, which reuses the digest recorded while the file's stat is unchanged, hash_cache.py;
        `edge-pneumo verify` reads every byte)."""
        path = entry.path(self.folder)
        if not path.is_file():
            raise ModelFileError(
                f"{path}: artifact listed in {self.folder / MANIFEST_NAME} is missing; run `edge-pneumo export` again"
            )
        actual = sha256_cached(path) if cached else sha256_of(path)
        if actual != entry.sha256:
            raise IntegrityError(
                f"{path}: sha256 {actual[:12]}... does not match the manifest ({entry.sha256[:12]}...); "
                "the file was changed after export. Restore it, re-export, or pass --no-verify to run it anyway"
            )


def load_manifest(folder: str | os.PathLike) -> Manifest:
    """Read and check `folder/manifest.json`; ModelFileError with the fix when it is unusable."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(
            f"{folder}: no {MANIFEST_NAME} here; point --model at an exported/ folder or a model file beside one"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: not a readable manifest ({e})") from None
    try:
        if raw.get("schema_version") != SCHEMA_VERSION:
            raise ModelFileError(
                f"{path}: schema_version {raw.get('schema_version')!r}, this edge-pneumo reads "
                f"{SCHEMA_VERSION}; re-export the model with this version (`edge-pneumo export`)"
            )
        artifacts = {
            a["name"]: ArtifactEntry(
                a["name"], a["file"], a["runtime"], a["precision"], a["sha256"], int(a["size_bytes"]), a
            )
            for a in raw["artifacts"]
        }
        class_names = tuple(raw["class_names"])
        if len(class_names) != 2:
            raise ModelFileError(f"{path}: expected two class names, found {list(class_names)}")
        default = raw.get("default_artifact") or next(iter(artifacts), "")
        return Manifest(
            folder=folder,
            class_names=class_names,  # type: ignore[arg-type]
            threshold=float(raw["threshold"]),
            preprocessing=Preprocessing.from_dict(raw["preprocessing"]),
            artifacts=artifacts,
            default_artifact=default,
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(
            f"{path}: malformed manifest ({type(e).__name__}: {e}); re-run `edge-pneumo export`"
        ) from None


def write_params(path: Path, arrays: dict) -> dict:
    """Arrays -> one raw little-endian float32 file; returns the index the manifest keeps.

    Plain bytes and an index rather than .npz: reading it needs no zipfile (about 1 MB less
    resident memory on every `infer` start, which counts on a Pi)."""
    import numpy as np

    index, offset = {}, 0
    with open(path, "wb") as f:
        for name in sorted(arrays):
            a = np.ascontiguousarray(arrays[name], dtype="<f4")
            f.write(a.tobytes())
            index[name] = {"offset": offset, "shape": list(a.shape)}
            offset += a.nbytes
    return index


def read_params(path: Path, index: dict) -> dict:
    import numpy as np

    try:
        data = path.read_bytes()
        out = {}
        for name, e in index.items():
            count = int(np.prod(e["shape"])) if e["shape"] else 1
            out[name] = np.frombuffer(data, "<f4", count, int(e["offset"])).reshape(e["shape"])
        return out
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelFileError(f"{path}: not a readable parameter file ({e}); re-run `edge-pneumo export`") from None


def write_manifest(folder: Path, manifest: dict) -> Path:
    """Write atomically: a reader never sees half a manifest."""
    path = folder / MANIFEST_NAME
    tmp = folder / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(jsonout.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def default_model_folder() -> Path:
    """The default model's folder (or file): $EDGE_PNEUMO_MODEL, else the shipped `seed` tier
    (tiers.resolve_model has the rules)."""
    return resolve_model(None)
