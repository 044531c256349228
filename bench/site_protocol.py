"""Issue 22's protocol: the test split plays "a new site" (fixed before any run; no recipe is chosen on it).

    .venv/bin/python bench/site_protocol.py --data ../shared/data/chest_xray --model exported \
        --artifact tflite_int8 --out bench/results_site.json --md bench/RESULTS_site.md

1. One pass of the artifact over the 624 test images (probability, Dense(128) features, guard verdict).
   Every number below reuses these outputs (the same artifact gives the same outputs every time).
2. Out of the box: the shipped manifest's threshold, band and temperature on all 624 (accuracy, decided
   share, error among decided = the "confident" rows that are wrong), beside the band it replaced.
3. For N in (50, 100, 200), 20 repetitions each: a patient-grouped random sample of N test images
   (seed = repetition: patients in random order, each taken whole while the total stays <= N) is the
   site's labelled set; it is calibrated exactly as `edge-pneumo calibrate` does (lab/site_fit.fit_site:
   band only, and with --head) and scored on the remaining test images. A sample with fewer than 20
   images of a class is refused, as `calibrate` refuses it; the device then keeps the shipped calibration,
   and that repetition is scored so. Mean +- SD over the repetitions.
4. End to end (N = 100, repetition 0): `edge-pneumo calibrate` on a folder of the sample, then
   `edge-pneumo infer --site` on a folder of the rest, as separate processes: the site file must hold the
   in-process fit's numbers and every row the in-process decision; `calibrate`'s wall time; `infer --dir`
   wall time with and without the site file (alternating runs, median).
The whole run is one look at the test labels, logged as one line in <model>/test_evaluations.jsonl.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # many tiny solves (see cli.calibrate); before numpy
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchlib import loadavg, run_record, timed_process, write_json, write_text  # noqa: E402

from edge_pneumo.device.classifier import Calibration, Classifier  # noqa: E402
from edge_pneumo.device.result import CLASSIFIED  # noqa: E402
from edge_pneumo.lab.dataset import discover, find_split  # noqa: E402
from edge_pneumo.lab.looks import append_look  # noqa: E402
from edge_pneumo.lab.site_fit import MIN_PER_CLASS, SiteData, SiteOptions, fit_site, outcome  # noqa: E402

SIZES = (50, 100, 200)
# What `calibrate` fits, as each variant: the default (smoothed band), --head, and --band conservative.
VARIANTS = {
    "site": SiteOptions(),
    "site_head": SiteOptions(head=True),
    "site_conservative": SiteOptions(band="conservative"),
}
LABELS = {
    "before": "before",
    "site": "site",
    "site_head": "site + head",
    "site_conservative": "site, conservative band",
}
REPETITIONS = 20
KEYS = (
    "accuracy",
    "sensitivity",
    "specificity",
    "decided_share",
    "error_among_decided",
    "pneumonias_ruled_out",
    "normals_ruled_in",
)


def one_pass(data: Path, model: Path, artifact: str):
    clf = Classifier.load(model, artifact=artifact)
    clf.keep_features = True
    samples = discover(find_split(data, "test"))
    results = list(clf.predict_many([s.path for s in samples]))
    keep = [i for i, r in enumerate(results) if r.status == CLASSIFIED]
    d = SiteData(
        np.array([samples[i].label for i in keep]),
        np.array([results[i].raw_probability for i in keep], np.float64),
        np.stack([results[i].features for i in keep]).astype(np.float64),
        np.array([samples[i].patient for i in keep]),
    )
    paths = [str(samples[i].path) for i in keep]
    return clf, d, paths, len(samples) - len(keep)


def patient_sample(patients: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A mask of about n images: patients in random order (seed), each taken whole while the total stays <= n."""
    rng = np.random.default_rng(seed)
    keys = sorted(set(patients.tolist()))
    count = {k: int((patients == k).sum()) for k in keys}
    chosen, total = set(), 0
    for i in rng.permutation(len(keys)):
        k = keys[i]
        if total + count[k] <= n:
            chosen.add(k)
            total += count[k]
        if total == n:
            break
    return np.array([p in chosen for p in patients.tolist()])


def summarise(rows: list[dict]) -> dict:
    out = {}
    for k in KEYS:
        v = [r[k] for r in rows if r[k] == r[k]]
        out[k] = {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0} if v else None
    return out


def run_protocol(d: SiteData, shipped: Calibration) -> dict:
    cuts = (shipped.threshold, shipped.rule_out, shipped.rule_in)
    out = {}
    for n in SIZES:
        per = {name: [] for name in ("before", *VARIANTS)}
        refused, sizes, seconds = 0, [], []
        for rep in range(REPETITIONS):
            mask = patient_sample(d.patients, n, rep)
            site, rest = d.take(np.flatnonzero(mask)), d.take(np.flatnonzero(~mask))
            sizes.append(int(mask.sum()))
            per["before"].append(outcome(rest.y, rest.probability, *cuts))
            if min(int((site.y == 0).sum()), int((site.y == 1).sum())) < MIN_PER_CLASS:
                refused += 1  # calibrate refuses: the device keeps the shipped calibration
                for name in VARIANTS:
                    per[name].append(per["before"][-1])
                continue
            for name, opts in VARIANTS.items():
                t0 = time.perf_counter()
                fit = fit_site(site, opts)
                seconds.append(time.perf_counter() - t0)
                per[name].append(outcome(rest.y, fit.scores(rest), fit.threshold, fit.rule_out, fit.rule_in))
        out[str(n)] = {
            "repetitions": REPETITIONS,
            "refused_too_few_of_a_class": refused,
            "site_images": {"min": min(sizes), "max": max(sizes)},
            **{name: summarise(rows) for name, rows in per.items()},
            "per_repetition": per,
        }
    return out


def end_to_end(d: SiteData, paths: list[str], exe: str, model: Path, artifact: str, runs: int) -> dict:
    mask = patient_sample(d.patients, 100, 0)
    site = d.take(np.flatnonzero(mask))
    fit = fit_site(site, SiteOptions())
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        for i in np.flatnonzero(mask):
            target = td / "site" / ("PNEUMONIA" if d.y[i] else "NORMAL") / Path(paths[i]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(paths[i], target)
        rest = td / "rest"
        rest.mkdir()
        rest_idx = {}
        for i in np.flatnonzero(~mask):
            name = f"{'P' if d.y[i] else 'N'}_{Path(paths[i]).name}"
            os.symlink(paths[i], rest / name)
            rest_idx[name] = i
        sf = td / "site.json"
        cal = timed_process(
            [exe, "calibrate", str(td / "site"), "--out", str(sf), "--model", str(model), "--artifact", artifact]
        )
        if cal["returncode"] != 0:
            raise RuntimeError(f"calibrate failed: {cal['stderr'][-500:]}")
        site_file = json.loads(sf.read_text())
        c = site_file["calibration"]
        same_numbers = all(
            abs(c[k] - getattr(fit, k)) < 1e-9 for k in ("threshold", "rule_out", "rule_in", "temperature")
        )
        rows_file = td / "rows.jsonl"
        base = [exe, "infer", "--dir", str(rest), "--model", str(model), "--artifact", artifact, "-f", "json"]
        base += ["-o", str(rows_file)]
        walls = {"without": [], "with": []}
        rows = None
        for _ in range(runs):
            for kind in ("without", "with"):
                r = timed_process(base + (["--site", str(sf)] if kind == "with" else []))
                walls[kind].append(r["wall_s"])
                if kind == "with":
                    rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
        cuts = Calibration(fit.threshold, fit.temperature, fit.rule_out, fit.rule_in)
        agree = [row["decision"] == cuts.decision(d.probability[rest_idx[Path(row["path"]).name]]) for row in rows]
        held = d.take(np.array(sorted(rest_idx.values())))
        return {
            "site_images": int(mask.sum()),
            "rest_images": len(rest_idx),
            "calibrate_wall_s": cal["wall_s"],
            "calibrate_peak_rss_mb": cal["maxrss_mb"],
            "site_file_matches_in_process_fit": same_numbers,
            "rows": len(rows),
            "rows_with_site": sum(1 for row in rows if row["site"] == hashlib.sha256(sf.read_bytes()).hexdigest()[:16]),
            "decisions_equal_in_process": float(np.mean(agree)),
            "infer_wall_s_median": {k: statistics.median(v) for k, v in walls.items()},
            "infer_wall_s": walls,
            "cross_fitted_report_in_site_file": site_file["report"],
            "held_out": outcome(held.y, held.probability, fit.threshold, fit.rule_out, fit.rule_in),
        }


def log_look(model: Path, record: dict, oob: dict, protocol: dict) -> None:
    entry = {
        "created": record["date_utc"],
        "command": record["command"],
        "what": "bench/site_protocol.py (issue 22): ONE look at the test labels covering the out-of-the-box band, "
        "the N in (50, 100, 200) x 20 site-calibration protocol (variants: " + ", ".join(VARIANTS) + ") "
        "and its end-to-end check; nothing chosen on it",
        "artifact": record["artifact"],
        "out_of_the_box": {k: oob["shipped"][k] for k in ("accuracy", "decided_share", "error_among_decided")},
        "n100_site_accuracy": protocol["100"]["site"]["accuracy"]["mean"],
    }
    append_look(model, entry)


def markdown(res: dict) -> str:
    rec, oob, prot, e2e = res["run"], res["out_of_the_box"], res["protocol"], res["end_to_end"]
    f = lambda s: "-" if s is None else f"{s['mean']:.3f} ± {s['sd']:.3f}"  # noqa: E731
    lines = [
        "# Site calibration (issue 22): the test split as a new site",
        "",
        f"Command: `{rec['command']}`  ",
        f"Date: {rec['date_utc']}; git {str(rec['git'].get('commit'))[:12]}"
        f"{' (package files uncommitted)' if rec['git'].get('package_dirty') else ''}; "
        f"artifact **{res['artifact']}** (sha256 {res['artifact_sha256'][:16]}); "
        f"load average at start {rec['loadavg_start']}.  ",
        f"Test images: {res['test_images']} ({res['rejected_by_guard']} rejected by the guard, left out). "
        "One logged look at the test labels (exported/test_evaluations.jsonl); the protocol was fixed in issue 22 "
        "before this run and nothing was chosen on it.",
        "",
        "## Out of the box (the shipped manifest's calibration, all test images)",
        "",
        "| band | threshold | band [rule_out, rule_in) | accuracy | decided share | error among decided "
        "| pneumonias ruled out | normals ruled in |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, label in (
        ("replaced", "before (fitted on validation only, degenerate)"),
        ("shipped", "shipped now (hardest population, ordered)"),
    ):
        o = oob[name]
        lines.append(
            f"| {label} | {o['threshold']:.4f} | [{o['rule_out']:.4f}, {o['rule_in']:.4f}) | {o['accuracy']:.3f} | "
            f"{o['decided_share']:.3f} | {o['error_among_decided']:.3f} | {o['pneumonias_ruled_out']:.3f} | "
            f"{o['normals_ruled_in']:.3f} |"
        )
    lines += [
        "",
        "## Site calibration: mean ± SD over 20 patient-grouped samples, scored on the remaining test images",
        "",
        "`before`: the shipped calibration on the same held-out images; `site`: `calibrate` (threshold, temperature, "
        "smoothed split-conformal band: rule-out promise 3%, rule-in promise 5%); `site + head`: `calibrate --head`; "
        "`site, conservative band`: `calibrate --band conservative` (the rank rounded down: promises at most 3% and "
        "5%, kept with room to spare at this N).",
        "",
        "| N | calibration | refused (< 20 of a class) | accuracy | sensitivity | specificity | decided share "
        "| error among decided | pneumonias ruled out | normals ruled in |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, p in prot.items():
        for name in ("before", *VARIANTS):
            if name not in p:
                continue
            s = p[name]
            refused = p["refused_too_few_of_a_class"] if name != "before" else "-"
            lines.append(f"| {n} | {LABELS[name]} | {refused} | " + " | ".join(f(s[k]) for k in KEYS) + " |")
    lines += [
        "",
        "## End to end (N = 100, repetition 0, separate processes)",
        "",
        f"- `edge-pneumo calibrate` on {e2e['site_images']} images: {e2e['calibrate_wall_s']:.2f} s wall, "
        f"peak RSS {e2e['calibrate_peak_rss_mb']:.0f} MB; its site file holds the in-process fit's numbers: "
        f"{e2e['site_file_matches_in_process_fit']}.",
        f"- `edge-pneumo infer --site` on the other {e2e['rest_images']} images: {e2e['rows_with_site']} of "
        f"{e2e['rows']} rows carry the site file's sha256; decisions equal to the in-process fit's: "
        f"{e2e['decisions_equal_in_process']:.3f}.",
        f"- `infer --dir` wall time, median of {len(e2e['infer_wall_s']['with'])} alternating runs: "
        "without a site file "
        f"{e2e['infer_wall_s_median']['without']:.2f} s, with {e2e['infer_wall_s_median']['with']:.2f} s "
        f"(all runs: {e2e['infer_wall_s']}).",
        f"- Load average at the end: {res['loadavg_end']} (2 cores shared with other jobs: timings are noisy).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=Path("exported"))
    ap.add_argument("--artifact", default="tflite_int8")
    ap.add_argument("--exe", default=str(Path(sys.executable).with_name("edge-pneumo")))
    ap.add_argument("--runs", type=int, default=3, help="infer runs with and without the site file")
    ap.add_argument("--out", type=Path, default=Path("bench/results_site.json"))
    ap.add_argument("--md", type=Path, default=Path("bench/RESULTS_site.md"))
    ap.add_argument("--no-log", action="store_true", help="do not log the look (only for a dry run on other data)")
    a = ap.parse_args(argv)
    record = run_record(sys.argv)
    record["artifact"] = a.artifact
    clf, d, paths, rejected = one_pass(a.data, a.model, a.artifact)
    shipped = Calibration.from_manifest(clf.manifest)
    replaced = clf.manifest.raw["calibration"].get("replaces") or {}
    oob = {
        "shipped": {
            **outcome(d.y, d.probability, shipped.threshold, shipped.rule_out, shipped.rule_in),
            "threshold": shipped.threshold,
            "rule_out": shipped.rule_out,
            "rule_in": shipped.rule_in,
        }
    }
    if replaced:
        oob["replaced"] = {
            **outcome(d.y, d.probability, shipped.threshold, replaced["rule_out"], replaced["rule_in"]),
            "threshold": shipped.threshold,
            "rule_out": replaced["rule_out"],
            "rule_in": replaced["rule_in"],
        }
    protocol = run_protocol(d, shipped)
    e2e = end_to_end(d, paths, a.exe, a.model, a.artifact, a.runs)
    res = {
        "run": record,
        "artifact": a.artifact,
        "artifact_sha256": clf.entry.sha256,
        "test_images": len(paths) + rejected,
        "rejected_by_guard": rejected,
        "out_of_the_box": oob,
        "protocol": protocol,
        "end_to_end": e2e,
        "loadavg_end": loadavg(),
    }
    if not a.no_log:
        log_look(a.model, record, oob, protocol)
    write_json(a.out, res)
    kept = a.md.read_text() if a.md.exists() else ""  # a hand-written section after the generated one stays
    cut = kept.find("\n## What a site file costs")
    write_text(a.md, markdown(res) + (kept[cut:] if cut >= 0 else ""))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
