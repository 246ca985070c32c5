#!/usr/bin/env bash
# The GPU check: every CUDA path of the recipe on a tiny prepared corpus, on a
# bare CUDA machine (Python with torch, numpy, sentencepiece, onnx,
# onnxruntime, pybind11, cmake, nvcc; no network), in a few minutes.
#
#   tools/make_gpu_bundle.sh                      # beforehand, on a networked machine
#   tools/gpu_check.sh --bundle gpu_bundle        # on the GPU machine
#   tools/gpu_check.sh --device cpu --guard true  # the CPU dry-run of the same steps
#
# It never installs requirements.txt and never touches the machine's Python
# environment: packages the machine lacks (lhotse, lilcom, soundfile, kaldifst,
# kaldialign, kaldi-native-fbank, ...) are unpacked from the bundle's wheels
# into WORK/site, fast_rnnt is built there from the bundle's sdist with CUDA
# (shared/build_fast_rnnt.sh), and WORK/site goes on PYTHONPATH.  Only the
# wheels of modules this Python cannot find are unpacked (importlib's
# find_spec, per wheel): what the machine has (pytest and its plugins,
# typing_extensions, ...) is used as it is, never shadowed; the dry-run on a
# machine set up by shared/setup.sh uses its venv.  gpu_bundle/ is git-ignored:
# send it along with the working tree (docs/gpu.md, section 5).  A failed
# fast_rnnt build does not stop the check.  The steps: tools/gpu_check.py.
set -euo pipefail
project_dir=$(cd "$(dirname "$0")/.." && pwd)

device=cuda
bundle=$project_dir/gpu_bundle
work=/tmp/gpu_check
python_bin=""
guard=false
cache_dir=""
loss_benchmark_args=""

usage="Usage: $0 [--device cuda|cpu] [--bundle DIR] [--work DIR] [--python PY]
                [--guard true|false] [--cache-dir DIR] [--loss-benchmark-args 'ARGS']

  --device      cuda (the check) or cpu (its dry-run; CUDA is hidden) [$device]
  --bundle      what tools/make_gpu_bundle.sh made [$bundle]
  --work        scratch directory, emptied first [$work]
  --python      the interpreter [/opt/torch/.venv/bin/python3 if present, else python3]
  --guard       run decoding under shared/device_guard.py (needs --device cpu) [$guard]
  --cache-dir   where fast_rnnt wheels are cached [WORK/cache]
  --loss-benchmark-args  extra options of benchmarks/loss_benchmark.py
  -- ARGS       the rest goes to tools/gpu_check.py (e.g. -- --learn-steps 4)"

while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2;;
    --bundle) bundle=$2; shift 2;;
    --work) work=$2; shift 2;;
    --python) python_bin=$2; shift 2;;
    --guard) guard=$2; shift 2;;
    --cache-dir) cache_dir=$2; shift 2;;
    --loss-benchmark-args) loss_benchmark_args=$2; shift 2;;
    -h|--help) echo "$usage"; exit 0;;
    --) shift; break;;
    *) echo "gpu_check.sh: error: unknown option '$1'" >&2; echo "$usage" >&2; exit 1;;
  esac
done
case "$device" in cuda|cpu) ;; *) echo "gpu_check.sh: error: --device must be cuda or cpu" >&2; exit 1;; esac
if [ -z "$python_bin" ]; then
  if [ -x /opt/torch/.venv/bin/python3 ]; then python_bin=/opt/torch/.venv/bin/python3
  else python_bin=python3; fi
fi
# A relative --python (.venv/bin/python) must survive the cd into the work copy.
case "$python_bin" in
  /*) ;;
  */*) python_bin="$(cd "$(dirname "$python_bin")" && pwd)/$(basename "$python_bin")";;
esac
[ -d "$bundle/recipe/data" ] || { echo "gpu_check.sh: error: no prepared corpus in $bundle/recipe; run tools/make_gpu_bundle.sh" >&2; exit 1; }
bundle=$(cd "$bundle" && pwd)
start=$(date +%s)
log() { echo "[gpu_check.sh +$(( $(date +%s) - start ))s] $*"; }

rm -rf "$work"
mkdir -p "$work/site"
work=$(cd "$work" && pwd)
cache_dir=${cache_dir:-$work/cache}
site=$work/site
export PYTHONPATH="$site:$project_dir${PYTHONPATH:+:$PYTHONPATH}"
if [ "$device" = cpu ]; then export CUDA_VISIBLE_DEVICES=""; fi

# 1. Packages: unpack the bundle's wheels for this Python if anything is missing.
modules="lhotse lilcom soundfile kaldifst kaldialign kaldi_native_fbank sentencepiece onnx onnxruntime pytest tqdm"
check_modules() { "$python_bin" -c "import importlib, sys
missing = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as error:
        missing.append(f'{name} ({type(error).__name__}: {error})')
print('; '.join(missing))" $modules; }
missing=$(check_modules)
if [ -n "$missing" ]; then
  tag=$("$python_bin" -c "import sys; print(f'cp{sys.version_info.major}{sys.version_info.minor}')")
  log "missing: $missing; unpacking the bundle's wheels of what this Python lacks into $site"
  "$python_bin" "$project_dir/tools/unpack_missing_wheels.py" "$bundle/wheels" "$site" "$tag"
  missing=$(check_modules)
  [ -z "$missing" ] || { echo "gpu_check.sh: error: still missing: $missing" >&2; exit 1; }
else
  log "lhotse, kaldifst, kaldi-native-fbank, pytest ... already import; using them"
fi

# 2. fast_rnnt matching this torch (CUDA kernels with a CUDA torch).  Without
# it the check goes on: its loss-backend row fails, and training uses what
# shared/rnnt_loss.py's auto gives instead (Triton on CUDA, else PyTorch).
if "$python_bin" -c "import torch, fast_rnnt, _fast_rnnt
assert _fast_rnnt.with_cuda() == bool(torch.version.cuda)" 2>/dev/null; then
  log "fast_rnnt already imports and matches torch's CUDA; using it"
elif [ ! -f "$bundle/fast_rnnt-1.3.tar.gz" ]; then
  log "no fast_rnnt here and no $bundle/fast_rnnt-1.3.tar.gz: going on without it"
else
  log "building fast_rnnt from $bundle/fast_rnnt-1.3.tar.gz"
  "$project_dir/shared/build_fast_rnnt.sh" "$python_bin" "$cache_dir" \
    "$bundle/fast_rnnt-1.3.tar.gz" --target "$site" \
    || log "the fast_rnnt build failed (above): going on without it"
fi

# 3. The steps, in a copy of the prepared corpus.
cp -a "$bundle/recipe" "$work/recipe"
cd "$work/recipe"
log "running tools/gpu_check.py --device $device in $work/recipe"
# shellcheck disable=SC2086
"$python_bin" "$project_dir/tools/gpu_check.py" --device "$device" --guard "$guard" \
  "--loss-benchmark-args=$loss_benchmark_args" "$@"
log "done"
