"""Does the heatmap point at what the model uses? Checks for REPORT.md, the bench and the tests.

- deletion: hiding the most salient 15% of the input lowers P(PNEUMONIA) more than hiding
  the same mask moved elsewhere (the ratio of the mean drops);
- agreement: the deployed int8 artifact's maps against the float model's (Spearman rank
  correlation per image);
- randomisation (Adebayo et al. 2018): maps from the same network with randomised head
  weights must not look like the trained model's (rank correlation near 0);
- where the heat falls: the share inside a rough box around each lung field, and in the
  outer border where labels and markers sit.
Runs with the device runtime only (numpy + the artifact).
"""

from __future__ import annotations

import numpy as np

from edge_pneumo.device.explain import CamGeometry, gradcam_map

HIDE_SHARE = 0.15
# Rough lung fields on the square model input, as (x0, x1, y0, y1) fractions: left and right.
LUNG_BOXES = ((0.12, 0.47, 0.10, 0.82), (0.53, 0.88, 0.10, 0.82))
BORDER = 0.08  # the outer frame where text markers and labels sit


def maps_for(
    backend,
    x: np.ndarray,
    channel_weights: np.ndarray,
    w2: np.ndarray,
    batch: int = 64,
    geometry: CamGeometry | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(heatmaps (n, s, s), probabilities (n,)) from one artifact; `geometry`: the manifest's (default: the seed's)."""
    maps, probs = [], []
    for i in range(0, len(x), batch):
        out = backend.run(x[i : i + batch], ("probability", "features", "conv"))
        probs.append(out.probability)
        maps += [
            gradcam_map(c, f, channel_weights, w2, size=x.shape[1], geometry=geometry)
            for c, f in zip(out.conv, out.features)
        ]
    return np.stack(maps), np.concatenate(probs)


def top_mask(heatmap: np.ndarray, share: float = HIDE_SHARE) -> np.ndarray:
    flat = heatmap.ravel()
    k = max(1, int(round(share * flat.size)))
    mask = np.zeros(flat.size, bool)
    mask[np.argsort(flat, kind="stable")[-k:]] = True
    return mask.reshape(heatmap.shape)


def deletion_test(predict, x: np.ndarray, maps: np.ndarray, seed: int = 0, moves: int = 4) -> dict:
    """Mean drop in P(PNEUMONIA) when the top 15% of each map is hidden (filled with the
    image's mean), against the same mask shifted elsewhere (circularly, by a quarter to three
    quarters of the image, `moves` times)."""
    rng = np.random.default_rng(seed)
    base = predict(x)
    hidden, moved = [], []
    s = x.shape[1]
    for img, hm in zip(x, maps):
        mask = top_mask(hm)
        fill = img.mean(axis=(0, 1))
        a = img.copy()
        a[mask] = fill
        hidden.append(a)
        for _ in range(moves):
            shift = (int(rng.integers(s // 4, 3 * s // 4)), int(rng.integers(s // 4, 3 * s // 4)))
            b = img.copy()
            b[np.roll(mask, shift, axis=(0, 1))] = fill
            moved.append(b)
    drop_salient = base - predict(np.stack(hidden))
    drop_moved = (np.repeat(base, moves) - predict(np.stack(moved))).reshape(len(x), moves).mean(axis=1)
    ds, dm = float(drop_salient.mean()), float(drop_moved.mean())
    return {"images": int(len(x)), "drop_salient": ds, "drop_moved": dm, "ratio": ds / dm if dm > 0 else float("inf")}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a.ravel(), kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b.ravel(), kind="stable"), kind="stable").astype(np.float64)
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den else 0.0


def map_agreement(maps_a: np.ndarray, maps_b: np.ndarray) -> dict:
    r = np.array([spearman(a, b) for a, b in zip(maps_a, maps_b)])
    return {"images": int(len(r)), "spearman_mean": float(r.mean()), "spearman_p05": float(np.percentile(r, 5))}


def heat_location(maps: np.ndarray) -> dict:
    n, s, _ = maps.shape
    lungs = np.zeros((s, s), bool)
    for x0, x1, y0, y1 in LUNG_BOXES:
        lungs[int(y0 * s) : int(y1 * s), int(x0 * s) : int(x1 * s)] = True
    border = np.ones((s, s), bool)
    b = max(1, int(BORDER * s))
    border[b:-b, b:-b] = False
    total = maps.sum(axis=(1, 2)) + 1e-12
    inside = maps[:, lungs].sum(axis=1) / total
    edge = maps[:, border].sum(axis=1) / total
    return {
        "lung_box_share_of_area": float(lungs.mean()),
        "heat_in_lung_boxes": float(inside.mean()),
        "border_share_of_area": float(border.mean()),
        "heat_in_border": float(edge.mean()),
    }


def randomised_head_agreement(
    conv: np.ndarray,
    features: np.ndarray,
    channel_weights: np.ndarray,
    w2: np.ndarray,
    draws: int = 10,
    seed: int = 0,
    geometry: CamGeometry | None = None,
    size: int = 64,
) -> dict:
    """Cascading randomisation of the head (Adebayo et al.): the same activations, weighed by
    random Dense weights of the same scale. A map that survives this does not explain the model.

    Averaged over `draws` random heads: one draw is a coin toss (on the same 60 images, single
    draws of one model range from -0.45 to +0.56), the mean is what says whether maps survive."""
    rng = np.random.default_rng(seed)
    s, g = size, geometry
    trained = np.stack([gradcam_map(c, f, channel_weights, w2, s, g) for c, f in zip(conv, features)])
    per_draw = []
    for _ in range(draws):
        rand_g = rng.normal(0, channel_weights.std(), channel_weights.shape).astype(np.float32)
        rand_w2 = rng.normal(0, w2.std(), w2.shape).astype(np.float32)
        random = np.stack([gradcam_map(c, f, rand_g, rand_w2, s, g) for c, f in zip(conv, features)])
        per_draw.append(map_agreement(trained, random)["spearman_mean"])
    return {
        "images": int(len(trained)),
        "draws": draws,
        "spearman_mean": float(np.mean(per_draw)),
        "spearman_draw_min": float(np.min(per_draw)),
        "spearman_draw_max": float(np.max(per_draw)),
    }
