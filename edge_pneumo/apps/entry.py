"""The `edge-pneumo` console entry: plain `infer` runs without importing Typer.

Typer and Click cost about 60 ms to import, a fifth of a whole one-image `infer` run,
and a device that classifies one X-ray per process pays that every time. So `infer`
arguments are parsed here when they are plain (known options, valid values); anything
else, including `--help` and every mistake, goes to the Typer app, which gives the
usual help and error messages. Both paths call the same `run_infer`, and a test
checks that they turn the same arguments into the same call.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Option -> InferOptions field, for `infer` options that take a value / are flags.
_VALUE_OPTIONS = {
    "--image": "image",
    "-i": "image",
    "--dir": "directory",
    "-d": "directory",
    "--model": "model",
    "-m": "model",
    "--artifact": "artifact",
    "--format": "fmt",
    "-f": "fmt",
    "--output": "output",
    "-o": "output",
    "--threads": "threads",
    "--batch-size": "batch_size",
    "--heatmap": "heatmap",
    "--site": "site",
    "--max-pixels": "max_pixels",
}
_FLAG_OPTIONS = {"--no-verify": "no_verify", "--no-guard": "no_guard", "--tta": "tta"}


def parse_infer_args(args: list[str]):
    """`infer` arguments -> run_infer's options, or None when Typer should handle them."""
    from edge_pneumo.apps.infer import FORMATS, InferOptions  # needed for the run anyway

    positional: list[str] = []
    images: list[str] = []
    values: dict[str, str] = {}
    flags: set[str] = set()
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            positional.extend(args[i:])
            break
        if arg == "-" or not arg.startswith("-"):
            positional.append(arg)
            continue
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in _FLAG_OPTIONS and not eq:
            flags.add(_FLAG_OPTIONS[name])
            continue
        if name not in _VALUE_OPTIONS:
            return None  # --help, a typo, -ifoo...: Typer explains
        if not eq:
            if i >= len(args) or (args[i].startswith("-") and args[i] != "-"):
                return None
            value = args[i]
            i += 1
        key = _VALUE_OPTIONS[name]
        if key == "image":
            images.append(value)
        else:
            values[key] = value  # repeated: the last one wins, as in Click
    try:
        threads = int(values["threads"]) if "threads" in values else None
        batch_size = int(values.get("batch_size", InferOptions.BATCH_SIZE))
        max_pixels = int(values["max_pixels"]) if "max_pixels" in values else None
    except ValueError:
        return None
    fmt = values.get("fmt", InferOptions.FORMAT)
    if (threads is not None and threads < 1) or batch_size < 1 or fmt not in FORMATS:
        return None
    if max_pixels is not None and max_pixels < 1:
        return None
    path = lambda key: Path(values[key]) if key in values else None
    return InferOptions(
        items=[*positional, *images],
        directory=path("directory"),
        model=values.get("model"),  # as Typer passes it, a string: a tier name or a path (device/tiers.py)
        artifact=values.get("artifact"),
        fmt=fmt,
        output=path("output"),
        threads=threads,
        batch_size=batch_size,
        verify="no_verify" not in flags,
        guard="no_guard" not in flags,
        heatmap=path("heatmap"),
        tta="tta" in flags,
        site=path("site") or _site_from_env(),
        max_pixels=max_pixels,
    )


def _site_from_env() -> Path | None:
    """$EDGE_PNEUMO_SITE, as Typer's envvar would read it (no import of device.site: this path stays lean)."""
    import os

    value = os.environ.get("EDGE_PNEUMO_SITE")
    return Path(value) if value else None


def main(argv: list[str] | None = None) -> None:
    # Before numpy loads: one BLAS thread. The guard's matrices are tiny (64 x 128 @ 128 x 128), and
    # OpenBLAS's extra threads only spin, taking the decoders' cores: 2.4 ms against 0.03 ms for one
    # batch's feature distances on 2 cores; a folder run used 1.45x the CPU (issue 27). Same results.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["infer"]:
        parsed = parse_infer_args(args[1:])
        if parsed is not None:
            from edge_pneumo.apps.infer import run_infer
            from edge_pneumo.errors import EdgePneumoError, report

            try:
                code = run_infer(parsed)
            except (EdgePneumoError, KeyboardInterrupt) as e:
                code = report(e)
            sys.exit(code)
    from edge_pneumo.apps.cli import app

    app(args=args, prog_name="edge-pneumo")


if __name__ == "__main__":  # pragma: no cover
    main()
