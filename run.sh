#!/usr/bin/env bash
# The whole recipe on the generated default corpus, in one command:
#
#   ./run.sh
#
# Steps (each prints a progress line; a finished step leaves a stamp in
# $exp_dir/.done and is skipped when run.sh is run again):
#   1 set-up          shared/setup.sh (venv, Debian packages, fast_rnnt)
#   2 data            prepare.sh (generated corpus, manifests, noise, fbank, BPE, LG)
#   3 train           pruned_transducer_stateless4/train.py (streaming, dynamic chunks)
set -euo pipefail
cd "$(dirname "$0")"

synth_hours=5
num_epochs=30
max_train_minutes=25
world_size=1
exp_dir=exp/pruned_transducer_stateless4
corpus=synth
dl_dir=download
vocab_size=500
nj=2

help_message="Usage: $0 [options]

Runs set-up, data preparation and training (later steps: decoding, streaming,
export) of the streaming Conformer transducer recipe.

Options:
  --synth-hours H        hours of generated training audio [$synth_hours]
  --num-epochs N         maximum training epochs [$num_epochs]
  --max-train-minutes M  stop training after M minutes (0 = no limit) [$max_train_minutes]
  --world-size N         training processes (DDP) [$world_size]
  --exp-dir DIR          experiment directory [$exp_dir]
  --corpus NAME          synth, or librispeech to use \$dl_dir/LibriSpeech [$corpus]
  --dl-dir DIR           where corpora live [$dl_dir]
  --vocab-size N         BPE vocabulary size [$vocab_size]
  --nj N                 parallel jobs for data preparation [$nj]"

. shared/parse_options.sh

start_time=$(date +%s)
step() { echo "[run.sh $(date +%H:%M:%S), +$(( $(date +%s) - start_time ))s] $*"; }
stamp_dir=$exp_dir/.done
done_or_run() {
  # done_or_run NAME COMMAND...: runs COMMAND unless step NAME finished before.
  local name=$1; shift
  if [ -f "$stamp_dir/$name" ]; then
    step "$name: done before, skipping ($stamp_dir/$name)"
    return 0
  fi
  step "$name: starting"
  "$@"
  mkdir -p "$stamp_dir"
  date > "$stamp_dir/$name"
  step "$name: finished"
}

step "set-up: checking the environment"
./shared/setup.sh
. shared/path.sh

done_or_run data ./prepare.sh --corpus "$corpus" --dl-dir "$dl_dir" --synth-hours "$synth_hours" \
  --vocab-sizes "$vocab_size" --nj "$nj"

done_or_run train ./pruned_transducer_stateless4/train.py --world-size "$world_size" \
  --num-epochs "$num_epochs" --max-train-minutes "$max_train_minutes" --exp-dir "$exp_dir" \
  --bpe-model "data/lang_bpe_$vocab_size/bpe.model"

step "all steps done in $(( ($(date +%s) - start_time) / 60 )) min"
