#!/usr/bin/env bash
# DALL·E 3's caption-blend experiment on shapes (issue #17 item 6; README.md here): the DALL·E 1 transformer trained
# for 400 equal steps on alt captions / 95% short synthetic / 65-95% descriptive synthetic (our captioners' zoo-recaption
# files) / 95% the world's true descriptive captions, each with alt for the rest; then scored on descriptive prompts,
# on short prompts, and on short prompts rewritten by the prompt upsampler.
# Needs the chain of README.md rows 0-8 (the CLIP, the recaptioned split, the prompt upsampler) and make demo's VQ-VAE
# in logs/dalle3/tokenizer/last.ckpt. A finished row (metrics.json) is skipped, an interrupted one resumes.
#   bash experiments/dalle3/blend.sh              # PARALLEL=1: two trainings side by side, one thread each
#   MODEL=glide bash experiments/dalle3/blend.sh  # the GLIDE column: the same blends (conf/experiment/dalle3/glide)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
LOGS=${ZOO_LOG_DIR:-logs}
CACHE=${ZOO_CACHE_DIR:-.zoo_cache}
ROWS=(alt short95 desc65 desc80 desc90 desc95 oracle95)
case "${MODEL:=dalle}" in  # the column: its training configs' folder and its eval experiments' prefix
  dalle) COL=t2i; EVAL=blend; NEEDS=("$LOGS/dalle3/tokenizer/last.ckpt") ;;
  glide) COL=glide; EVAL=glide_blend; NEEDS=() ;;
  *) echo "error: MODEL=$MODEL (fix: MODEL=dalle or MODEL=glide)"; exit 2 ;;
esac
for f in "${NEEDS[@]}" "$LOGS/dalle3/clip/last.ckpt" \
  "$LOGS/dalle3/prompt_upsampler/checkpoints/last.ckpt" \
  "$CACHE/recaptions/dalle3/shapes_train_synthetic_descriptive.pt" "$CACHE/recaptions/dalle3/shapes_train_synthetic_short.pt"; do
  [ -f "$f" ] || { echo "error: $f is missing (fix: run the steps of experiments/dalle3/README.md rows 0-8 first)"; exit 2; }
done

train() {  # train <row>: zoo-train unless it finished; resume from last.ckpt if it was interrupted
  local run="$LOGS/dalle3/$COL/$1" resume=()
  if [ -f "$run/metrics.json" ]; then echo "=== dalle3/$COL/$1: done earlier ($run)"; return; fi
  # interrupted.ckpt too: a run stopped before its first last.ckpt (zoo-train refuses a new run beside either)
  if [ -f "$run/checkpoints/last.ckpt" ] || [ -f "$run/checkpoints/interrupted.ckpt" ]; then resume=(ckpt_path=last); fi
  echo "=== zoo-train experiment=dalle3/$COL/$1 ${resume[*]}"
  $PY -m zoo.train "experiment=dalle3/$COL/$1" "${resume[@]}"
}
mkdir -p "$LOGS/dalle3/$COL"
if [ "${PARALLEL:-0}" = 1 ]; then  # two at a time, one thread each
  set -- "${ROWS[@]}"
  while [ $# -gt 0 ]; do
    (export OMP_NUM_THREADS=1; train "$1" > "$LOGS/dalle3/$COL/$1.log" 2>&1) & a=$!
    if [ $# -gt 1 ]; then (export OMP_NUM_THREADS=1; train "$2" > "$LOGS/dalle3/$COL/$2.log" 2>&1) & b=$!; wait $b; fi
    wait $a
    shift $(( $# > 1 ? 2 : 1 ))
  done
else
  for r in "${ROWS[@]}"; do train "$r"; done
fi

labels=$(IFS=,; echo "${ROWS[*]}")
for prompts in descriptive short short_upsampled; do
  echo "=== zoo-eval -m experiment=dalle3/${EVAL}_$prompts"
  $PY -m eval.cli -m "experiment=dalle3/${EVAL}_$prompts"
  $PY -m eval.leaderboard "${ROWS[@]/#/$LOGS/eval/dalle3/${EVAL}_$prompts/}" --labels "$labels" \
    --out "experiments/dalle3/${EVAL}_$prompts" --title "DALL·E 3 caption blends on shapes ($MODEL): $prompts prompts"
done
