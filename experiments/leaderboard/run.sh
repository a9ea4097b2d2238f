#!/usr/bin/env bash
# The project's headline table: DALL·E 1, GLIDE (its own caption encoder, and make demo's CLIP text tower frozen), unCLIP (diffusion prior) and unCLIP (AR prior) on one zoo-eval
# shapes protocol (32 px, 256 val captions, one raw sample per caption, the demo CLIP as the metrics CLIP).
# Needs `make demo` first (its tokenizer, DALL·E, CLIP and CLIP embeddings). Each training step is skipped when its
# run already finished (metrics.json), so an interrupted run picks up where it stopped (zoo-train resumes from
# last.ckpt with ckpt_path=last). Usage: bash experiments/leaderboard/run.sh   (or: make leaderboard)
#   PARALLEL=1 bash experiments/leaderboard/run.sh   # train the pairs side by side, one thread each (2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
LOGS=${ZOO_LOG_DIR:-logs}
for f in "$LOGS/demo/clip/checkpoints/last.ckpt" "$LOGS/demo/dalle/checkpoints/last.ckpt" "$LOGS/demo/embed/train.pt"; do
  [ -f "$f" ] || { echo "error: $f is missing (fix: run make demo first)"; exit 2; }
done

train() {  # train <experiment>: zoo-train unless its run finished; resume from last.ckpt if it was interrupted
  local run="$LOGS/leaderboard/$1" resume=()
  if [ -f "$run/metrics.json" ]; then echo "=== leaderboard/$1: done earlier ($run)"; return; fi
  # interrupted.ckpt too: a run stopped before its first last.ckpt (zoo-train refuses a new run beside either)
  if [ -f "$run/checkpoints/last.ckpt" ] || [ -f "$run/checkpoints/interrupted.ckpt" ]; then resume=(ckpt_path=last); fi
  echo "=== zoo-train experiment=leaderboard/$1 ${resume[*]}"
  $PY -m zoo.train "experiment=leaderboard/$1" "${resume[@]}"
}
pair() {  # two trainings of equal budget: side by side on one thread each, or one after the other
  if [ "${PARALLEL:-0}" = 1 ]; then
    (export OMP_NUM_THREADS=1; train "$1" > "$LOGS/leaderboard_$1.log" 2>&1) & local a=$!
    (export OMP_NUM_THREADS=1; train "$2" > "$LOGS/leaderboard_$2.log" 2>&1) & local b=$!
    wait $a && wait $b
  else
    train "$1" && train "$2"
  fi
}
mkdir -p "$LOGS/leaderboard"
pair glide decoder      # same U-Net, same budget: caption vs caption + CLIP image embedding
pair prior ar_prior     # same budget: diffusion vs autoregressive prior
train glide_clip_text   # GLIDE with make demo's CLIP text tower, frozen (1,190 fixed steps: ~13 min on one thread)

for row in dalle glide glide_clip_text unclip_diffusion unclip_ar; do
  echo "=== zoo-eval experiment=leaderboard/$row"
  $PY -m eval.cli "experiment=leaderboard/$row"
done
$PY -m eval.leaderboard "$LOGS"/eval/leaderboard/{dalle,glide,glide_clip_text,unclip_diffusion,unclip_ar} \
  --labels "DALL·E 1 (transformer),GLIDE,GLIDE (frozen CLIP text tower),unCLIP (diffusion prior),unCLIP (AR prior)" \
  --out experiments/leaderboard --title "shapes leaderboard (32 px, 256 captions, 1 sample each)"
