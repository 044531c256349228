#!/usr/bin/env bash
# The shipped recipe (issue 13) over three seeds, and the same without the teacher (seed 0).
# Each run trains in its own folder and appends its test look to exported/test_evaluations.jsonl.
#
# Rule, fixed before the runs: ship the distilled seed with the highest validation AUC (its run
# record's `validation.auc`); the test split decides nothing.
#
#   bash experiments/seed_spread.sh ../shared/data/chest_xray /tmp/students [extra train options...]
#
# Round 1 (logged with --holdout-family NORMAL2): every NORMAL2 image held out of the validation run,
# threshold on them + validation pneumonia. Round 2 (the shipped rule): threshold on the validation
# split's NORMAL2 normals + validation pneumonia, the validation run trained like the final model.
# Round 3 (session 4): SOFT=<teacher v2 file> PLAIN=0 PREFIX=v2 (then PREFIX=v2seedaug ... --augment seed).
# Round 12 (session 8): SOFT=experiments/teacher_oof_soft_labels.json PLAIN=0 PREFIX=e50oof, and
# SOFT=none PLAIN=0 PREFIX=e50plain (no teacher, same validation split), and
# SOFT=experiments/teacher_wide_soft_labels.json PLAIN=0 PREFIX=e50wideT2 ... --teacher-temperature 2.
set -euo pipefail
DATA=${1:-../shared/data/chest_xray}
OUT=${2:-/tmp/students}
shift 2 || true
SOFT=${SOFT:-exported/teacher_soft_labels.json}  # "none": the seeds without a teacher, on the teacher's split (seed 0)
PLAIN=${PLAIN:-1}  # 0: skip the plain (not distilled) run
PREFIX=${PREFIX:-distilled}
mkdir -p "$OUT"
run() {  # name, train options...
  local name=$1; shift
  mkdir -p "$OUT/$name"
  cp exported/test_evaluations.jsonl "$OUT/$name/"
  edge-pneumo train --data "$DATA" --out "$OUT/$name" "$@" 2>&1 \
    | grep --line-buffered -v "E0000\|WARNING\|oneDNN\|I0000" | tee "$OUT/$name/log.txt"
  cp "$OUT/$name/test_evaluations.jsonl" exported/test_evaluations.jsonl
}
for seed in ${SEEDS:-0 1 2}; do
  if [ "$SOFT" = none ]; then
    run "${PREFIX}_seed$seed" --seed "$seed" --split-seed 0 "$@"
  else
    run "${PREFIX}_seed$seed" --seed "$seed" --teacher "$SOFT" --distill-alpha 0.5 "$@"
  fi
done
if [ "$PLAIN" = 1 ]; then run "plain_seed0" --seed 0 "$@"; fi
