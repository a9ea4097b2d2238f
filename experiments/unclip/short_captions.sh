#!/usr/bin/env bash
# unCLIP vs GLIDE diversity where a caption leaves room for it (experiments/unclip/README.md, section 3b).
#
# A descriptive shapes caption fixes every attribute, and the world renders those to one image, so the right
# diversity for it is zero. Here every model of the comparison is trained on a 50/50 mix of descriptive and short
# captions ("a red circle": the main subject only), and scored on short captions, whose real scenes differ in
# everything else. The chain, each stage as in make demo / make leaderboard, in its own log dir:
#   CLIP (demo/clip, 2.5 min) -> zoo-embed -> diffusion prior (5 min) -> unCLIP decoder (1,317 steps)
#   GLIDE with that CLIP's text tower frozen (glide/clip_text, 1,190 steps)
#   zoo-eval on short captions at guidance 3 and 1, both models; then the prior's and the real scenes' spread.
# About 50 minutes on one thread (as measured: training 35 min, each evaluation 2-3.5 min). Stages that finished (their metrics.json) are skipped on a re-run.
#   bash experiments/unclip/short_captions.sh                 # -> logs/short_captions/...
#   LOGS=/elsewhere bash experiments/unclip/short_captions.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export ZOO_LOG_DIR=${LOGS:-logs/short_captions}
L=$ZOO_LOG_DIR
MIX='data.caption_mix={descriptive:0.5,short:0.5}'

train() {  # train <run dir> <zoo-train overrides...>: skipped when the run finished, resumed when interrupted
  local run=$1 resume=(); shift
  if [ -f "$run/metrics.json" ]; then echo "=== $run: done earlier"; return; fi
  if [ -f "$run/checkpoints/last.ckpt" ] || [ -f "$run/checkpoints/interrupted.ckpt" ]; then resume=(ckpt_path=last); fi
  echo "=== zoo-train $* ${resume[*]}"
  $PY -m zoo.train "$@" "${resume[@]}"
}

train "$L/demo/clip" experiment=demo/clip "$MIX" "hydra.run.dir=$L/demo/clip"
for s in train val test; do
  [ -f "$L/demo/embed/$s.pt" ] && continue
  $PY -m zoo.embed "clip.checkpoint=$L/demo/clip/checkpoints/last.ckpt" data=shapes data.train_size=4096 \
    data.val_size=256 data.test_size=256 "split=$s" "out=$L/demo/embed/$s.pt" "hydra.run.dir=$L/demo/embed/$s" "$MIX"
done
train "$L/leaderboard/prior" experiment=leaderboard/prior
train "$L/leaderboard/decoder" experiment=leaderboard/decoder "$MIX" '~callbacks.time_budget' \
  trainer.max_steps=1317 trainer.val_check_interval=1317
train "$L/glide/clip_text" experiment=glide/clip_text "$MIX"

for g in 3 1; do
  [ -f "$L/eval/short/unclip_g$g/results.json" ] || $PY -m eval.cli experiment=leaderboard/unclip_diffusion \
    protocol.caption_style=short "generator.decoder_guidance_scale=$g" "hydra.run.dir=$L/eval/short/unclip_g$g"
  [ -f "$L/eval/short/glide_g$g/results.json" ] || $PY -m eval.cli experiment=leaderboard/glide_clip_text \
    protocol.caption_style=short "generator.glide_ckpt=$L/glide/clip_text/checkpoints/last.ckpt" \
    "generator.guidance_scale=$g" "hydra.run.dir=$L/eval/short/glide_g$g"
done
$PY -m eval.leaderboard "$L"/eval/short/{unclip_g3,unclip_g1,glide_g3,glide_g1} \
  --labels "unCLIP (guidance 3),unCLIP (guidance 1),GLIDE (guidance 3),GLIDE (guidance 1)" \
  --out "$L/eval/short/table" --title "unCLIP vs GLIDE on short captions (shapes)"
$PY experiments/unclip/prior_diversity.py --logs "$L" --style short
