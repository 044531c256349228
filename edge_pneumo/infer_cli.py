"""The body of `edge-pneumo infer`: gather paths, classify, write text/JSON lines/CSV."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from .errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EdgePneumoError, InputImageError
from .preprocess import IMAGE_SUFFIXES

CSV_FIELDS = ["path", "label", "probability", "threshold", "artifact", "ms", "warnings", "error"]


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
            raise InputImageError(f"{directory}: not a folder" if directory.exists() else f"{directory}: no such folder")
        found = sorted(str(p) for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise InputImageError(f"{directory}: no image files in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
        paths.extend(found)
    if not paths:
        raise InputImageError("no images given: pass image paths, --image PATH, --dir DIR, or '-' to read paths from stdin")
    return paths


class _Writer:
    def __init__(self, fmt: str, stream):
        self.fmt, self.stream = fmt, stream
        if fmt == "csv":
            self.csv = csv.DictWriter(stream, fieldnames=CSV_FIELDS, lineterminator="\n")
            self.csv.writeheader()

    def write(self, result) -> None:
        d = result.to_dict()
        if self.fmt == "json":
            self.stream.write(json.dumps(d) + "\n")
        elif self.fmt == "csv":
            row = {k: d.get(k, "") for k in CSV_FIELDS}
            row["warnings"] = "; ".join(d.get("warnings", []))
            self.csv.writerow(row)
        elif result.ok:  # text: failures go to stderr only, as one line each
            self.stream.write(
                f"{d['path']}  {d['label']:<9}  p={d['probability']:.4f}  threshold={d['threshold']:.4f}  "
                f"{d['artifact']}  {d['ms']:.1f} ms\n"
            )


def run_infer(items, directory, model, artifact, fmt, output, threads, batch_size, verify) -> int:
    from .classifier import Classifier

    paths = gather_paths(items, directory)
    clf = Classifier.load(model, artifact=artifact, threads=threads, verify=verify)
    out = io.StringIO() if output is not None else sys.stdout
    writer = _Writer(fmt, out)
    ok = failed = 0
    show_progress = len(paths) >= 50 and sys.stderr.isatty()
    bar = None
    if show_progress:
        import typer

        bar = typer.progressbar(length=len(paths), label="classifying", file=sys.stderr)
        bar.__enter__()
    try:
        for r in clf.predict_many(paths, batch_size=batch_size, decode_threads=threads):
            writer.write(r)
            if bar:
                bar.update(1)
            if r.ok:
                ok += 1
                for w in r.warnings:
                    print(f"warning: {r.path}: {w}", file=sys.stderr)
            else:
                failed += 1
                print(f"error: {r.error}", file=sys.stderr)
    finally:
        if bar:
            bar.__exit__(None, None, None)
    if output is not None:
        try:
            tmp = output.with_name(f".{output.name}.tmp")
            tmp.write_text(out.getvalue())
            tmp.replace(output)
        except OSError as e:
            raise EdgePneumoError(f"{output}: cannot write results ({e.strerror or e})") from None
    if failed:
        print(f"{ok} classified, {failed} failed", file=sys.stderr)
    return EXIT_OK if not failed else (EXIT_PARTIAL if ok else EXIT_FAILED)
