"""`edge-pneumo`: train -> export -> compare -> infer.

Thin commands: options are declared here, the work is imported inside each command so
`edge-pneumo --help` and `infer` start fast and never import TensorFlow. Known failures
become one line and an exit code; EDGE_PNEUMO_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from edge_pneumo.errors import EXIT_FAILED, EXIT_OK, EdgePneumoError, report
from edge_pneumo.training.config import ONE_SE, Recipe, TeacherConfig, TrainConfig, default

app = typer.Typer(
    name="edge-pneumo",
    help="Pneumonia screening on chest X-rays for CPU-only edge devices.\n\n"
    "Workflow: train -> export -> compare -> infer. `verify` checks a device after install.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

MaxPixelsOpt = Annotated[
    Optional[int],
    typer.Option(
        "--max-pixels",
        help="Refuse, before decoding, any image whose header announces more pixels than this "
        "(width x height x frames; a decompression bomb). Default: $EDGE_PNEUMO_MAX_PIXELS, else 60000000.",
        min=1,
        show_default=False,
    ),
]
DataOpt = Annotated[
    Path,
    typer.Option(
        "--data",
        help="The chest_xray folder (with train/ and test/), e.g. ../shared/data/chest_xray.",
        envvar="EDGE_PNEUMO_DATA",
    ),
]
TtaOpt = Annotated[
    bool,
    typer.Option(
        "--tta",
        help=(
            "Flip test-time augmentation: average the image and its mirror image (twice the model time; its own "
            "threshold, chosen on validation)."
        ),
    ),
]
ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        help="A shipped model, 'seed' (the default) or 'small' (`edge-pneumo models` lists them), an exported/ "
        "folder or an .onnx/.tflite file. Default: $EDGE_PNEUMO_MODEL, else seed.",
        show_default=False,
    ),
]
SiteOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--site",
        help="A site file from `edge-pneumo calibrate`: its threshold, band and temperature replace the shipped ones.",
        envvar="EDGE_PNEUMO_SITE",
        show_default=False,
    ),
]


def handle_errors(fn):
    """Known errors -> one line on stderr and the error's exit code; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (EdgePneumoError, KeyboardInterrupt) as e:
            raise typer.Exit(report(e)) from None

    return wrapper


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=lambda v: _print_version(v)
        ),
    ] = False,
) -> None:
    """Options shared by every command."""


def _print_version(value: bool) -> None:
    if value:
        from edge_pneumo import __version__

        print(__version__)
        raise typer.Exit(EXIT_OK)


def _tolerance(text: str) -> float | str:
    """--threshold-tolerance text -> 'se' or a number (`Recipe` checks the range)."""
    if text.strip().lower() == ONE_SE:
        return ONE_SE
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--threshold-tolerance must be a number or 'se', not {text!r}") from None


@app.command()
@handle_errors
def train(
    data: DataOpt,
    out: Annotated[Path, typer.Option(help="Where to write the model and its run record.")] = default(
        TrainConfig, "out"
    ),
    arch: Annotated[
        str,
        typer.Option(
            help=(
                "'seed': the published seed CNN at 64 px (the default, the mission's model); 'small': a "
                "ResNet-18-shaped CNN at 128 px, width 32 (the stronger tier; recipe in experiments/README.md)."
            )
        ),
    ] = default(TrainConfig, "arch"),
    epochs: Annotated[
        int,
        typer.Option(
            help=(
                "Most epochs of the validation run (cosine decay over them); the epoch with the best validation AUC is "
                "kept. 50 is the shipped recipe (rounds 5-11: longer schedules ranked better on validation)."
            ),
            min=1,
        ),
    ] = default(Recipe, "max_epochs"),
    patience: Annotated[
        int,
        typer.Option(
            help=(
                "Stop the validation run after this many epochs without a better validation AUC. The shipped recipe "
                "runs the whole cosine schedule (50 = --epochs; rounds 10-11)."
            ),
            min=1,
        ),
    ] = default(Recipe, "patience"),
    seed: Annotated[
        int,
        typer.Option(
            help=(
                "Seed for the weights, shuffling and augmentation (and the split, unless --split-seed or --teacher "
                "says otherwise)."
            )
        ),
    ] = default(TrainConfig, "seed"),
    split_seed: Annotated[
        Optional[int],
        typer.Option(
            help="Seed of the patient-wise validation split. Default: the teacher's (with --teacher), else --seed.",
            show_default=False,
        ),
    ] = default(TrainConfig, "split_seed"),
    val_fraction: Annotated[
        float, typer.Option(help="Share of train/ patients held out for validation.", min=0.01, max=0.9)
    ] = default(TrainConfig, "val_fraction"),
    class_weight: Annotated[
        bool, typer.Option(help="Weight classes to balance the 3:1 PNEUMONIA imbalance.")
    ] = default(Recipe, "class_weight"),
    augment: Annotated[
        str,
        typer.Option(
            help=(
                "'seed' (flip, zoom 0.2, shear 0.2), 'strong' (+ rotation, brightness, contrast), 'robust' (+ "
                "translation), 'photometric' (+ gamma, blur) or 'aspect' (+ horizontal-only zoom)."
            )
        ),
    ] = default(Recipe, "augment"),
    label_smoothing: Annotated[
        float, typer.Option(help="Label smoothing of the cross-entropy targets (0 = off).", min=0.0, max=0.49)
    ] = default(Recipe, "label_smoothing"),
    intensity: Annotated[
        str,
        typer.Option(
            help="Intensity normalisation in the shared preprocessing: 'clahe' (local), 'equalize' (global) or 'none'."
        ),
    ] = default(TrainConfig, "intensity"),
    refit: Annotated[
        bool,
        typer.Option(
            help=(
                "Refit on all of train/ for the chosen number of epochs. Off in the shipped recipe (rounds 8-11): the "
                "validation-run model ships, so its threshold and band are chosen on the very model that runs, and the "
                "refit's time goes to epochs."
            )
        ),
    ] = default(TrainConfig, "refit_full"),
    teacher: Annotated[
        Optional[Path],
        typer.Option(
            help="Soft labels from `edge-pneumo teacher` (distillation; the student stays the seed CNN).",
            show_default=False,
        ),
    ] = default(TrainConfig, "teacher"),
    distill_alpha: Annotated[
        float,
        typer.Option(
            help="With --teacher: target = alpha x label + (1 - alpha) x teacher probability.", min=0.0, max=1.0
        ),
    ] = default(Recipe, "distill_alpha"),
    teacher_temperature: Annotated[
        float,
        typer.Option(
            help="With --teacher: soften the teacher's probabilities first, sigmoid(logit(p) / T) (1 = as they are).",
            min=0.05,
        ),
    ] = default(Recipe, "teacher_temperature"),
    threshold_tolerance: Annotated[
        str,
        typer.Option(
            help=(
                "Balanced-accuracy slack of the threshold choice (the threshold nearest 0.5 within it wins): a number, "
                "or 'se' for one standard error of the maximum (the shipped recipe, round 7)."
            )
        ),
    ] = str(default(Recipe, "threshold_tolerance")),
    threshold_family: Annotated[
        str,
        typer.Option(
            help=(
                "The harder acquisition batch of validation normals the threshold and rule-in are chosen on, with "
                "validation pneumonia ('none': all of validation)."
            )
        ),
    ] = default(TrainConfig, "threshold_family") or "none",
    threshold_tiebreak: Annotated[
        str,
        typer.Option(
            help=(
                "Among thresholds equally good by --threshold-tolerance: 'half' (the one nearest 0.5) or 'shifts' (the "
                "best mean balanced accuracy over the same validation images under 11 acquisition shifts: exposure, "
                "blur, noise, JPEG, crop, border, aspect; the shipped recipe, rounds 10-11)."
            )
        ),
    ] = default(TrainConfig, "threshold_tiebreak"),
    holdout_family: Annotated[
        str,
        typer.Option(help="Experimental: hold this batch out of the validation run's fitting entirely ('none': off)."),
    ] = default(TrainConfig, "holdout_family") or "none",
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip unreadable images (and count them) instead of stopping.")
    ] = default(TrainConfig, "skip_bad"),
    evaluate_test: Annotated[
        bool,
        typer.Option(
            "--test/--no-test",
            help=(
                "Score test/ once at the end (a logged look, exported/test_evaluations.jsonl). --no-test leaves "
                "the look to `compare` on the exported artifacts."
            ),
        ),
    ] = default(TrainConfig, "evaluate_test"),
) -> None:
    """Train a classifier: epochs and threshold chosen on a patient-wise validation split, then test."""
    from edge_pneumo.device.preprocess import Preprocessing
    from edge_pneumo.training.train import run_training

    try:
        recipe = Recipe(
            max_epochs=epochs,
            patience=patience,
            class_weight=class_weight,
            augment=augment,
            label_smoothing=label_smoothing,
            distill_alpha=distill_alpha,
            teacher_temperature=teacher_temperature,
            threshold_tolerance=_tolerance(threshold_tolerance),
        )
        Preprocessing(intensity=intensity)  # checks the name
        cfg = TrainConfig(
            data=data,
            out=out,
            arch=arch.lower(),
            evaluate_test=evaluate_test,
            seed=seed,
            split_seed=split_seed,
            val_fraction=val_fraction,
            refit_full=refit,
            skip_bad=skip_bad,
            intensity=intensity,
            recipe=recipe,
            teacher=teacher,
            holdout_family=None if holdout_family.lower() == "none" else holdout_family,
            threshold_family=None if threshold_family.lower() == "none" else threshold_family,
            threshold_tiebreak=threshold_tiebreak.lower(),
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    run_training(cfg, log=lambda m: print(m, flush=True))


@app.command()
@handle_errors
def teacher(
    data: DataOpt,
    out: Annotated[
        Path, typer.Option(help="The soft-label file to write (JSON, with the teacher's record).")
    ] = default(TeacherConfig, "out"),
    seeds: Annotated[
        list[int], typer.Option("--seed", help="One teacher per seed (repeatable); their probabilities are averaged.")
    ] = list(default(TeacherConfig, "seeds")),
    size: Annotated[
        int, typer.Option(help="The teacher's input size in pixels (the student stays at 64).", min=32)
    ] = default(TeacherConfig, "size"),
    width: Annotated[
        int, typer.Option(help="Channels of the teacher's first stage (ResNet-18 shape: x1, x2, x4, x8).", min=8)
    ] = default(TeacherConfig, "width"),
    epochs: Annotated[
        int, typer.Option(help="Most epochs per teacher; the best by selection AUC is kept.", min=1)
    ] = default(TeacherConfig, "recipe").max_epochs,
    holdout_family: Annotated[
        str, typer.Option(help="Acquisition batch held out of fitting for selection ('none' for plain validation).")
    ] = default(TeacherConfig, "holdout_family") or "none",
    save_models: Annotated[
        bool, typer.Option("--save-models", help="Also save each teacher as .keras beside the file.")
    ] = default(TeacherConfig, "save_models"),
    folds: Annotated[
        int,
        typer.Option(
            help="k > 1: out-of-fold soft labels (k teachers per seed, each labels the patients it did not fit).", min=1
        ),
    ] = default(TeacherConfig, "folds"),
) -> None:
    """Train a larger CNN (from scratch, no downloads) once and save its soft labels for `train --teacher`."""
    from dataclasses import replace

    from edge_pneumo.training.teacher import run_teacher

    cfg = TeacherConfig(
        data=data,
        out=out,
        seeds=tuple(seeds),
        size=size,
        width=width,
        holdout_family=None if holdout_family.lower() == "none" else holdout_family,
        recipe=replace(default(TeacherConfig, "recipe"), max_epochs=epochs),
        save_models=save_models,
        folds=folds,
    )
    run_teacher(cfg, log=lambda m: print(m, flush=True))


@app.command("merge-teachers")
@handle_errors
def merge_teachers(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Two or more soft-label files from `edge-pneumo teacher`, made on the same split.", show_default=False
        ),
    ],
    data: DataOpt,
    out: Annotated[
        Path, typer.Option(help="The merged soft-label file to write (for `train --teacher`).", show_default=False)
    ],
) -> None:
    """Average several teachers' soft labels into one ensemble teacher file (each member's record kept)."""
    from edge_pneumo.training.teacher import merge_soft_labels

    merge_soft_labels(files, data, out, log=lambda m: print(m, flush=True))


@app.command()
@handle_errors
def evaluate(
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            "-m",
            help="A shipped model ('seed', the default, or 'small'), an exported/ folder, an .onnx/.tflite artifact, "
            "or a .keras model (needs the train extra). Default: $EDGE_PNEUMO_MODEL, else seed.",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        Path, typer.Option(help="Labelled images: DIR/test or DIR/{NORMAL,PNEUMONIA}.", envvar="EDGE_PNEUMO_DATA")
    ] = Path("../shared/data/chest_xray/test"),
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images (and count them).")] = False,
    threshold: Annotated[Optional[float], typer.Option(help="Override the model's decision threshold.")] = None,
) -> None:
    """Accuracy, ROC AUC, sensitivity, specificity, precision, F1 and confusion matrix at the model's threshold."""
    from edge_pneumo import jsonout
    from edge_pneumo.device.tiers import resolve_model
    from edge_pneumo.lab.evaluate import evaluate as score
    from edge_pneumo.lab.evaluate import format_report, load_labelled, log_evaluation

    model = resolve_model(model)
    if model.suffix == ".keras":
        from edge_pneumo.training.fit import predict
        from edge_pneumo.training.keras_io import load_keras

        km = load_keras(model)
        predict_fn, pre, thr, name = (lambda x: predict(km.model, x)), km.preprocessing, km.threshold, str(model)
    else:
        from edge_pneumo.device.classifier import Classifier

        clf = Classifier.load(model)
        predict_fn, pre, thr, name = (
            clf.predict_array,
            clf.preprocessing,
            clf.threshold,
            str(clf.entry.path(clf.manifest.folder)),
        )
    images = load_labelled(data, pre, skip_bad=skip_bad)
    report = score(predict_fn, images, thr if threshold is None else threshold)
    report["model"] = name
    report["data"] = str(data)
    log_evaluation(report, model.parent if model.suffix == ".keras" else clf.manifest.folder)
    if json_out:
        print(jsonout.dumps(report))
    else:
        print(format_report(report, f"{name} on {data}"))


@app.command()
@handle_errors
def export(
    model: Annotated[
        Path, typer.Option(help="The float Keras model to export (its .record.json must be beside it).")
    ] = Path("exported/pneumonia_cnn.keras"),
    data: DataOpt = Path("../shared/data/chest_xray"),
    out: Annotated[Path, typer.Option(help="Folder for the artifacts and manifest.json.")] = Path("exported"),
    formats: Annotated[
        list[str],
        typer.Option(
            "--formats",
            help=(
                "Format names or presets, comma separated: 'all', 'device' (float32 ONNX, int8 ONNX, int8 TFLite) or "
                "any of the names `edge-pneumo formats` lists."
            ),
        ),
    ] = ["all"],
    calibration_images: Annotated[
        int, typer.Option(help="Training images for int8 calibration (stratified).", min=1)
    ] = 300,
    validation_images: Annotated[int, typer.Option(help="Held-out images each artifact is checked on.", min=1)] = 400,
    budget_scale: Annotated[
        float, typer.Option(help="Multiply every budget's tolerance (below 1 tightens).", min=0.0)
    ] = 1.0,
    update: Annotated[
        bool,
        typer.Option(
            "--update",
            help="Re-make only --formats in OUT's existing export of this model; the other artifacts, "
            "their manifest entries and guard parameters stay as they are.",
        ),
    ] = False,
    keras: Annotated[
        Optional[Path],
        typer.Option(
            "--keras",
            help="Your own Keras binary classifier instead of --model: one sigmoid output, 0..255 pixels in, "
            "any square size. Without a run record beside it, the input size comes from the model and the "
            "threshold and band are fitted on the validation images (the manifest says so); pass the layers.",
        ),
    ] = None,
    features_layer: Annotated[
        Optional[str],
        typer.Option(help="The layer whose vector the sigmoid output reads (the input guard's features)."),
    ] = None,
    cam_layer: Annotated[
        Optional[str], typer.Option(help="The last (h, w, c) activations before it (what Grad-CAM weighs).")
    ] = None,
    intensity: Annotated[
        str, typer.Option(help="Intensity step of a --keras model without a run record: none, equalize or clahe.")
    ] = "none",
    view_check_from: Annotated[
        Optional[Path],
        typer.Option(
            help="Copy the frontal-view check (files and manifest section) from this export folder, with the "
            "preprocessing it was fitted on, e.g. --view-check-from exported for a tier with another input size.",
        ),
    ] = None,
) -> None:
    """Export to TFLite and ONNX (float and int8), validate each against the float model, write manifest.json."""
    from edge_pneumo.device.artifact_formats import resolve_formats

    try:
        fmts = tuple(resolve_formats(formats))
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--formats") from None
    if intensity not in ("none", "equalize", "clahe"):
        raise typer.BadParameter(f"{intensity!r}: one of none, equalize, clahe", param_hint="--intensity")
    from edge_pneumo.training.export import ExportConfig, export_all, remake_artifacts
    from edge_pneumo.training.keras_io import load_keras

    km = load_keras(keras, record_optional=True, intensity=intensity) if keras else load_keras(model)
    split = km.record.get("split", {})
    seed = int(split.get("split_seed", km.record.get("seed", 0)))  # the training run's own patient split
    val_fraction = float(split.get("val_fraction", 0.15))
    cfg = ExportConfig(
        data=data,
        out=out,
        formats=fmts,
        calibration_images=calibration_images,
        validation_images=validation_images,
        seed=seed,
        val_fraction=val_fraction,
        budget_scale=budget_scale,
        features_layer=features_layer,
        cam_layer=cam_layer,
        view_check_from=view_check_from,
    )
    manifest = (remake_artifacts if update else export_all)(km, cfg, log=lambda m: print(m, flush=True))
    print(f"wrote {len(manifest['artifacts'])} artifacts and {out / 'manifest.json'}")


@app.command("train-view")
@handle_errors
def train_view(
    data: DataOpt = Path("../shared/data/chest_xray"),
    non_cxr: Annotated[
        Path, typer.Option(help="The non-chest development set (with sources.csv): the negatives.")
    ] = Path("../shared/data/non_cxr"),
    adult: Annotated[Path, typer.Option(help="Adult frontal chest films: positives beside Kermany train/.")] = Path(
        "../shared/data/adult_cxr"
    ),
    out: Annotated[Path, typer.Option(help="The exported/ folder whose manifest gains the view check.")] = Path(
        "exported"
    ),
    folds: Annotated[
        Optional[int], typer.Option(help="Source-held-out folds for the limit (default: the recipe's).", min=2)
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs per fit (default: the recipe's).", min=1)] = None,
    seed: int = 0,
) -> None:
    """Fit the view check (frontal chest or not), choose its limit on source-held-out folds, export it to ONNX."""
    from edge_pneumo.training.view_train import ViewConfig, run_view_training

    given = {k: v for k, v in (("folds", folds), ("epochs", epochs)) if v is not None}
    cfg = ViewConfig(data=data, non_cxr=non_cxr, adult=adult, out=out, seed=seed, **given)
    section = run_view_training(cfg, log=lambda m: print(m, flush=True))
    print("source-held-out: category, view check alone, whole guard")
    for name, c in section["held_out"].items():
        if c["positive"]:
            print(f"  {name:<18} {c['n'] - c['refused']:>5}/{c['n']:<5} accepted")
        else:
            print(
                f"  {name:<18} {c['refused']:>5}/{c['n']:<5} refused   {c['refused_by_guard']:>5}/{c['n']:<5} refused"
            )
    print(f"wrote the view check into {out / 'manifest.json'} (refuse below {section['refuse_below']})")


@app.command("formats")
def list_formats() -> None:
    """List the export formats and their validation budgets."""
    from edge_pneumo.device.artifact_formats import FORMATS

    for f in FORMATS.values():
        b = (
            f"max|dp| <= {f.budget.max_abs_dp:g}"
            if f.budget.max_abs_dp is not None
            else f"agreement >= {100 * f.budget.min_agreement:g}%"
        )
        print(f"{f.name:<20} {f.runtime:<7} {f.precision:<13} {f.file:<32} {b}{'  (device)' if f.device else ''}")


@app.command("models")
@handle_errors
def list_models(
    model: ModelOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text (a table), or json.")] = "text",
) -> None:
    """List the shipped models (and --model's, when it is another folder): what each is, its input, artifacts
    and sizes, its test figures, its threshold, and the time per image `verify` measured on this device.

    Reads the manifests and the device profile only: no model is loaded.
    """
    from edge_pneumo import jsonout
    from edge_pneumo.apps.model_list import format_models, model_rows

    if fmt not in ("text", "json"):
        raise typer.BadParameter("choose text or json", param_hint="--format")
    rows = model_rows(model)
    print(jsonout.dumps({"models": rows}, indent=2) if fmt == "json" else format_models(rows))


@app.command()
@handle_errors
def infer(
    paths: Annotated[
        Optional[list[str]],
        typer.Argument(help="Image files; '-' reads paths from standard input.", show_default=False),
    ] = None,
    image: Annotated[
        Optional[list[str]],
        typer.Option(
            "--image", "-i", help="An image file (repeatable); '-' reads paths from standard input.", show_default=False
        ),
    ] = None,
    directory: Annotated[
        Optional[Path],
        typer.Option(
            "--dir", "-d", help="Classify every image file under this folder (recursive).", show_default=False
        ),
    ] = None,
    model: ModelOpt = None,
    artifact: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "With a folder: the manifest's artifact name, e.g. tflite_int8. Default: this device's fastest (see "
                "verify)."
            ),
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text, json (JSON lines) or csv.")] = "text",
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output", "-o", help="Write results to this file instead of standard output.", show_default=False
        ),
    ] = None,
    threads: Annotated[
        Optional[int],
        typer.Option(help="CPU threads for the model and decoding (default: all cores).", min=1, show_default=False),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per model call in folder runs.", min=1)] = 32,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Run an artifact whose sha256 does not match its manifest.")
    ] = False,
    no_guard: Annotated[
        bool,
        typer.Option(
            "--no-guard",
            help=(
                "Turn the input guard off, on purpose: every image is classified, even a blank page (each result says "
                "so)."
            ),
        ),
    ] = False,
    heatmap: Annotated[
        Optional[Path],
        typer.Option(
            "--heatmap", help="Write a Grad-CAM overlay PNG per classified image into this folder.", show_default=False
        ),
    ] = None,
    tta: TtaOpt = False,
    site: SiteOpt = None,
    max_pixels: MaxPixelsOpt = None,
) -> None:
    """Classify X-rays as NORMAL or PNEUMONIA with onnxruntime or LiteRT (no TensorFlow).

    Each result has a status: classified (a decision: pneumonia likely, no pneumonia found or
    indeterminate: needs a reader; the label, the probability and the threshold, and what the
    calibration rests on: the training population or a site file), rejected (the input guard says
    it is not a frontal chest X-ray, and why) or failed (unreadable file). Exit code 0: every image
    classified or rejected; 1: some images failed (the others have results); 3: nothing could run
    (bad model, no images).
    """
    from edge_pneumo.apps.infer import FORMATS, InferOptions, run_infer

    if fmt not in FORMATS:
        raise typer.BadParameter("choose text, json or csv", param_hint="--format")
    code = run_infer(
        InferOptions(
            items=[*(paths or []), *(image or [])],
            directory=directory,
            model=model,
            artifact=artifact,
            fmt=fmt,
            output=output,
            threads=threads,
            batch_size=batch_size,
            verify=not no_verify,
            guard=not no_guard,
            heatmap=heatmap,
            tta=tta,
            site=site,
            max_pixels=max_pixels,
        )
    )
    raise typer.Exit(code)


# Sending each DICOM image's answer back to the archive (serve's DICOM node, watch's DICOM files).
ForwardOpt = Annotated[
    Optional[str],
    typer.Option(
        "--forward",
        help="Send a DICOM SR for every DICOM image to this archive, AET@HOST:PORT (e.g. ORTHANC@10.0.0.5:4242), "
        "through a durable outbox.",
        show_default=False,
    ),
]
ForwardHeatmapOpt = Annotated[
    bool, typer.Option("--forward-heatmap", help="With --forward: also send the Grad-CAM overlay (Secondary Capture).")
]
OutboxOpt = Annotated[
    Optional[Path],
    typer.Option(help="The outbox folder for --forward (default: beside the results file).", show_default=False),
]
ForwardRetryOpt = Annotated[
    Optional[float],
    typer.Option(
        help="With --forward: the longest wait between two tries when the archive is down, in seconds "
        "(default: 60, outbox.OutboxOptions.retry_max_s).",
        min=0.1,
        show_default=False,
    ),
]


def _forwarder(clf, forward: str | None, heatmap: bool, outbox: Path | None, results: Path, ae_title: str, retry_max):
    """The forward.Forwarder for --forward (None without it)."""
    if forward is None:
        if heatmap:
            raise typer.BadParameter("--forward-heatmap needs --forward AET@HOST:PORT", param_hint="--forward-heatmap")
        return None
    from edge_pneumo.apps.forward import Forwarder, ForwardOptions

    folder = outbox or results.with_name(results.name + ".outbox")
    extra = {} if retry_max is None else {"retry_max_s": retry_max}
    return Forwarder(clf, ForwardOptions(forward, folder, heatmap, ae_title, **extra))


@app.command()
@handle_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on. Anything but loopback needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.", min=1, max=65535)] = 8000,
    token_file: Annotated[
        Optional[Path],
        typer.Option(help="A file holding the access token (or set EDGE_PNEUMO_TOKEN).", show_default=False),
    ] = None,
    model: ModelOpt = None,
    artifact: Annotated[
        Optional[str],
        typer.Option(help="The manifest's artifact name. Default: this device's fastest.", show_default=False),
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option(help="Uploads above this size get 413 without being read.", min=0.01)
    ] = 32.0,
    queue: Annotated[int, typer.Option(help="Requests in flight at most; more get 503 with Retry-After.", min=1)] = 8,
    dicom_port: Annotated[
        Optional[int],
        typer.Option(
            help="Also run a DICOM C-STORE node on this port (CR/DX storage).", min=1, max=65535, show_default=False
        ),
    ] = None,
    ae_title: Annotated[str, typer.Option(help="The DICOM node's own AE title.")] = "EDGEPNEUMO",
    allow_aet: Annotated[
        Optional[list[str]],
        typer.Option(
            "--allow-aet",
            help="A calling AE title allowed to send (repeatable); others are refused.",
            show_default=False,
        ),
    ] = None,
    results: Annotated[
        Path, typer.Option(help="The DICOM node's results: JSON lines with the SOPInstanceUID, each image once.")
    ] = Path("dicom_results.jsonl"),
    forward: ForwardOpt = None,
    forward_heatmap: ForwardHeatmapOpt = False,
    outbox: OutboxOpt = None,
    forward_retry_max: ForwardRetryOpt = None,
    tta: TtaOpt = False,
    site: SiteOpt = None,
    max_pixels: MaxPixelsOpt = None,
) -> None:
    """Serve a LAN page and JSON API (and optionally a DICOM node) for a clinic appliance.

    GET / (a page for people), GET /healthz, GET /api/v1/info, POST /api/v1/classify (multipart
    field 'file'; ?heatmap=1 adds the Grad-CAM overlay). Results are a screening aid, unverified
    by a radiologist. Nothing uploaded is written to disk.
    """
    from edge_pneumo.apps.serve import check_exposure, read_token, run_server
    from edge_pneumo.decoders.limits import set_max_pixels
    from edge_pneumo.decoders.stderr_capture import protect_python_stderr
    from edge_pneumo.device.classifier import Classifier

    protect_python_stderr()
    set_max_pixels(max_pixels)
    token = read_token(token_file)
    check_exposure(host, token)
    clf = Classifier.load(model, artifact=artifact, tta=tta, site=site)
    node = None
    if dicom_port is not None:
        from edge_pneumo.apps.dicom_node import DicomNode
        from edge_pneumo.apps.ledger import ResultSink

        if not allow_aet:
            raise typer.BadParameter(
                "name at least one sender with --allow-aet (e.g. --allow-aet XRAY01)", param_hint="--allow-aet"
            )
        fwd = _forwarder(clf, forward, forward_heatmap, outbox, results, ae_title, forward_retry_max)
        sink = ResultSink(results, key_field="sop_instance_uid")
        node = DicomNode(clf, sink, dicom_port, ae_title, allow_aet, forward=fwd)
    elif forward is not None:
        raise typer.BadParameter("--forward sends the DICOM node's reports: add --dicom-port", param_hint="--forward")
    run_server(clf, host, port, token=token, max_upload_mb=max_upload_mb, queue=queue, dicom=node)


@app.command()
@handle_errors
def watch(
    folder: Annotated[
        Path, typer.Argument(help="The folder to watch (recursive); images already there are classified first.")
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Results, one JSON line per image (appended; each image exactly once)."),
    ] = Path("results.jsonl"),
    model: ModelOpt = None,
    artifact: Annotated[
        Optional[str],
        typer.Option(help="The manifest's artifact name. Default: this device's fastest.", show_default=False),
    ] = None,
    poll: Annotated[
        bool,
        typer.Option("--poll", help="Poll the folder instead of inotify (network shares: SMB/NFS send no events)."),
    ] = False,
    move_done: Annotated[
        Optional[Path],
        typer.Option("--move-done", help="Move each image here once its result is recorded.", show_default=False),
    ] = None,
    ledger: Annotated[
        Optional[Path], typer.Option(help="The SQLite ledger (default: OUTPUT.ledger.sqlite).", show_default=False)
    ] = None,
    forward: ForwardOpt = None,
    forward_heatmap: ForwardHeatmapOpt = False,
    outbox: OutboxOpt = None,
    forward_retry_max: ForwardRetryOpt = None,
    ae_title: Annotated[
        str, typer.Option(help="This device's AE title when it sends reports (--forward).")
    ] = "EDGEPNEUMO",
    stable_seconds: Annotated[
        float, typer.Option(help="A file is read once its size and mtime have not changed for this long.", min=0.0)
    ] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Classify what is there now, then exit (for cron).")] = False,
    no_guard: Annotated[bool, typer.Option("--no-guard", help="Turn the input guard off, on purpose.")] = False,
    tta: TtaOpt = False,
    site: SiteOpt = None,
    max_pixels: MaxPixelsOpt = None,
) -> None:
    """Classify every image in a folder, then each new one as it arrives: nothing lost, nothing twice.

    A SQLite ledger keyed by each file's content hash makes results survive kill -9 and restart.
    """
    import signal

    from edge_pneumo.apps.ledger import ResultSink
    from edge_pneumo.apps.watch import Watcher
    from edge_pneumo.decoders.limits import set_max_pixels
    from edge_pneumo.decoders.stderr_capture import protect_python_stderr
    from edge_pneumo.device.classifier import Classifier

    protect_python_stderr()
    set_max_pixels(max_pixels)
    if not folder.is_dir():
        raise EdgePneumoError(f"{folder}: no such folder to watch")
    clf = Classifier.load(model, artifact=artifact, guard=not no_guard, tta=tta, site=site)
    fwd = _forwarder(clf, forward, forward_heatmap, outbox, output, ae_title, forward_retry_max)
    sink = ResultSink(output, ledger)
    w = Watcher(
        clf,
        folder,
        sink,
        poll=poll,
        move_done=move_done,
        stable_seconds=stable_seconds,
        log=lambda m: print(m, flush=True),
        forward=fwd,
    )
    signal.signal(signal.SIGTERM, lambda *_: w.stop())
    try:
        counts = w.run(once=once)
    except KeyboardInterrupt:
        counts = w.counts
    finally:
        sink.close()
    print(
        f"{counts['classified']} classified, {counts['rejected']} rejected, {counts['failed']} failed, "
        f"{counts['already']} already recorded; results in {output}",
        flush=True,
    )


@app.command()
@handle_errors
def batch(
    source: Annotated[
        str,
        typer.Argument(
            help="A folder (recursive), a text file listing paths/URLs, or an fsspec URL (s3://bucket/prefix, file:///data/*.dcm)."
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="results.jsonl, results.csv or results.parquet (infer's rows).")
    ],
    cluster: Annotated[
        str,
        typer.Option(
            help="local (all cores), local:N (an embedded cluster of N processes) or a scheduler address tcp://HOST:8786."
        ),
    ] = "local",
    resume: Annotated[
        bool, typer.Option("--resume", help="Keep the results already in OUTPUT and classify only the rest.")
    ] = False,
    model: ModelOpt = None,
    artifact: Annotated[
        Optional[str],
        typer.Option(help="The manifest's artifact name. Default: each worker's fastest.", show_default=False),
    ] = None,
    partition_size: Annotated[int, typer.Option(help="Inputs per Dask task.", min=1)] = 128,
    no_guard: Annotated[bool, typer.Option("--no-guard", help="Turn the input guard off, on purpose.")] = False,
    tta: TtaOpt = False,
    site: SiteOpt = None,
    max_pixels: MaxPixelsOpt = None,
) -> None:
    """Score a whole archive on a Dask cluster: the same rows as infer, streamed, resumable, each input once."""
    import sys

    from edge_pneumo.apps.batch import run_batch
    from edge_pneumo.decoders.limits import set_max_pixels
    from edge_pneumo.decoders.stderr_capture import protect_python_stderr

    protect_python_stderr()
    set_max_pixels(max_pixels)  # before the cluster starts: its local worker processes inherit it
    bar = None
    if sys.stderr.isatty():
        bar = typer.progressbar(length=1, label="classifying", file=sys.stderr)
        bar.__enter__()

    def progress(done, total):
        if bar is not None:
            bar.length = total
            bar.update(done - bar.pos)

    try:
        summary = run_batch(
            source,
            output,
            cluster,
            resume=resume,
            model=model,
            artifact=artifact,
            partition_size=partition_size,
            guard=not no_guard,
            progress=progress,
            log=lambda m: print(m, file=sys.stderr, flush=True),
            tta=tta,
            site=None if site is None else str(site.resolve()),
        )
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    rate = f" ({summary['images_per_s']:.0f} images/s once the cluster was up)" if summary["images_per_s"] else ""
    print(
        f"{summary['classified']} classified, {summary['rejected']} rejected, {summary['failed']} failed, "
        f"{summary['skipped']} already done{rate}; results in {output}",
        file=sys.stderr,
    )
    raise typer.Exit(1 if summary["failed"] else 0)


@app.command()
@handle_errors
def verify(
    folder: Annotated[
        Optional[str],
        typer.Argument(help="The same as --model (kept for older scripts).", show_default=False),
    ] = None,
    model: ModelOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    runs: Annotated[int, typer.Option(help="Timed runs per artifact for the latency figure.", min=1)] = 20,
    no_profile: Annotated[
        bool, typer.Option("--no-profile", help="Do not record the fastest artifact in this device's profile.")
    ] = False,
    site: SiteOpt = None,
) -> None:
    """Device self-check: hashes, loading, agreement on fixed inputs, the guard's parameters, and a device report.

    With --site (or $EDGE_PNEUMO_SITE): checks that the site file was made for an artifact of this folder, and shows it.

    Records the fastest artifact on this device in its profile (~/.config/edge-pneumo/device_profile.json,
    or $EDGE_PNEUMO_PROFILE), one entry per model; infer and serve then use it by default, and `edge-pneumo
    models` shows its time per image. No dataset needed.
    """
    from edge_pneumo import jsonout
    from edge_pneumo.apps.verify import format_verify_report, verify_folder

    if folder is not None and model is not None and folder != model:
        raise typer.BadParameter(f"FOLDER {folder} and --model {model} differ: give one", param_hint="--model")
    report = verify_folder(model or folder, runs=runs, write_profile=not no_profile, site=site)
    print(jsonout.dumps(report, indent=2) if json_out else format_verify_report(report))
    raise typer.Exit(EXIT_OK if report["passed"] else EXIT_FAILED)


@app.command()
@handle_errors
def calibrate(
    site: Annotated[
        Optional[Path],
        typer.Argument(
            help="The site's labelled images: a folder with NORMAL/ and PNEUMONIA/ inside (images or DICOM).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The site file to write (atomically).")] = Path("site.json"),
    labels: Annotated[
        Optional[Path],
        typer.Option(
            "--labels",
            help="Instead of SITE: a CSV of path,label[,patient] (label NORMAL/PNEUMONIA or 0/1).",
            show_default=False,
        ),
    ] = None,
    head: Annotated[
        bool,
        typer.Option(
            "--head",
            help="Also fit a site head on the model's features (logistic regression, pulled to the shipped head).",
        ),
    ] = False,
    name: Annotated[
        Optional[str],
        typer.Option(help="A name for this site, shown as `calibrated_on` in every row.", show_default=False),
    ] = None,
    model: ModelOpt = None,
    artifact: Annotated[
        Optional[str],
        typer.Option(
            help="The manifest's artifact name (the site file is bound to it). Default: this device's fastest.",
            show_default=False,
        ),
    ] = None,
    folds: Annotated[int, typer.Option(help="Patient-grouped folds for the cross-fitted report.", min=2)] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the folds.")] = 0,
    band: Annotated[
        str,
        typer.Option(
            help="How the band's finite-sample rank is rounded: 'smoothed' keeps each promise exactly on average "
            "over calibrations; 'conservative' rounds toward the stricter rank (fewer images decided).",
        ),
    ] = "smoothed",
    json_out: Annotated[bool, typer.Option("--json", help="Print the site file instead of the report.")] = False,
    max_pixels: MaxPixelsOpt = None,
) -> None:
    """Fit this device to a site: temperature, threshold and band (optionally a head) on the site's own labelled images.

    Runs the deployed artifact (no TensorFlow), so the rule-out and rule-in promises (sensitivity >= 0.97,
    specificity >= 0.95, with a finite-sample correction) are about this site's patients. Prints what it buys,
    cross-fitted by patient. Needs at least 20 images of each class; a file it cannot read, or a label it cannot
    parse, stops it with nothing written. The site file holds aggregates only. Use it with `infer --site FILE`.
    """
    import os

    # The head's fit is many small (~130 x 130) linear solves: one BLAS thread does each in well under a
    # millisecond, while a multi-threaded BLAS on a busy 2-core machine took ~30 ms each (measured).
    # Set before numpy is first imported, which is here; an explicit setting in the environment wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    from edge_pneumo import jsonout
    from edge_pneumo.apps.calibrate import format_report, run_calibrate
    from edge_pneumo.decoders.limits import set_max_pixels
    from edge_pneumo.decoders.stderr_capture import protect_python_stderr
    from edge_pneumo.lab.site_fit import BAND_RULES, SiteOptions

    if band not in BAND_RULES:
        raise typer.BadParameter(f"{band!r}: use one of {', '.join(BAND_RULES)}", param_hint="--band")
    protect_python_stderr()
    set_max_pixels(max_pixels)  # the site's images go through the same decoders and pixel budget as infer
    content = run_calibrate(
        site,
        out,
        labels_csv=labels,
        model=model,
        artifact=artifact,
        opts=SiteOptions(head=head, folds=folds, seed=seed, band=band),
        name=name,
        log=lambda m: print(m, flush=True),
    )
    print(jsonout.dumps(content, indent=2) if json_out else format_report(content))
    print(f"wrote {out} ({content['seconds']:.1f} s); use it with: edge-pneumo infer --site {out} ...")


@app.command()
@handle_errors
def drift(
    results: Annotated[
        Path, typer.Argument(help="Results of `infer --format json` (JSON lines), in the order the images arrived.")
    ],
    site: Annotated[
        Optional[Path],
        typer.Option(
            help="Judge against this site's reference (a site file, or a file --write-reference wrote). "
            "Default: the training population's, beside the model.",
            show_default=False,
        ),
    ] = None,
    model: ModelOpt = None,
    window: Annotated[
        Optional[int], typer.Option(help="Readable results per window (default 500).", min=1, show_default=False)
    ] = None,
    plot: Annotated[
        Optional[Path],
        typer.Option(help="Save a PNG: each statistic per window, with its limits (matplotlib).", show_default=False),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="text, or json: one JSON line per window.")] = "text",
    write_reference: Annotated[
        Optional[Path],
        typer.Option(
            "--write-reference",
            help="Instead of judging: measure a reference from RESULTS (a site's own images) and add it to this file.",
            show_default=False,
        ),
    ] = None,
    source: Annotated[str, typer.Option(help="With --write-reference: what population RESULTS are.")] = "site images",
) -> None:
    """Drift watch over a results file: exit 1 when a window's statistic leaves its limit (README, 'Drift watch')."""
    from edge_pneumo.apps import drift_report
    from edge_pneumo.device.drift import WINDOW

    if write_reference is not None:
        ref = drift_report.write_reference(results, write_reference, source, model)
        print(f"{write_reference}: reference for {ref.artifact} from {ref.summary['readable']} results ({source})")
        raise typer.Exit(EXIT_OK)
    if fmt not in ("text", "json"):
        raise typer.BadParameter("--format must be text or json")
    raise typer.Exit(drift_report.run(results, site, model, window or WINDOW, plot, fmt))


@app.command()
@handle_errors
def compare(
    data: Annotated[
        Path, typer.Option(help="Labelled images: DIR/test or DIR/{NORMAL,PNEUMONIA}.", envvar="EDGE_PNEUMO_DATA")
    ] = Path("../shared/data/chest_xray/test"),
    model: ModelOpt = None,
    models: Annotated[
        Optional[str], typer.Option("--models", help="The same as --model (kept for older scripts).", hidden=True)
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for REPORT.md, report.json and report.png.")] = Path("reports"),
    keras_model: Annotated[
        Optional[Path],
        typer.Option(
            "--keras-model",
            help="The float Keras reference (default: the manifest's source model, if TensorFlow is installed).",
            show_default=False,
        ),
    ] = None,
    threads: Annotated[
        int, typer.Option(help="Threads per artifact for latency (fixed for a fair comparison).", min=1)
    ] = 1,
    latency_runs: Annotated[int, typer.Option(help="Timed batch-1 runs per artifact.", min=5)] = 50,
    no_figure: Annotated[bool, typer.Option("--no-figure", help="Skip the PNG figure (needs matplotlib).")] = False,
) -> None:
    """Compare every artifact with the float model: accuracy, AUC, agreement, size, latency, memory."""
    from edge_pneumo.device.tiers import resolve_model
    from edge_pneumo.lab.compare import CompareOptions, run_compare

    if model is not None and models is not None and model != models:
        raise typer.BadParameter(f"--model {model} and --models {models} differ: give one", param_hint="--model")
    folder = resolve_model(model or models)
    code = run_compare(CompareOptions(data, folder, out, keras_model, threads, latency_runs, figure=not no_figure))
    raise typer.Exit(code)


if __name__ == "__main__":  # pragma: no cover
    app()
