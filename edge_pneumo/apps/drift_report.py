"""`edge-pneumo drift RESULTS.jsonl`: the drift watch over a results file (statistics: device/drift.py).

Windows of `--window` readable rows, in file order (the order images arrived in), each judged
against the reference; exit 1 when any statistic of any window leaves its limit, printing which
and why. `--write-reference OUT` instead measures a reference from the file (a site's own images).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edge_pneumo import jsonout
from edge_pneumo.device import drift
from edge_pneumo.errors import EXIT_OK, EXIT_PARTIAL, MissingRuntimeError

SHORT = {
    "rejected": "rejected",
    "out_of_population": "out-of-population",
    "feature_distance": "feature distance",
    "indeterminate": "indeterminate",
    "positive": "positive",
}


def read_results(path: Path) -> list[dict]:
    """The rows of an `infer --format json` file (JSON lines); DriftError naming the first bad line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise drift.DriftError(f"{path}: no such results file") from None
    except IsADirectoryError:
        raise drift.DriftError(f"{path}: a folder, not a results file (infer --format json --output FILE)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise drift.DriftError(f"{path}: cannot read it as text ({e})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise drift.DriftError(
                f"{path}, line {n}: not a JSON row; drift reads `infer --format json` output (one JSON object a line)"
            ) from None
        if not isinstance(row, dict) or "status" not in row:
            raise drift.DriftError(f"{path}, line {n}: not a result row (no 'status'); is it `infer --format json`?")
        rows.append(row)
    if not any(drift.row_flags(r) for r in rows):
        raise drift.DriftError(f"{path}: no classified or rejected results in it; nothing to judge")
    return rows


def _made_by(rows: list[dict], path: Path) -> tuple[str, dict]:
    """(sha256 prefix, operating point) of the artifact that made the rows; one artifact only."""
    shas = {r.get("sha256") for r in rows if r.get("sha256")}
    if len(shas) != 1:
        raise drift.DriftError(f"{path}: rows from {len(shas)} artifacts; judge each artifact's results on their own")
    classified = [r for r in rows if r.get("status") == "classified"]
    op = {"tta": classified[0].get("tta") if classified else None}
    sites = {r.get("site") for r in rows if "site" in r}
    if len(sites) > 1:
        raise drift.DriftError(f"{path}: rows made with {len(sites)} different site files; judge each on its own")
    if sites:
        op["site"] = sites.pop()  # the site file the rows were made with (None: the shipped calibration)
    if classified:
        op["threshold"] = classified[0].get("threshold")
    return shas.pop(), op


def _shipped_reference(model: str | Path | None, sha: str, op: dict) -> drift.Reference:
    from edge_pneumo.device.manifest import load_manifest
    from edge_pneumo.device.tiers import resolve_model

    folder = resolve_model(model)
    if folder.is_file():
        folder = folder.parent
    if op.pop("site", None):
        raise drift.DriftError(
            "these results were made with a site file: judge them against its reference, --site FILE"
        )
    manifest = load_manifest(folder)
    path = folder / drift.REFERENCE_NAME
    if not path.is_file():
        raise drift.DriftError(f"{folder}: no {drift.REFERENCE_NAME}; pass --site FILE, or measure one (README)")
    op = {**op, "guard": drift.guard_identity(manifest.raw)}
    if op.get("tta") is None:  # the band rows were made with is the manifest's plain one
        cal = manifest.raw.get("calibration") or {}
        op = {**op, "rule_out": cal.get("rule_out"), "rule_in": cal.get("rule_in")}
    return drift.pick_reference(path, sha, op)


def run(
    results: Path,
    site: Path | None = None,
    model: str | Path | None = None,
    window: int = drift.WINDOW,
    plot: Path | None = None,
    fmt: str = "text",
    out=sys.stdout,
) -> int:
    rows = read_results(results)
    sha, op = _made_by(rows, results)
    ref = drift.pick_reference(site, sha, op) if site is not None else _shipped_reference(model, sha, op)
    judged = [(a, b, drift.judge(s, ref)) for a, b, s in drift.windows(rows, window)]
    if plot is not None:
        save_plot(judged, plot, ref)
    if fmt == "json":
        for a, b, j in judged:
            print(jsonout.dumps({"first_row": a, "last_row": b, **j}), file=out)
    else:
        print(
            f"drift: {results}: {len(rows)} rows in {len(judged)} window(s) of up to {window} readable; "
            f"reference: {ref.source} ({ref.summary['readable']} images, {ref.artifact})",
            file=out,
        )
        for a, b, j in judged:
            print(
                f"rows {a}-{b} ({j['readable']} readable): {'OUT: ' + ', '.join(j['out']) if j['out'] else 'ok'}",
                file=out,
            )
            print("  " + " | ".join(_brief(s) for s in j["statistics"]), file=out)
            for s in j["statistics"]:
                if s["out"]:
                    print(f"  OUT {s['name']}: {s['why']}", file=out)
    bad = sum(bool(j["out"]) for _, _, j in judged)
    if fmt != "json":
        print(f"drift: {bad} of {len(judged)} window(s) out of limits" if bad else "drift: all within limits", file=out)
    return EXIT_PARTIAL if bad else EXIT_OK


def _brief(s: dict) -> str:
    name = SHORT[s["name"]]
    if s["value"] is None:
        return f"{name} -"
    if s["name"] == "feature_distance":
        return f"{name} {s['value']:.2f} (<= {s['high']:.2f})" if s["high"] is not None else f"{name} {s['value']:.2f}"
    limit = f"<= {s['high']:.1%}" if s["low"] is None else f"{s['low']:.1%}-{s['high']:.1%}"
    return f"{name} {s['value']:.1%} ({limit})"


def write_reference(results: Path, out_path: Path, source: str, model: str | Path | None = None) -> drift.Reference:
    """Measure a reference from a results file and add it to `out_path`."""
    rows = read_results(results)
    band = None
    if model is not None or source == drift.TRAINING_POPULATION:
        from edge_pneumo.device.manifest import load_manifest
        from edge_pneumo.device.tiers import resolve_model

        folder = resolve_model(model)
        raw = load_manifest(folder.parent if folder.is_file() else folder).raw
        cal = raw.get("calibration") or {}
        band = {"rule_out": cal.get("rule_out"), "rule_in": cal.get("rule_in"), "guard": drift.guard_identity(raw)}
    ref = drift.Reference.from_rows(rows, source, band)
    command = "edge-pneumo infer ... --format json --output RESULTS; edge-pneumo drift RESULTS --write-reference " + (
        f"{out_path.name} --source '{source}'"
    )
    drift.write_reference(out_path, ref, command)
    return ref


def save_plot(judged: list, path: Path, ref: drift.Reference) -> None:
    """One panel a statistic: its value per window (red when out) and its limits."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingRuntimeError("--plot needs matplotlib: pip install matplotlib") from None
    fig, axes = plt.subplots(len(drift.STATISTICS), 1, figsize=(8, 2 * len(drift.STATISTICS)), sharex=True)
    ends = [b for _, b, _ in judged]
    for ax, (k, (name, what)) in zip(axes, enumerate(drift.STATISTICS)):
        stats = [j["statistics"][k] for _, _, j in judged]
        vals = [s["value"] for s in stats]
        ax.step(ends, [s["high"] for s in stats], where="mid", color="grey", ls="--", label="limit")
        if any(s["low"] is not None for s in stats):
            ax.step(ends, [s["low"] for s in stats], where="mid", color="grey", ls="--")
        ax.plot(ends, vals, "-", color="tab:blue")
        ax.scatter(ends, vals, c=["tab:red" if s["out"] else "tab:blue" for s in stats], zorder=3)
        ax.set_ylabel(SHORT[name], fontsize=8)
        ax.set_title(what, fontsize=9, loc="left")
    axes[-1].set_xlabel("last row of the window (file order)")
    fig.suptitle(f"drift against the {ref.source} ({ref.artifact})", fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise drift.DriftError(f"{path}: cannot write the plot ({e.strerror or e})") from None
    finally:
        plt.close(fig)
