#!/usr/bin/env bash
# The VoxCeleb recipe's training pipeline on the built-in demo corpus, a few minutes on a CPU:
#   recipes/demo/run.sh [--stage N] [--stop-stage M] [HYDRA_OVERRIDE ...]
#   EXP=exp/demo_aug recipes/demo/run.sh experiment=demo_aug     # with online augmentation
# Stages: 1 train ResNet + AAM-softmax (ArcFace); 2 average its last checkpoints, then large-margin
# fine-tuning from the average (longer crops, margin 0.5); 3 average the fine-tuning checkpoints;
# 4 test both averages (cosine and AS-norm). Overrides go to both training stages.
set -euo pipefail
cd "$(dirname "$0")"

stage=1
stop_stage=4
exp=${EXP:-exp/demo}               # fine-tuning goes to ${exp}_lm
num_average=${NUM_AVERAGE:-2}      # last checkpoints averaged, in both stages
lm_steps=${LM_STEPS:-100}          # fine-tuning steps, with 300-frame crops (training: 150)
. ../parse_options.sh

if stage_in 1; then
  "$PYTHON" -m stklia.train head=arcface "model_dir=$exp" ${overrides[@]+"${overrides[@]}"}
fi

if stage_in 2; then
  "$PYTHON" -m stklia.average "model_dir=$exp" "last=$num_average"
  "$PYTHON" -m stklia.train head=arcface +stage=lmft "init_from=$exp" "init_checkpoint=avg_last$num_average" \
    "model_dir=${exp}_lm" max_seq_len=300 "num_iterations=$lm_steps" "checkpoint_interval=$((lm_steps / 2))" \
    ${overrides[@]+"${overrides[@]}"}
fi

if stage_in 3; then
  "$PYTHON" -m stklia.average "model_dir=${exp}_lm" "last=$num_average"
fi

if stage_in 4; then
  for model_dir in "$exp" "${exp}_lm"; do
    "$PYTHON" -m stklia.test "model_dir=$model_dir" "checkpoint=avg_last$num_average"
  done
fi
