"""The CPU dry-run of tools/gpu_check.sh: the bundle script (corpus only, no
network) and every step of the GPU check on CPU, decoding under the
device-mismatch guard."""

import sys
from pathlib import Path

import pytest

from tests.helpers import run_script


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(prepared_dir: Path, tmp_path: Path):
    bundle = tmp_path / "bundle"
    result = run_script(["tools/make_gpu_bundle.sh", "--out", str(bundle), "--corpus-from",
                         str(prepared_dir), "--wheels", "false", "--max-train-cuts", "40"],
                        prepared_dir, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (bundle / "recipe/data/lang_bpe_100/LG.fst").is_file()

    result = run_script(
        ["tools/gpu_check.sh", "--device", "cpu", "--guard", "true", "--bundle", str(bundle),
         "--work", str(tmp_path / "work"), "--python", sys.executable,
         "--loss-benchmark-args", "--batch-size 2 --num-frames 40 --num-symbols 10 "
         "--vocab-size 50 --num-iters 2 --threads 1"],
        prepared_dir, timeout=900)
    output = result.stdout + result.stderr
    # The dry-run's own lines (steps, throughput, summary table) are on stdout;
    # pytest -s shows them.
    print(result.stdout[-8000:])
    assert result.returncode == 0, output[-6000:]
    assert "gpu_check: all steps passed" in output
    assert "training throughput:" in output and "training on cpu" in output
    for step in ("train (torchrun, fp16) | ok", "decode (7 methods) | ok",
                 "streaming (3 methods) | ok", "export | ok", "pretrained.py | ok",
                 "loss benchmark | ok", "pytest -m cuda | ok"):
        assert step in output, step
    assert "fast_beam_search_nbest_LG" in output
