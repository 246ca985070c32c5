#!/usr/bin/env bash
# Makes what tools/gpu_check.sh needs on a bare CUDA machine without network,
# in one directory of under 64 MiB (run it on a networked machine that has the
# project's venv, from the project root):
#
#   tools/make_gpu_bundle.sh                    # -> gpu_bundle/
#   tools/make_gpu_bundle.sh --corpus-from DIR  # reuse a prepared corpus
#
#   gpu_bundle/wheels/         wheels for --python-version (cp312 by default) of
#                              what the GPU machine lacks: lhotse and its
#                              dependencies, lilcom, soundfile, kaldifst,
#                              kaldialign, kaldi-native-fbank, pytest, setuptools
#                              (fast_rnnt's build), ...
#   gpu_bundle/fast_rnnt-1.3.tar.gz   built there with CUDA
#   gpu_bundle/recipe/         a tiny corpus prepared by prepare.sh: data/fbank
#                              (features), data/lang_bpe_100 (BPE, LG graph) and
#                              the dev/test audio (streaming decodes audio)
#   gpu_bundle/MANIFEST.txt    what is inside, with versions and sizes
set -euo pipefail
project_dir=$(cd "$(dirname "$0")/.." && pwd)

out=gpu_bundle
python_version=3.12
corpus_from=""
wheels=true
max_train_cuts=0
python_bin=${PYTHON:-python3}
[ -x "$project_dir/.venv/bin/python" ] && python_bin=$project_dir/.venv/bin/python

usage="Usage: $0 [--out DIR] [--python-version X.Y] [--corpus-from DIR] [--wheels true|false]

  --out             the bundle directory (emptied first) [$out]
  --python-version  Python of the GPU machine, for the binary wheels [$python_version]
  --corpus-from     a directory prepared by prepare.sh to copy instead of running
                    prepare.sh on a new tiny corpus (about 2 minutes)
  --wheels          download wheels and the fast_rnnt sdist (false: corpus only,
                    for the CPU dry-run on a machine that has the packages) [$wheels]
  --max-train-cuts  keep only the first N training cuts (0: all; the CPU dry-run
                    in the tests keeps 40) [$max_train_cuts]"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2;;
    --python-version) python_version=$2; shift 2;;
    --corpus-from) corpus_from=$2; shift 2;;
    --wheels) wheels=$2; shift 2;;
    --max-train-cuts) max_train_cuts=$2; shift 2;;
    -h|--help) echo "$usage"; exit 0;;
    *) echo "make_gpu_bundle.sh: error: unknown option '$1'" >&2; echo "$usage" >&2; exit 1;;
  esac
done
log() { echo "[make_gpu_bundle $(date +%H:%M:%S)] $*"; }

rm -rf "$out"
mkdir -p "$out/wheels"
out=$(cd "$out" && pwd)

if [ "$wheels" = true ]; then
  # The versions this project is tested with (requirements.txt / its venv).
  version() { "$python_bin" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
  packages=()
  for name in lhotse lilcom soundfile cffi pycparser kaldifst kaldialign kaldi-native-fbank \
      audioread click cytoolz toolz sortedcontainers pyyaml tabulate tqdm urllib3 packaging \
      typing-extensions pytest pluggy iniconfig setuptools wheel; do
    packages+=("$name==$(version "$name")")
  done
  log "downloading cp${python_version/./} wheels: ${packages[*]}"
  "$python_bin" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
    --python-version "$python_version" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_5_x86_64 --platform linux_x86_64 \
    -d "$out/wheels" "${packages[@]}"
  # intervaltree (lhotse) is published as an sdist only: pure Python, so a
  # wheel built here serves every Python 3.
  "$python_bin" -m pip wheel --disable-pip-version-check -q --no-deps \
    -w "$out/wheels" "intervaltree==$(version intervaltree)"
  "$python_bin" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
    -d "$out" fast_rnnt==1.3
fi

log "tiny prepared corpus"
mkdir -p "$out/recipe"
if [ -z "$corpus_from" ]; then
  corpus_from=$out/.prepare
  mkdir -p "$corpus_from"
  # 0.1 h and its speed-perturbed copies: about 50 batches of 20 s per epoch.
  (cd "$corpus_from" && "$project_dir/prepare.sh" --synth-hours 0.1 --dev-utts 8 \
    --test-utts 8 --vocab-sizes 100 --nj 2)
fi
mkdir -p "$out/recipe/data/fbank" "$out/recipe/download/LibriSpeech"
cp -a "$corpus_from/data/lang_bpe_100" "$out/recipe/data/"
for part in train-clean-100 dev-clean test-clean test-other; do
  cp -a "$corpus_from/data/fbank/librispeech_cuts_$part.jsonl.gz" \
    "$corpus_from/data/fbank/librispeech_feats_$part"* "$out/recipe/data/fbank/"
done
if [ "$max_train_cuts" -gt 0 ]; then
  "$python_bin" -c "
import sys
from lhotse import load_manifest
path = sys.argv[1]
load_manifest(path).subset(first=int(sys.argv[2])).to_file(path)" \
    "$out/recipe/data/fbank/librispeech_cuts_train-clean-100.jsonl.gz" "$max_train_cuts"
fi
# Audio of the evaluation parts only: training reads features.
for part in dev-clean test-clean test-other; do
  cp -a "$corpus_from/download/LibriSpeech/$part" "$out/recipe/download/LibriSpeech/"
done
rm -rf "$out/.prepare"

{
  echo "made $(date -u '+%Y-%m-%d %H:%M UTC') by tools/make_gpu_bundle.sh for Python $python_version"
  (cd "$out" && find . -type f -name "*.whl" -o -type f -name "*.tar.gz" | sort)
  echo "recipe/: $(du -sh "$out/recipe" | cut -f1)"
} > "$out/MANIFEST.txt"
size_kib=$(du -sk "$out" | cut -f1)
log "bundle $out: $((size_kib / 1024)) MiB"
if [ "$size_kib" -ge $((64 * 1024)) ]; then
  echo "make_gpu_bundle.sh: error: $out is $((size_kib / 1024)) MiB, over the 64 MiB a device run carries" >&2
  exit 1
fi
