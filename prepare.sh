#!/usr/bin/env bash
# Data preparation for the recipe, icefall style: every stage fills data/ and
# skips work already done (redoing what is older than its inputs, e.g. after
# the corpus was regenerated with another --synth-hours, or made with other
# options).  Outputs go to data/ under the current directory
# (normally the project root):
#
#   ./prepare.sh                          # all stages, generated corpus
#   ./prepare.sh --stage 3 --stop-stage 3 # one stage
#   ./prepare.sh --corpus librispeech --dl-dir /path/with/LibriSpeech
set -eou pipefail
recipe_dir=$(cd "$(dirname "$0")" && pwd)
. "$recipe_dir/shared/path.sh"

stage=0
stop_stage=100
dl_dir=download
corpus=synth
synth_hours=5
synth_voices=all
perturb_speed=true
dev_utts=300
test_utts=300
seed=42
nj=2
vocab_sizes=500
lm_order=3

help_message="Usage: $0 [options]

Stages:
  0  corpus: generate a LibriSpeech-shaped corpus with TTS (--corpus synth) or
     check \$dl_dir/LibriSpeech (--corpus librispeech)
  1  lhotse manifests -> data/manifests/
  2  noise manifests: \$dl_dir/musan if present, else a generated noise set
  3  fbank features -> data/fbank/librispeech_cuts_{part}.jsonl.gz (training parts
     shuffled), librispeech_cuts_train-all-shuf.jsonl.gz (the 960 h parts
     shuffled together, when all three exist), musan_cuts.jsonl.gz
  4  sentencepiece BPE -> data/lang_bpe_N/{bpe.model,tokens.txt,transcript_words.txt}
  5  word n-gram LM and LG graph -> data/lang_bpe_N/{G_${lm_order}_gram.arpa,LG.fst,...}

Options:
  --stage N          first stage to run [$stage]
  --stop-stage M     last stage to run [$stop_stage]
  --dl-dir DIR       where corpora live (LibriSpeech/, musan/) [$dl_dir]
  --corpus NAME      synth (generate) or librispeech (use \$dl_dir/LibriSpeech) [$corpus]
  --synth-hours H    hours of generated training audio (synth only) [$synth_hours]
  --synth-voices 'ID..' speaker ids of local/voices.py to generate with, space
                     separated, or all (synth only) [$synth_voices]
  --perturb-speed B  add 0.9x and 1.1x speed-perturbed copies of the training
                     part in stage 3 (true/false) [$perturb_speed]
  --dev-utts N       generated dev-clean utterances [$dev_utts]
  --test-utts N      generated utterances per test part [$test_utts]
  --seed N           seed of the generated corpus and noise [$seed]
  --nj N             parallel jobs [$nj]
  --vocab-sizes 'N..' BPE vocabulary sizes, space separated [$vocab_sizes]
  --lm-order N       order of the word n-gram LM [$lm_order]"

. "$recipe_dir/shared/parse_options.sh"

log() {
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%d %H:%M:%S') ($fname:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}
fail() { echo "prepare.sh: $*" >&2; exit 1; }

case "$corpus" in synth|librispeech) ;; *) fail "--corpus must be synth or librispeech, not '$corpus'";; esac

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  log "Stage 0: corpus ($corpus) in $dl_dir/LibriSpeech"
  if [ "$corpus" = synth ]; then
    voice_option=()
    # shellcheck disable=SC2206  # the ids are meant to split into words
    [ "$synth_voices" = all ] || voice_option=(--voices $synth_voices)
    "$recipe_dir"/local/generate_synth_corpus.py --out-dir "$dl_dir" --synth-hours "$synth_hours" \
      --dev-utts "$dev_utts" --test-utts "$test_utts" --seed "$seed" --nj "$nj" "${voice_option[@]}"
  elif [ ! -d "$dl_dir/LibriSpeech" ]; then
    log "Stage 0: $dl_dir/LibriSpeech not found; trying lhotse's downloader"
    timeout 600 python -c "
from lhotse.recipes.librispeech import download_librispeech
download_librispeech('$dl_dir', dataset_parts=['train-clean-100', 'dev-clean', 'test-clean', 'test-other'])
" >/dev/null 2>&1 || fail "stage 0: $dl_dir/LibriSpeech not found and the download failed (no network?); \
put the extracted LibriSpeech parts (train-clean-100/, dev-clean/, test-clean/, test-other/) in $dl_dir/LibriSpeech"
  fi
fi

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  log "Stage 1: manifests for $dl_dir/LibriSpeech"
  "$recipe_dir"/local/prepare_manifests.py --corpus-dir "$dl_dir/LibriSpeech" --output-dir data/manifests \
    --num-jobs "$nj"
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  if [ -d "$dl_dir/musan" ]; then
    log "Stage 2: MUSAN manifests from $dl_dir/musan"
    musan_dir=$dl_dir/musan
  else
    log "Stage 2: no $dl_dir/musan; generating a noise set in $dl_dir/generated_noise"
    "$recipe_dir"/local/generate_noise.py --out-dir "$dl_dir/generated_noise" \
      --librispeech-dir "$dl_dir/LibriSpeech" --seed "$seed"
    musan_dir=$dl_dir/generated_noise/musan
  fi
  "$recipe_dir"/local/prepare_noise_manifests.py --musan-dir "$musan_dir" --output-dir data/manifests
fi

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  log "Stage 3: fbank features"
  "$recipe_dir"/local/compute_fbank.py --manifest-dir data/manifests --output-dir data/fbank \
    --num-jobs "$nj" --perturb-speed "$perturb_speed" --seed "$seed"
fi

if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  for vocab_size in $vocab_sizes; do
    log "Stage 4: BPE model with $vocab_size tokens"
    "$recipe_dir"/local/train_bpe_model.py --lang-dir "data/lang_bpe_$vocab_size" --vocab-size "$vocab_size" \
      --manifest-dir data/manifests
  done
fi

if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
  for vocab_size in $vocab_sizes; do
    lang_dir=data/lang_bpe_$vocab_size
    log "Stage 5: word $lm_order-gram LM and LG graph in $lang_dir"
    "$recipe_dir"/local/prepare_lang_bpe.py --lang-dir "$lang_dir"
    "$recipe_dir"/local/prepare_lm.py --lang-dir "$lang_dir" --order "$lm_order"
    "$recipe_dir"/local/compile_lg.py --lang-dir "$lang_dir"
  done
fi
log "Done (stages $stage..$stop_stage)"
