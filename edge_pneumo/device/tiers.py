"""What `--model` means: a shipped tier's name (`seed`, `small`) or a path, turned into one path.

Every front end passes its `--model` value here (through `Classifier.load`, `verify`, `drift`,
`compare`), so a name means the same folder everywhere. The rules, in order:

1. No value: $EDGE_PNEUMO_MODEL (a tier name or a path), else `seed`.
2. A tier name (no slash; `seed`, `small`): that tier's shipped folder, `seed` = exported/ and
   `small` = exported/small/, each looked for where default_model_folder always looked for
   exported/: ./exported, the wheel's copy, an editable install's checkout. (Not in the folder
   $EDGE_PNEUMO_MODEL names: that may be any model, even exported/small itself, so `seed` there
   could mean the wrong tier.) Not shipped here: one line naming the tiers that are. A folder
   that happens to be called `small` is `./small`.
3. Anything else is a path (an exported/ folder, an .onnx/.tflite/.keras file), as it always was;
   a bare word that is neither a tier nor an existing path is taken for a mistyped tier name.

Only `os`, `pathlib` and the error type: `infer` resolves its model before anything heavy is imported.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from edge_pneumo.errors import ModelFileError

MODEL_ENV = "EDGE_PNEUMO_MODEL"
MANIFEST_NAME = "manifest.json"  # = manifest.MANIFEST_NAME (not imported: that module pulls in cv2 and numpy)
TIERS = {"seed": "", "small": "small"}  # tier -> its folder inside the shipped exported/
DEFAULT_TIER = "seed"
MODEL_SUFFIXES = (".onnx", ".tflite", ".keras")


def shipped_roots() -> Iterator[Path]:
    """The places a shipped exported/ may be, most specific first (lazily: the first hit usually ends it)."""
    yield Path("exported")
    package = Path(__file__).resolve().parents[1]  # edge_pneumo/
    yield package / "exported"  # the wheel's copy
    from importlib.util import find_spec  # an editable install maps the package elsewhere

    try:
        spec = find_spec("edge_pneumo.exported")
    except (ImportError, ValueError):
        spec = None
    yield from (Path(p) for p in ((spec.submodule_search_locations or []) if spec else []))
    yield package.parent / "exported"  # the checkout, run from another folder


def tier_folder(name: str) -> Path | None:
    """The first shipped folder of tier `name` (None: not shipped here)."""
    sub = TIERS[name]
    for root in shipped_roots():
        folder = root / sub if sub else root
        if (folder / MANIFEST_NAME).is_file():
            return folder
    return None


def shipped_tiers() -> dict[str, Path]:
    """Every tier shipped with this install, in TIERS order."""
    found = {}
    for name in TIERS:
        folder = tier_folder(name)
        if folder is not None:
            found[name] = folder
    return found


def is_tier_name(text: str) -> bool:
    """`seed`, `small` (any case), never a path: `./small` is a folder."""
    return text.lower() in TIERS and "/" not in text and os.sep not in text


def resolve_model(model: str | os.PathLike | None = None) -> Path:
    """`--model`'s value (None: not given) -> the exported folder or model file it means."""
    what = "--model"
    if model is None:
        env = os.environ.get(MODEL_ENV)
        model, what = (env, f"${MODEL_ENV}") if env else (DEFAULT_TIER, "the default model")
    text = os.fspath(model)
    if is_tier_name(text):
        folder = tier_folder(text.lower())
        if folder is None:
            raise ModelFileError(f"{what} {text}: {_not_shipped(text.lower())}")
        return folder
    path = Path(text)
    if not path.exists() and _looks_like_a_name(text):
        raise ModelFileError(
            f"{what} {text}: not a shipped model name, file or folder; shipped: {_shipped_list()}; "
            "or give an exported/ folder or an .onnx/.tflite file"
        )
    return path


def _not_shipped(name: str) -> str:
    if not shipped_tiers():
        return (
            "no shipped model found: pass --model (an exported/ folder or an .onnx/.tflite file) "
            f"or set {MODEL_ENV}"
        )
    where = f"exported/{TIERS[name]}/" if TIERS[name] else "exported/"
    return f"not shipped with this install (no {where}{MANIFEST_NAME}); shipped: {_shipped_list()}"


def _shipped_list() -> str:
    return ", ".join(shipped_tiers()) or "none"


def _looks_like_a_name(text: str) -> bool:
    """A bare word (no folder part, no model suffix): what a mistyped tier name looks like."""
    return "/" not in text and os.sep not in text and not text.lower().endswith(MODEL_SUFFIXES)
