#!/usr/bin/env bash
# Retrain the embedded models from scratch: VAE -> judge -> DiT, then install the result in
# pipelines/shapes-dit; then the text-to-image Flux model into pipelines/shapes-flux. Every stage
# resumes from its newest checkpoint under $RUNS, so rerunning
# this script after an interruption continues where it stopped. About 2 + 2 hours on 2 CPU cores.
set -euo pipefail
RUNS=${RUNS:-runs}
LAUNCH=(accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no)
"${LAUNCH[@]}" train/train_vae.py --output "$RUNS/vae" --seed 0
"${LAUNCH[@]}" train/train_judge.py --vae "$RUNS/vae/vae" --output "$RUNS/judge" --seed 0
# one stage: 6,000 steps, lr 1e-3 after a 200-step warm-up, cosine decay to 0 over the last 1,200
"${LAUNCH[@]}" train/train_dit.py --vae "$RUNS/vae/vae" --judge "$RUNS/judge/judge" --output "$RUNS/dit" \
  --seed 0 --steps 6000
if [ "${INSTALL:-1}" = 1 ]; then
  rm -rf pipelines/shapes-dit/{transformer,vae,scheduler,judge,model_index.json}
  mkdir -p pipelines/shapes-dit
  cp -r "$RUNS/dit/pipeline/." pipelines/shapes-dit/
  cp -r "$RUNS/judge/judge" pipelines/shapes-dit/judge
  echo "installed the trained pipeline and judge in pipelines/shapes-dit"
  echo "the shipped router belongs to the old weights: retrain it (pipelines/shapes-dit/router/TRAINING.md)"
fi
# Text-to-image Flux model (pipelines/shapes-flux) on the same VAE, checked with the same judge; 2 CPU
# processes (gloo, one thread each), global batch 64. About 2 hours on 2 cores (see its TRAINING.md).
FLUX_LAUNCH=(accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no)
OMP_NUM_THREADS=1 "${FLUX_LAUNCH[@]}" train/train_flux.py --cpu --vae "$RUNS/vae/vae" --judge "$RUNS/judge/judge" \
  --output "$RUNS/flux" --seed 0
if [ "${INSTALL:-1}" = 1 ]; then
  rm -rf pipelines/shapes-flux/{transformer,vae,scheduler,text_encoder,text_encoder_2,tokenizer,tokenizer_2,model_index.json}
  mkdir -p pipelines/shapes-flux
  cp -r "$RUNS/flux/pipeline/." pipelines/shapes-flux/
  python train/check_flux_judges.py --vae "$RUNS/vae/vae" --judge "$RUNS/judge/judge" \
    --out pipelines/shapes-flux/judge_accuracy.json
  echo "installed the trained text-to-image pipeline in pipelines/shapes-flux"
fi
