"""The input guard: refuse what is not a frontal chest X-ray, before the model is believed.

A sigmoid model answers for anything; its own confidence says nothing about whether the
input is an X-ray (a blank page scores PNEUMONIA 0.99). So the guard never looks at the
output probability. It has three layers, cheapest first:

1. **DICOM header rules** (`DICOM_RULES`, one table, as data), before any pixel is decoded:
   a CT, an ultrasound, a lateral view, a head, a colour or multi-frame file is refused from
   its tags. A missing tag is "unknown", not a refusal.
2. **Pixel checks** on the grey image resized to the model's input, before CLAHE (which
   would stretch a blank page into texture): colour, near-constant images, extreme aspect
   ratios, fine texture or noise (or none at all), and the *layout* of a frontal chest X-ray: a 16x16
   thumbnail, normalised, compared with the principal components of the training images.
   An image whose negative fits the layout (a MONOCHROME1/2 mix-up) is re-inverted, with a
   warning.
3. **The deployed model's own features**: the Mahalanobis distance of the Dense(128)
   activations (a second output of every artifact) from the training images'.

Every limit is derived from training images at export (`training/guard_fit.py`) and lives
in the manifest and its parameter file; `verify` checks them. Two levels per score: above
`refuse` the image is rejected with a reason a person can act on; above `warn` it is
classified with a warning that it is unlike the training population (e.g. an adult).
Only OpenCV and numpy here: this runs on the device.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_pneumo.decoders.pixels import GreyImage

LAYOUT_SIZE = 16  # thumbnail side for the layout check


class HeaderRule:
    """One DICOM tag: a present value outside `accept` refuses the file with `reason` (formatted with {value}).

    Plain classes in this module, not dataclasses: each @dataclass costs ~0.5 ms at import,
    on every `infer` start."""

    __slots__ = ("tag", "accept", "reason")

    def __init__(self, tag: str, accept: frozenset, reason: str):
        self.tag, self.accept, self.reason = tag, accept, reason

    def check(self, header: dict) -> str | None:
        value = header.get(self.tag)
        if value is None:
            return None  # missing: unknown, not a refusal
        if self.tag == "NumberOfFrames":
            try:
                return None if int(float(value)) <= 1 else self.reason.format(value=value)
            except ValueError:
                return None
        return None if str(value).strip().upper() in self.accept else self.reason.format(value=value)


# Like MONAI Deploy's series selector: the rules are data, read in order, the first refusal wins.
DICOM_RULES: tuple[HeaderRule, ...] = (
    HeaderRule(
        "Modality",
        frozenset({"CR", "DX"}),
        "not a chest X-ray: DICOM modality {value}; the model reads radiographs (CR or DX)",
    ),
    HeaderRule(
        "BodyPartExamined",
        frozenset({"CHEST"}),
        "not a chest X-ray: DICOM body part {value}; the model reads chest radiographs",
    ),
    HeaderRule(
        "ViewPosition", frozenset({"PA", "AP"}), "{value} view; the model reads frontal (PA or AP) chest X-rays"
    ),
    HeaderRule(
        "PhotometricInterpretation",
        frozenset({"MONOCHROME1", "MONOCHROME2"}),
        "not a chest X-ray: colour DICOM ({value}); radiographs are MONOCHROME1/2",
    ),
    HeaderRule(
        "NumberOfFrames", frozenset(), "not a single radiograph: DICOM with {value} frames (a cine loop or a volume)"
    ),
)


def check_dicom_header(header: dict) -> str | None:
    """The first rule the header breaks, as a reason, or None."""
    for rule in DICOM_RULES:
        reason = rule.check(header)
        if reason:
            return reason
    return None


def rules_as_data() -> list[dict]:
    """The rule table as the manifest records it."""
    return [
        {"tag": r.tag, "accept": sorted(r.accept) if r.accept else "at most 1", "reason": r.reason} for r in DICOM_RULES
    ]


# --- scores ----------------------------------------------------------------------------


def contrast(small: np.ndarray) -> float:
    """Standard deviation of the resized grey image (0 for a blank page). OpenCV's, in one C call:
    the same float64 value as numpy's `small.std()` (all 5,840 dataset images), ~15x faster."""
    return float(cv2.meanStdDev(small)[1][0, 0])


def _mean32(f: np.ndarray) -> np.floating:
    """numpy's `f.mean()` for a float32 array (the same operations and types), without its wrapper."""
    total = np.add.reduce(f, axis=None)
    return total.dtype.type(total / np.intp(f.size))


def _mean_var32(f: np.ndarray) -> tuple[np.floating, np.floating]:
    """numpy's `f.mean()` and `f.var()` for a float32 array: the very operations numpy's own Python
    wrapper runs, in the same order and types (so the same bits), without its ~20-30 us of overhead."""
    n = np.intp(f.size)
    m = np.add.reduce(f, axis=None, keepdims=True)
    np.true_divide(m, n, out=m, casting="unsafe")
    x = np.subtract(f, m)
    np.square(x, out=x)
    total = np.add.reduce(x, axis=None)
    return m.flat[0], total.dtype.type(total / n)


def texture(small: np.ndarray) -> float:
    """Share of the image's variance in fine detail: what a 3x3 mean, applied twice, removes
    (measured away from the 2-pixel border, so the filter's border rule does not matter).

    Radiographs at 64 px are smooth; noise, gravel, text and checkerboards are not."""
    f = small.astype(np.float32)
    var = float(_mean_var32(f)[1])
    if var < 1e-6:
        return 0.0
    detail = (f - cv2.blur(cv2.blur(f, (3, 3)), (3, 3)))[2:-2, 2:-2]
    return float(_mean32(detail * detail) / var)


def layout_vector(small: np.ndarray) -> np.ndarray:
    """A LAYOUT_SIZE^2 thumbnail, zero mean and unit variance (brightness and contrast removed)."""
    t = cv2.resize(small, (LAYOUT_SIZE, LAYOUT_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    mean, var = _mean_var32(t)
    return (t - mean) / (np.sqrt(var) + 1e-3)


def layout_residual(v: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """RMS of what the training images' principal components cannot explain (rows of v)."""
    z = np.atleast_2d(v) - mean
    r = z - (z @ basis.T) @ basis
    sq = np.multiply(r, r, out=r)
    ms = np.add.reduce(sq, axis=1)  # numpy's mean(axis=1), without its wrapper: the same bits
    return np.sqrt(np.true_divide(ms, np.intp(sq.shape[1]), out=ms, casting="unsafe"))


# --- the same scores for a stack of images (n, s, s): one numpy call per step, not per image ---------
# A folder run checks a few images at once (a task of classifier.predict_many). Each function gives,
# image by image, the bits of its one-image counterpart above (the same float32 operations on the
# same values: tests/test_guard.py compares them), so a score never depends on which images came with it.


def _row_mean_var32(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_mean_var32` of each row of f (n, k): per row, numpy's pairwise sum over k values, as for one image."""
    n = np.intp(f.shape[1])
    m = np.add.reduce(f, axis=1, keepdims=True)
    np.true_divide(m, n, out=m, casting="unsafe")
    x = np.subtract(f, m)
    np.square(x, out=x)
    return m, (np.add.reduce(x, axis=1, keepdims=True) / n).astype(np.float32)


def texture_many(smalls: np.ndarray) -> list[float]:
    """`texture` of each image of a stack. The stack is blurred as one tall image: the two 3x3 means
    reach 2 pixels, and only pixels at least 2 from an image's edge are measured, so no image's
    score sees its neighbour (OpenCV sums the box in float64, exactly, whatever came before)."""
    n, h, w = smalls.shape
    f = smalls.astype(np.float32).reshape(n * h, w)
    var = _row_mean_var32(f.reshape(n, h * w))[1][:, 0]
    detail = (f - cv2.blur(cv2.blur(f, (3, 3)), (3, 3))).reshape(n, h, w)[:, 2:-2, 2:-2]
    sq = (detail * detail).reshape(n, -1)
    fine = (np.add.reduce(sq, axis=1) / np.intp(sq.shape[1])).astype(np.float32)
    return [0.0 if float(v) < 1e-6 else float(d / v) for d, v in zip(fine, var)]


def layout_vectors(smalls: np.ndarray) -> np.ndarray:
    """`layout_vector` of each image of a stack, as rows (n, LAYOUT_SIZE^2). One INTER_AREA resize of
    the tall stack: each output pixel averages its own 4x4 block, and the blocks never straddle two
    images (the side is a multiple of LAYOUT_SIZE; otherwise each image is resized alone)."""
    n, h, w = smalls.shape
    if h % LAYOUT_SIZE or w % LAYOUT_SIZE:
        return np.stack([layout_vector(s) for s in smalls])
    tall = cv2.resize(smalls.reshape(n * h, w), (LAYOUT_SIZE, n * LAYOUT_SIZE), interpolation=cv2.INTER_AREA)
    t = tall.astype(np.float32).reshape(n, LAYOUT_SIZE * LAYOUT_SIZE)
    mean, var = _row_mean_var32(t)
    return (t - mean) / (np.sqrt(var) + 1e-3)


def layout_residual_rows(v: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """`layout_residual` of each row of v, each row as its own (1, d) product: numpy loops over the
    rows in C, and each is the very BLAS call one image makes (a matrix product of all rows at once
    may round differently)."""
    z = (v - mean)[:, None, :]
    r = z - (z @ basis.T) @ basis
    sq = np.multiply(r, r, out=r)[:, 0, :]
    ms = np.add.reduce(sq, axis=1)
    return np.sqrt(np.true_divide(ms, np.intp(sq.shape[1]), out=ms, casting="unsafe"))


def feature_distance(h: np.ndarray, mean: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of feature rows h: |W (h - mean)|, with W^T W = inverse covariance. Each row
    is its own (1, k) product, the BLAS call one image makes: a product of all rows at once rounds
    differently with the number of rows, so an image's distance would depend on its batch."""
    z = (np.atleast_2d(h).astype(np.float32) - mean)[:, None, :] @ whitening.T
    z = z[:, 0, :]
    return np.sqrt((z * z).sum(axis=1))


# --- the guard -------------------------------------------------------------------------


class Limit:
    __slots__ = ("refuse", "warn")

    def __init__(self, refuse: float, warn: float | None = None):
        self.refuse, self.warn = refuse, warn


class PixelVerdict:
    __slots__ = ("reason", "check", "inverted", "scores", "warnings")

    def __init__(self):
        self.reason: str | None = None  # set: rejected
        self.check = ""
        self.inverted = False  # the negative fits: classify 255 - image
        self.scores: dict = {}
        self.warnings: list[str] = []


OUT_OF_POPULATION = (
    "unlike the training images (paediatric frontal chest X-rays) in {what}; "
    "the answer may be less reliable for this image"
)


class Guard:
    """The guard's limits and reference statistics for one artifact (from manifest + parameter file)."""

    def __init__(
        self,
        max_colour: float,
        min_contrast: float,
        max_texture: float,
        min_texture: float,
        aspect: tuple[float, float],
        layout: Limit,
        layout_mean: np.ndarray,
        layout_basis: np.ndarray,
        features: Limit | None = None,
        feature_mean: np.ndarray | None = None,
        feature_whitening: np.ndarray | None = None,
    ):
        self.max_colour, self.min_contrast = max_colour, min_contrast
        self.max_texture, self.min_texture = max_texture, min_texture
        self.aspect = aspect  # allowed width/height
        self.layout, self.layout_mean, self.layout_basis = layout, layout_mean, layout_basis
        self.features, self.feature_mean, self.feature_whitening = features, feature_mean, feature_whitening

    @classmethod
    def from_manifest(cls, section: dict, arrays, artifact: str) -> Guard:
        px = section["pixels"]
        lay = section["layout"]
        feats = section.get("features", {}).get(artifact)
        return cls(
            max_colour=float(px["max_colour"]),
            min_contrast=float(px["min_contrast"]),
            max_texture=float(px["max_texture"]),
            min_texture=float(px["min_texture"]),
            aspect=(float(px["aspect"][0]), float(px["aspect"][1])),
            layout=Limit(float(lay["refuse"]), float(lay["warn"])),
            layout_mean=np.asarray(arrays["layout/mean"], np.float32),
            layout_basis=np.asarray(arrays["layout/basis"], np.float32),
            features=Limit(float(feats["refuse"]), float(feats["warn"])) if feats else None,
            feature_mean=np.asarray(arrays[f"{artifact}/feature_mean"], np.float32) if feats else None,
            feature_whitening=np.asarray(arrays[f"{artifact}/feature_whitening"], np.float32) if feats else None,
        )

    def check_pixels(self, image: GreyImage, small: np.ndarray) -> PixelVerdict:
        """Layer 2, on the decoded image and its resized grey (before CLAHE)."""
        return self.check_pixels_many([image], [small])[0]

    def check_pixels_many(self, images: list[GreyImage], smalls: list[np.ndarray]) -> list[PixelVerdict]:
        """`check_pixels` for a few images at once: the checks in the same order, the first failure
        rejects, and the scores that take numpy work (texture, layout) run on the images still in,
        stacked, with the bits of one image at a time."""
        verdicts = [PixelVerdict() for _ in images]
        live = [i for i in range(len(images)) if self._cheap_checks(verdicts[i], images[i], smalls[i])]
        if live:
            scores = texture_many(np.stack([smalls[i] for i in live]))
            live = [i for i, t in zip(live, scores) if self._texture_check(verdicts[i], t)]
        if live:
            vectors = layout_vectors(np.stack([smalls[i] for i in live]))
            residuals = layout_residual_rows(vectors, self.layout_mean, self.layout_basis)
            for i, vec, score in zip(live, vectors, residuals):
                self._layout_check(verdicts[i], vec, float(score))
        return verdicts

    def _cheap_checks(self, v: PixelVerdict, image: GreyImage, small: np.ndarray) -> bool:
        """Colour, contrast and aspect ratio; False: rejected (the reason is in v)."""
        w, h = image.size if image.size[0] and image.size[1] else (image.pixels.shape[1], image.pixels.shape[0])
        s = v.scores
        s["colour"] = round(image.colour, 2)
        if image.colour > self.max_colour:
            _reject(v, "colour", "not a chest X-ray: a colour image (photograph or colour scan); X-rays are grey")
            return False
        s["contrast"] = round(contrast(small), 2)
        if s["contrast"] < self.min_contrast:
            _reject(v, "contrast", "not a chest X-ray: blank or nearly uniform image")
            return False
        ratio = w / h
        if not self.aspect[0] <= ratio <= self.aspect[1]:
            _reject(
                v,
                "aspect",
                f"not a chest X-ray: {w}x{h} px is too elongated (width/height {ratio:.2f}, "
                f"allowed {self.aspect[0]:.2f}-{self.aspect[1]:.2f})",
            )
            return False
        return True

    def _texture_check(self, v: PixelVerdict, texture_score: float) -> bool:
        v.scores["texture"] = round(texture_score, 4)
        if v.scores["texture"] > self.max_texture:
            _reject(v, "texture", "not a chest X-ray: fine texture or noise throughout, unlike a radiograph")
            return False
        if v.scores["texture"] < self.min_texture:
            _reject(v, "texture", "not a chest X-ray: no fine detail at all (a drawing, a gradient or a blurred image)")
            return False
        return True

    def _layout_check(self, v: PixelVerdict, vec: np.ndarray, score: float) -> None:
        """The layout against the training X-rays' principal components; a negative that fits is re-inverted."""
        s = v.scores
        s["layout"] = round(score, 4)
        if score > self.layout.refuse:
            inverted = float(layout_residual(-vec, self.layout_mean, self.layout_basis)[0])
            if inverted <= (self.layout.warn or self.layout.refuse):
                v.inverted = True
                s["layout"] = round(inverted, 4)
                v.warnings.append(
                    "the image looks inverted (a negative: bone dark, lungs bright; a MONOCHROME1/2 "
                    "mix-up?); it was classified re-inverted"
                )
                return
            _reject(
                v,
                "layout",
                "not a frontal chest X-ray: its layout matches none of the training X-rays "
                f"(layout score {score:.2f} > {self.layout.refuse:.2f})",
            )
            return
        if self.layout.warn is not None and score > self.layout.warn:
            v.warnings.append(OUT_OF_POPULATION.format(what="layout"))

    def check_features(self, features: np.ndarray) -> list[tuple[float, str | None, str | None]]:
        """Layer 3, per row of the model's features: (distance, rejection reason or None, warning or None)."""
        if self.features is None or features is None:
            return [(float("nan"), None, None)] * len(features if features is not None else [])
        d = feature_distance(features, self.feature_mean, self.feature_whitening)
        out = []
        for x in d:
            x = float(x)
            if x > self.features.refuse:
                out.append(
                    (
                        x,
                        "not a chest X-ray the model can read: unlike every training X-ray in the model's own "
                        f"features (distance {x:.1f} > {self.features.refuse:.1f})",
                        None,
                    )
                )
            elif self.features.warn is not None and x > self.features.warn:
                out.append((x, None, OUT_OF_POPULATION.format(what="the model's features")))
            else:
                out.append((x, None, None))
        return out


def _reject(v: PixelVerdict, check: str, reason: str) -> PixelVerdict:
    v.reason, v.check = reason, check
    return v
