"""The body of `edge-pneumo infer`: gather paths, classify, write text/JSON lines/CSV."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from edge_pneumo.apps.rows import RowWriter
from edge_pneumo.decoders.decode import IMAGE_SUFFIXES
from edge_pneumo.device.result import CLASSIFIED, FAILED, REJECTED
from edge_pneumo.device.runtime import default_threads
from edge_pneumo.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_PIPE_CLOSED,
    EdgePneumoError,
    InputImageError,
)

FORMATS = ("text", "json", "csv")


def split_threads(total: int, n_images: int) -> tuple[int, int]:
    """(model threads, folder threads). One image: the model's call spreads over every core. A
    folder: every core runs a thread that takes its own files from decoding to results, each
    model call on that thread alone (Classifier.predict_many): a call spread over cores that
    decoders share waits for its slowest part (LiteRT, 5,216 train images on 2 cores: 4.54 s ->
    4.13 s, median of 5 alternating runs; bench/RESULTS_folder.md has the current figures)."""
    return (total, 1) if n_images <= 1 else (1, total)


def gather_paths(items: list[str], directory: Path | None, stdin=None) -> list[str]:
    """Paths from arguments, '-' (one path per line on stdin) and a folder walked recursively."""
    paths: list[str] = []
    for item in items:
        if item == "-":
            stream = stdin or sys.stdin
            paths.extend(line.strip() for line in stream if line.strip())
        else:
            paths.append(item)
    if directory is not None:
        if not directory.is_dir():
            raise InputImageError(
                f"{directory}: not a folder" if directory.exists() else f"{directory}: no such folder"
            )
        found = sorted(str(p) for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise InputImageError(f"{directory}: no image files in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
        paths.extend(found)
    if not paths:
        raise InputImageError(
            "no images given: pass image paths, --image PATH, --dir DIR, or '-' to read paths from stdin"
        )
    return paths


class InferOptions:
    """Everything `infer` was asked to do: what the CLI (cli.py) and the fast path (entry.py)
    hand to `run_infer`. The defaults here are the options' defaults. (A plain class: a
    dataclass costs ~1 ms at import, on every `infer` start.)"""

    __slots__ = (
        "items", "directory", "model", "artifact", "fmt", "output",
        "threads", "batch_size", "verify", "guard", "heatmap", "tta", "site", "max_pixels",
    )  # fmt: skip
    BATCH_SIZE = 32
    FORMAT = "text"

    def __init__(
        self,
        items: list[str] | None = None,
        directory: Path | None = None,
        model: str | Path | None = None,
        artifact: str | None = None,
        fmt: str = FORMAT,
        output: Path | None = None,
        threads: int | None = None,
        batch_size: int = BATCH_SIZE,
        verify: bool = True,
        guard: bool = True,
        heatmap: Path | None = None,
        tta: bool = False,
        site: Path | None = None,
        max_pixels: int | None = None,
    ):
        self.items, self.directory, self.model, self.artifact = list(items or []), directory, model, artifact
        self.fmt, self.output, self.threads, self.batch_size = fmt, output, threads, batch_size
        self.verify, self.guard, self.heatmap, self.tta = verify, guard, heatmap, tta
        self.site = site  # a site file (`calibrate`), or None: the manifest's calibration
        self.max_pixels = max_pixels  # the pixel budget (decoders/limits.py); None: $EDGE_PNEUMO_MAX_PIXELS or 60 MP

    def _values(self) -> tuple:
        return tuple(getattr(self, k) for k in self.__slots__)

    def __eq__(self, other) -> bool:
        return isinstance(other, InferOptions) and self._values() == other._values()

    def __repr__(self) -> str:
        return "InferOptions(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"


def run_infer(opts: InferOptions) -> int:
    from edge_pneumo.decoders.limits import set_max_pixels
    from edge_pneumo.decoders.stderr_capture import protect_python_stderr
    from edge_pneumo.device.classifier import Classifier

    set_max_pixels(opts.max_pixels)

    protect_python_stderr()  # our messages never go through fd 2, so a decoder's redirect cannot swallow them
    paths = gather_paths(opts.items, opts.directory)
    model_threads, decode_threads = split_threads(opts.threads or default_threads(), len(paths))
    clf = Classifier.load(
        opts.model,
        artifact=opts.artifact,
        threads=model_threads,
        verify=opts.verify,
        guard=opts.guard,
        tta=opts.tta,
        site=opts.site,
    )
    for line in clf.backend.messages:
        print(f"warning: {clf.entry.name}: {line}", file=sys.stderr)
    heatmap = opts.heatmap
    if heatmap is not None:
        try:
            heatmap.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EdgePneumoError(f"{heatmap}: cannot create the heatmap folder ({e.strerror or e})") from None
    try:
        with _open_output(opts.output) as out:
            return _classify(clf, paths, RowWriter(opts.fmt, out), opts.batch_size, decode_threads, heatmap)
    except BrokenPipeError:
        # `infer ... | head`: the reader has what it wanted. Stop quietly; stdout goes to
        # /dev/null so Python's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE_CLOSED


@contextmanager
def _open_output(output: Path | None):
    """stdout; a device or pipe (e.g. /dev/null) as it is; a regular file through a temporary
    name beside it, renamed into place only when every result is written."""
    if output is None:
        yield sys.stdout
        return
    output = Path(os.path.realpath(output))  # a symlink: write to its target, keep the link
    if output.exists() and not output.is_file():
        try:
            with open(output, "w") as f:
                yield f
        except OSError as e:
            raise EdgePneumoError(f"{output}: cannot write results ({e.strerror or e})") from None
        return
    tmp = output.with_name(f".{output.name}.partial")
    try:
        f = open(tmp, "w")
    except OSError as e:
        raise EdgePneumoError(f"{output}: cannot write results ({e.strerror or e})") from None
    try:
        with f:
            yield f
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def _classify(clf, paths, writer, batch_size, decode_threads, heatmap=None) -> int:
    counts = {CLASSIFIED: 0, REJECTED: 0, FAILED: 0}
    started = time.perf_counter()
    show_progress = len(paths) >= 50 and sys.stderr.isatty()
    bar = None
    if show_progress:
        import typer

        bar = typer.progressbar(length=len(paths), label="classifying", file=sys.stderr)
        bar.__enter__()
    try:
        for r in clf.predict_many(
            paths, batch_size=batch_size, decode_threads=decode_threads, explain=heatmap is not None
        ):
            writer.write(r)
            if bar:
                bar.update(1)
            counts[r.status] += 1
            if r.status == FAILED:
                print(f"error: {r.reason}", file=sys.stderr)
                continue
            for w in r.warnings:
                print(f"warning: {r.path}: {w}", file=sys.stderr)
            if r.status == REJECTED and writer.fmt != "text":
                print(f"rejected: {r.path}: {r.reason}", file=sys.stderr)
            if heatmap is not None and r.heatmap is not None:
                _write_heatmap(r, heatmap)
    finally:
        if bar:
            bar.__exit__(None, None, None)
    seconds = time.perf_counter() - started
    summary = f"{counts[CLASSIFIED]} classified, {counts[REJECTED]} rejected, {counts[FAILED]} failed"
    if len(paths) > 1:
        print(f"{summary} in {seconds:.2f} s ({len(paths) / seconds:.0f} images/s)", file=sys.stderr)
    elif counts[FAILED]:
        print(summary, file=sys.stderr)
    if not counts[FAILED]:
        return EXIT_OK
    return EXIT_PARTIAL if counts[CLASSIFIED] + counts[REJECTED] else EXIT_FAILED


def _write_heatmap(r, folder: Path) -> None:
    """The X-ray with its Grad-CAM map over it, named after the input, written atomically."""
    import cv2

    from edge_pneumo.decoders.decode import read_grey
    from edge_pneumo.device.explain import result_overlay

    try:
        grey = read_grey(r.path).pixels
    except EdgePneumoError as e:
        print(f"warning: {r.path}: no heatmap ({e})", file=sys.stderr)
        return
    image = result_overlay(grey, r)
    target = folder / f"{Path(r.path).stem}.heatmap.png"
    tmp = target.with_name(f".{target.name}.partial.png")
    if not cv2.imwrite(str(tmp), image):
        print(f"warning: {r.path}: could not write {target}", file=sys.stderr)
        return
    os.replace(tmp, target)
