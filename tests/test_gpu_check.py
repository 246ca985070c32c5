"""The GPU check (tools/gpu_check.sh, tools/gpu_check.py): its CPU dry-run
(the bundle script, corpus only and no network, then every step on CPU with
decoding under the device-mismatch guard), and its pass/fail logic: a step
that did not learn fails, a failed step does not stop the others, and the
bundle unpacks only the wheels of modules the machine lacks."""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import PROJECT_DIR, import_script, run_script
from tools import gpu_check_steps


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
         "--vocab-size 50 --num-iters 2 --threads 1",
         # The CPU's share: fewer, shorter learning steps than on a GPU.
         "--", "--learn-steps", "4", "--learn-batch-seconds", "10"],
        prepared_dir, timeout=900)
    output = result.stdout + result.stderr
    # The dry-run's own lines (steps, throughput, summary table) are on stdout;
    # pytest -s shows them.
    print(result.stdout[-8000:])
    assert result.returncode == 0, output[-6000:]
    assert "gpu_check: all steps passed" in output
    assert "training throughput:" in output and "training on cpu" in output
    for step in ("loss backend fast_rnnt | ok", "loss backend triton | ok",
                 "loss backend torch | ok", "learn float32 | ok", "learn float16 | ok",
                 "train (torchrun, fp16) | ok", "decode (7 methods) | ok",
                 "streaming (3 methods) | ok", "export | ok", "pretrained.py | ok",
                 "loss benchmark | ok", "pytest -m cuda | ok"):
        assert step in output, step
    assert "fast_beam_search_nbest_LG" in output
    # float16 ran with its GradScaler, which never met a non-finite gradient.
    assert re.search(r"0 non-finite gradients, grad scale (\d+) -> \1\b", output), output


def test_learn_step_fails_when_nothing_learns(prepared_dir: Path, monkeypatch, tmp_path: Path):
    """A learning rate of 0: the weights do not move and the loss does not
    fall; the check must say so (what it would see of a GradScaler that skips
    every step)."""
    monkeypatch.chdir(prepared_dir)
    args = import_script(PROJECT_DIR / "tools/gpu_check.py").get_parser().parse_args([
        "--device", "cpu", "--exp-dir", str(tmp_path), "--lang-dir", "data/lang_bpe_100",
        "--learn-steps", "4", "--learn-batch-seconds", "10", "--learn-lr", "0"])
    with pytest.raises(gpu_check_steps.CheckFailed) as failure:
        gpu_check_steps.learn(args, "float32")
    assert "parameters never changed" in str(failure.value)
    assert "loss on the fixed batches" in str(failure.value)
    assert "not below 0.7x" in str(failure.value)


def test_learning_failures_name_each_broken_promise():
    assert gpu_check_steps.learning_failures(10.0, 3.0, [], 0, 65536.0, 0.7) == []
    assert gpu_check_steps.learning_failures(10.0, 3.0, [], 0, None, 0.7) == []  # float32
    failures = gpu_check_steps.learning_failures(10.0, 9.0, ["a", "b", "c", "d"], 5, 0.5, 0.7)
    assert failures == [
        "4 parameters never changed (a, b, c, ...)",
        "5 non-finite parameter gradients",
        "grad scale fell to 0.5",
        "loss on the fixed batches 10.000 -> 9.000, not below 0.7x",
    ]
    assert gpu_check_steps.learning_failures(10.0, float("nan"), [], 0, 1.0, 0.7)


def test_a_failed_step_is_reported_and_the_next_still_runs(capsys):
    report = gpu_check_steps.Report()

    def broken() -> str:
        raise gpu_check_steps.CheckFailed("loss did not fall")

    report.run("first", broken)
    assert report.run("second", lambda: "fine") == "fine"
    assert report.print() is False
    table = capsys.readouterr().out
    assert "| first | FAIL |" in table and "CheckFailed: loss did not fall" in table
    assert "| second | ok |" in table
    ok_report = gpu_check_steps.Report()
    ok_report.run("only", lambda: "fine")
    assert ok_report.print() is True


def make_wheel(directory: Path, name: str, files: dict[str, str]) -> Path:
    path = directory / name
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def test_bundle_unpacks_only_the_wheels_of_missing_modules(tmp_path: Path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    # This Python has pytest: its wheel must stay packed (it would shadow it).
    make_wheel(wheels, "pytest-99.0-py3-none-any.whl",
               {"pytest/__init__.py": "", "pytest-99.0.dist-info/METADATA": ""})
    make_wheel(wheels, "gpucheck_absent-1.0-py3-none-any.whl",
               {"gpucheck_absent/__init__.py": "", "gpucheck_absent-1.0.dist-info/METADATA": ""})
    # top_level.txt decides: one of its two modules is missing.
    make_wheel(wheels, "mixed-1.0-py2.py3-none-any.whl",
               {"mixed-1.0.dist-info/top_level.txt": "argparse\ngpucheck_mixed\n",
                "gpucheck_mixed.py": ""})
    # Another Python's binary wheel is never unpacked.
    make_wheel(wheels, "other-1.0-cp27-cp27mu-linux_x86_64.whl", {"gpucheck_other.py": ""})
    result = run_script(["tools/unpack_missing_wheels.py", str(wheels), str(site), "cp312"],
                        tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "unpacked 2 wheels: gpucheck_absent mixed",
        "left packed (this Python has them): pytest",
    ]
    assert (site / "gpucheck_absent/__init__.py").is_file()
    assert (site / "gpucheck_mixed.py").is_file()
    assert not (site / "pytest").exists() and not (site / "gpucheck_other.py").exists()



@pytest.mark.slow  # runs a script as a process
def test_loss_benchmark_reports_a_failed_backend_and_keeps_the_others(tmp_path: Path):
    """A backend that cannot run (here triton, hidden by a package that refuses to
    import) is a FAILED line and exit status 1, and the other backends still get
    their rows, which the GPU check reads back."""
    hidden = tmp_path / "hidden" / "triton"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("hidden for the test")\n')
    result = subprocess.run(
        [sys.executable, "benchmarks/loss_benchmark.py", "--rnnt-backend", "triton,torch",
         "--paths", "recursion", "--batch-size", "2", "--num-frames", "20",
         "--num-symbols", "5", "--vocab-size", "20", "--num-iters", "1",
         "--num-warmup", "0", "--threads", "1"],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(hidden.parent)})
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert "FAILED: path recursion, backend triton:" in result.stdout
    medians = gpu_check_steps.benchmark_medians(result.stdout)
    assert list(medians) == [("recursion", "torch")]
    assert medians["recursion", "torch"] > 0
