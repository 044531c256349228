"""A diagnostic look at the test split for a teacher's saved models (`teacher --save-models`).

It chooses nothing: the student is shipped by the rule in README.md. It answers one question
the student runs cannot: is the teacher itself better than the student on the test split? (If
it is not, distillation has nothing to pass on.) The look is appended to
exported/test_evaluations.jsonl like every other.

    python experiments/teacher_test_look.py --data ../shared/data/chest_xray --soft /tmp/teacher/teacher_soft_labels.json
    (with `teacher --folds k`, every fold's model is scored and the ensemble is their mean)
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_pneumo import jsonout
from edge_pneumo.lab.dataset import discover, find_split, load_images
from edge_pneumo.lab.metrics import binary_report
from edge_pneumo.device.preprocess import Preprocessing
from edge_pneumo.training.fit import predict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--soft", type=Path, required=True, help="the soft-label file; its .seedN.keras models sit beside it")
    ap.add_argument("--log", type=Path, default=Path("exported/test_evaluations.jsonl"))
    ap.add_argument("--name", default="teacher")
    args = ap.parse_args()
    import keras

    record = json.loads(args.soft.read_text())["record"]
    pre = Preprocessing.from_dict(record["preprocessing"])
    test = load_images(discover(find_split(args.data, "test")), pre)
    probs = {}
    folds = int(record.get("folds") or 1)  # out-of-fold teachers: .seedN.foldK.keras, all used on test
    for seed in record["seeds"]:
        for name in [f"seed{seed}"] if folds == 1 else [f"seed{seed}.fold{k}" for k in range(folds)]:
            model = keras.models.load_model(args.soft.with_name(f"{args.soft.stem}.{name}.keras"), compile=False)
            probs[name] = predict(model, test.x, batch_size=64)
    probs["ensemble"] = np.mean(list(probs.values()), axis=0)
    out = {k: binary_report(test.y, p, 0.5) for k, p in probs.items()}
    for k, m in out.items():
        print(f"{args.name} {k}: test AUC {m['auc']:.4f}, accuracy at 0.5 {m['accuracy']:.4f}")
    entry = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "command": f"experiments/teacher_test_look.py --soft {args.soft}", "what": f"diagnostic: {args.name} "
             "(not shipped, chooses nothing)", "teacher_split": record["split"],
             "auc": out["ensemble"]["auc"], "accuracy": out["ensemble"]["accuracy"], "threshold": 0.5,
             "members_auc": {k: m["auc"] for k, m in out.items() if k != "ensemble"}}
    with args.log.open("a") as f:
        f.write(jsonout.dumps(entry) + "\n")


if __name__ == "__main__":
    main()
