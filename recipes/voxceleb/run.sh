#!/usr/bin/env bash
# VoxCeleb recipe: ResNet34 + AAM on VoxCeleb2 dev audio with online augmentation, large-margin
# fine-tuning, checkpoint averaging, test on VoxCeleb1-O/E/H. Run from this directory:
#   ./run.sh [--stage N] [--stop-stage M] [HYDRA_OVERRIDE ...]
# Stages: 0 VoxCeleb2 m4a -> FLAC or wav (once, in parallel, resumable), 1 data dirs + trial lists, 2 pack the
# training audio, MUSAN and the RIRs into Kaldi archives (resumable), 3 train, 4 large-margin fine-tuning,
# 5 average, 6 test with AS-norm. Overrides go to both training stages, after the recipe's own (e.g.
# num_workers=16).
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=6
vox1=${VOX1:-/data/voxceleb1}       # wav/<spk>/<video>/<n>.wav and the official trial lists
vox2=${VOX2:-/data/voxceleb2/dev}   # aac/<spk>/<video>/<n>.m4a (or wav/)
musan=${MUSAN:-/data/musan}         # Kaldi dirs or lists: noise, music, speech (babble)
rirs=${RIRS:-/data/rirs}            # Kaldi dir or list of room impulse responses
data=${DATA:-data}
convert=${CONVERT:-true}            # false: read VoxCeleb2's m4a through ffmpeg pipes (a whole decode per item)
format=${FORMAT:-flac}              # what stage 0 converts to: flac (~150 GB) or wav (~260 GB, 2-3x less per loader item)
vox2_converted=${VOX2_CONVERTED:-$data/vox2_dev_$format}  # where stage 0 writes VoxCeleb2 as <spk>/<video>/<n>.$format
nj=${NJ:-$(nproc)}                  # files converted (and packed) at once
pack=${PACK:-true}                  # false: train from the loose files (docs/recipes.md: when to pack and stage)
packed=${PACKED:-$data/packed}      # where stage 2 writes the packed dirs (on the cluster's shared storage)
stage_to=${STAGE_TO:-}              # node-local dir the training copies the packed dirs to (e.g. /local/scratch/$USER)
exp=${EXP:-exp/resnet34_aam}
cohort=${COHORT:-}                  # AS-norm cohort (default: the training data, as WeSpeaker)
num_average=${NUM_AVERAGE:-10}      # checkpoints averaged before fine-tuning
num_average_lm=${NUM_AVERAGE_LM:-3} # fine-tuning checkpoints averaged for the test
asnorm_top_n=${ASNORM_TOP_N:-300}   # 0: raw cosine scores only
. ../parse_options.sh

vox2_audio=$vox2/wav
if [ -d "$vox2/aac" ]; then
  vox2_audio=$vox2/aac
  if [ "$convert" = true ]; then
    if stage_in 0; then
      "$PYTHON" local/convert_audio.py "$vox2/aac" "$vox2_converted" --nj "$nj" --format "$format"
    fi
    vox2_audio=$vox2_converted
  fi
fi

if stage_in 1; then
  "$PYTHON" local/prepare.py data "$vox1/wav" "$data/vox1"
  "$PYTHON" local/prepare.py data "$vox2_audio" "$data/vox2_dev"
  # Official lists: O = veri_test, E = list_test_all, H = list_test_hard; "2" = cleaned versions.
  for pair in O:veri_test O_cleaned:veri_test2 E:list_test_all E_cleaned:list_test_all2 \
              H:list_test_hard H_cleaned:list_test_hard2; do
    name=${pair%%:*} list=$vox1/${pair#*:}.txt
    if [ -f "$list" ]; then "$PYTHON" local/prepare.py trials "$list" "$data/vox1/trials_$name"; fi
  done
fi

# What training reads: the stage-1 dir and the augmentation sets, or their packed copies.
train_dir=$data/vox2_dev noise=$musan/noise music=$musan/music babble=$musan/speech rir_list=$rirs
if [ "$pack" = true ]; then
  train_dir=$packed/vox2_dev noise=$packed/musan_noise music=$packed/musan_music babble=$packed/musan_speech
  rir_list=$packed/rirs
fi

if stage_in 2 && [ "$pack" = true ]; then
  # Each pack resumes where a killed one stopped, and does nothing once done. The augmentation sets as wav members:
  # an item reads up to 8 windows of them, which FLAC would decode (docs/benchmarks.md#storage-loose-files-and-archives).
  "$PYTHON" -m stklia.pack "$data/vox2_dev" "$train_dir" format="$format" nj="$nj"
  for pair in "$musan/noise:$noise" "$musan/music:$music" "$musan/speech:$babble" "$rirs:$rir_list"; do
    "$PYTHON" -m stklia.pack "${pair%%:*}" "${pair#*:}" format=wav nj="$nj"
  done
fi

train_args=(experiment=voxceleb_resnet34_aam "data.train=[$train_dir]" "data.test=$data/vox1"
  "data.test_trials=[$data/vox1/trials_O_cleaned]" "augment.reverb.rirs=$rir_list"
  "augment.noise.sources.noise.list=$noise" "augment.noise.sources.music.list=$music"
  "augment.noise.sources.babble.list=$babble" ${stage_to:+"data.stage_to=$stage_to"}
  ${overrides[@]+"${overrides[@]}"})

if stage_in 3; then
  "$PYTHON" -m stklia.train "${train_args[@]}" "model_dir=$exp"
fi

if stage_in 4; then
  "$PYTHON" -m stklia.average "model_dir=$exp" "last=$num_average"
  "$PYTHON" -m stklia.train "${train_args[@]}" +stage=lmft "init_from=$exp" "init_checkpoint=avg_last$num_average" \
    "model_dir=${exp}_lm"
fi

if stage_in 5; then
  "$PYTHON" -m stklia.average "model_dir=${exp}_lm" "last=$num_average_lm"
fi

if stage_in 6; then
  trials=$(ls "$data"/vox1/trials_* | paste -sd, -)
  "$PYTHON" -m stklia.test "model_dir=${exp}_lm" "checkpoint=avg_last$num_average_lm" "test_trials=[$trials]" \
    "cohort=${cohort:-$train_dir}" "asnorm_top_n=$asnorm_top_n"
fi
