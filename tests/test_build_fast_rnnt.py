"""Tests of shared/fast_rnnt_build.py, the logic of shared/build_fast_rnnt.py:
architectures, nvcc discovery, cache key, and the import-time check of the
installed fast_rnnt.

The build itself (a CPU wheel) runs in shared/setup.sh; the CUDA build is proved by
tools/check_cuda_build.sh (not in CI: it downloads gigabytes).  Fake nvcc executables
here are shell scripts that answer ``--version``, ``--list-gpu-arch`` and ``--dryrun``
the way nvcc 12/13 do.
"""

from __future__ import annotations

import importlib
import json
import stat
import sys
from pathlib import Path

import pytest
import torch

from shared import fast_rnnt_build as bfr
from shared.fast_rnnt_build import BuildError, CudaArch

NVCC13_ARCHS = {75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121}


def sms(archs: list[CudaArch]) -> list[str]:
    return [arch.tag for arch in archs]


# ------------------------------------------------------------ architectures --
@pytest.mark.parametrize(
    "text, expected",
    [
        ("80,90", ["80", "90"]),
        ("sm_90;sm_80", ["80", "90"]),
        ("7.5 8.6+PTX", ["75", "86ptx"]),
        ("12.0+ptx, 10.0", ["100", "120ptx"]),
        ("compute_120", ["120"]),
        ("8.0 8.0+PTX", ["80ptx"]),
    ],
)
def test_parse_arch_list(text: str, expected: list[str]) -> None:
    assert sms(bfr.parse_arch_list(text)) == expected


@pytest.mark.parametrize("text", ["Ampere", "9.0a", "5", "8.x", " , "])
def test_parse_arch_list_rejects_with_the_variable_name(text: str) -> None:
    with pytest.raises(BuildError, match="TORCH_CUDA_ARCH_LIST"):
        bfr.parse_arch_list(text, "TORCH_CUDA_ARCH_LIST")


@pytest.mark.parametrize("cuda", [(12, 0), (12, 4), (12, 8), (12, 9), (13, 0), (13, 2)])
def test_defaults_never_kepler_or_maxwell_on_cuda_12_and_later(cuda: tuple[int, int]) -> None:
    archs, source = bfr.select_cuda_archs(cuda, [], {})
    assert all(arch.sm >= 70 for arch in archs)
    assert source.startswith("the defaults")
    # PTX only for the newest, so that newer GPUs JIT-compile it.
    assert [arch.ptx for arch in archs] == [False] * (len(archs) - 1) + [True]


def test_defaults_follow_the_cuda_version() -> None:
    assert sms(bfr.select_cuda_archs((13, 0), [], {})[0]) == [
        "75", "80", "86", "89", "90", "100", "120ptx"]
    assert sms(bfr.select_cuda_archs((12, 8), [], {})[0])[0] == "70"
    assert sms(bfr.select_cuda_archs((12, 4), [], {})[0]) == [
        "70", "75", "80", "86", "89", "90ptx"]
    assert sms(bfr.select_cuda_archs((11, 8), [], {})[0])[-1] == "90ptx"
    # What the nvcc cannot build is left out of the defaults.
    assert sms(bfr.select_cuda_archs((12, 8), [], {}, {80, 86, 90})[0]) == ["80", "86", "90ptx"]


def test_explicit_lists_win_over_gpus_ft_first() -> None:
    env = {"FT_CUDA_ARCHS": "80", "TORCH_CUDA_ARCH_LIST": "9.0"}
    assert bfr.select_cuda_archs((13, 0), [(8, 6)], env) == ([CudaArch(80)], "FT_CUDA_ARCHS")
    env = {"TORCH_CUDA_ARCH_LIST": "8.0 9.0+PTX"}
    assert bfr.select_cuda_archs((13, 0), [(8, 6)], env) == (
        [CudaArch(80), CudaArch(90, True)], "TORCH_CUDA_ARCH_LIST")
    # "native" means: the visible GPUs.
    archs, source = bfr.select_cuda_archs((13, 0), [(8, 6)], {"TORCH_CUDA_ARCH_LIST": "native"})
    assert (sms(archs), source) == (["86ptx"], "the visible GPUs")


def test_list_is_cut_to_what_nvcc_builds() -> None:
    # An older container's TORCH_CUDA_ARCH_LIST with Maxwell and Pascal, nvcc 13.
    env = {"TORCH_CUDA_ARCH_LIST": "5.2 6.0 6.1 7.0 7.5 8.0 8.6 9.0+PTX"}
    archs, _ = bfr.select_cuda_archs((13, 0), [], env, NVCC13_ARCHS)
    assert sms(archs) == ["75", "80", "86", "90ptx"]
    with pytest.raises(BuildError, match="FT_CUDA_ARCHS='50,60'.*can build none"):
        bfr.select_cuda_archs((13, 0), [], {"FT_CUDA_ARCHS": "50,60"}, NVCC13_ARCHS)


def test_gpus_present() -> None:
    archs, source = bfr.select_cuda_archs((13, 0), [(9, 0), (8, 6), (9, 0)], {}, NVCC13_ARCHS)
    assert (sms(archs), source) == (["86", "90ptx"], "the visible GPUs")
    # A GPU newer than the nvcc: PTX of the newest arch below it (the driver compiles it).
    archs, _ = bfr.select_cuda_archs((12, 4), [(12, 0)], {}, {70, 75, 80, 86, 89, 90})
    assert sms(archs) == ["90ptx"]
    # Same major: the SASS of a lower minor runs.
    archs, _ = bfr.select_cuda_archs((13, 0), [(8, 7)], {}, {75, 80, 86})
    assert sms(archs) == ["86ptx"]
    # A GPU older than anything nvcc 13 builds (Volta).
    with pytest.raises(BuildError, match="cannot build for this GPU .sm_70"):
        bfr.select_cuda_archs((13, 0), [(7, 0)], {}, NVCC13_ARCHS)


def test_arch_runs_on() -> None:
    assert bfr.arch_runs_on([CudaArch(80)], (8, 6))
    assert not bfr.arch_runs_on([CudaArch(86)], (8, 0))
    assert not bfr.arch_runs_on([CudaArch(80)], (9, 0))
    assert bfr.arch_runs_on([CudaArch(80), CudaArch(90, True)], (12, 0))
    assert not bfr.arch_runs_on([CudaArch(120)], (10, 0))


def test_gencode_flags() -> None:
    assert CudaArch(120, True).gencode_flags() == [
        "-gencode=arch=compute_120,code=sm_120", "-gencode=arch=compute_120,code=compute_120"]
    assert str(CudaArch(86)) == "8.6" and str(CudaArch(120, True)) == "12.0+PTX"


# --------------------------------------------------------------- cache key --
def test_wheel_key() -> None:
    rev = bfr.BUILD_REVISION
    key = bfr.wheel_key("2.13.0+cpu", None, [], "cp311")
    assert key == f"torch-2.13.0+cpu-cuda-none-cp311-b{rev}"
    archs = [CudaArch(90, True), CudaArch(75)]
    assert bfr.wheel_key("2.11.0+cu130", "13.0", archs, "cp312") == (
        f"torch-2.11.0+cu130-cuda-13.0-sm_75_90ptx-cp312-b{rev}")
    # Another arch list, CUDA or torch is another wheel.
    keys = {bfr.wheel_key("2.11.0+cu130", "13.0", [CudaArch(80)], "cp312"),
            bfr.wheel_key("2.11.0+cu130", "13.0", [CudaArch(90)], "cp312"),
            bfr.wheel_key("2.11.0+cu128", "12.8", [CudaArch(80)], "cp312"),
            bfr.wheel_key("2.11.0+cu130", None, [], "cp312")}
    assert len(keys) == 4
    with pytest.raises(ValueError):
        bfr.wheel_key("2.11.0", "13.0", [], "cp312")


# -------------------------------------------------------------------- nvcc --
def fake_nvcc(path: Path, release: str, real_bin: Path | None = None) -> Path:
    """An executable answering like nvcc ``release`` ("13.0") whose real binary is in real_bin."""
    path.parent.mkdir(parents=True, exist_ok=True)
    here = real_bin or path.parent
    archs = " ".join(f"compute_{sm}" for sm in sorted(NVCC13_ARCHS))
    path.write_text(f"""#!/bin/sh
case "$1" in
  --version) echo "Cuda compilation tools, release {release}, V{release}.1";;
  --list-gpu-arch) for a in {archs}; do echo $a; done;;
  --dryrun) echo "#\\$ _HERE_={here}" >&2;;
esac
""")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_nvcc_discovery_order(tmp_path: Path) -> None:
    cudacxx = fake_nvcc(tmp_path / "cxx" / "bin" / "nvcc", "13.0")
    home = fake_nvcc(tmp_path / "home" / "bin" / "nvcc", "13.0")
    on_path = fake_nvcc(tmp_path / "path" / "bin" / "nvcc", "13.0")
    toolkit = fake_nvcc(tmp_path / "toolkit" / "bin" / "nvcc", "13.0")
    site = tmp_path / "site"
    pip13 = fake_nvcc(site / "nvidia" / "cu13" / "bin" / "nvcc", "13.0")
    env = {"CUDACXX": str(cudacxx), "CUDA_HOME": str(tmp_path / "home"),
           "PATH": str(on_path.parent)}
    found = bfr.nvcc_candidates(env, [str(site)], [str(tmp_path / "toolkit")])
    assert found == [cudacxx, home, on_path, toolkit, pip13]
    # Without environment, the pip package inside site-packages.
    nvcc = bfr.find_nvcc({"PATH": ""}, [str(site)], (13, 0), [])
    assert nvcc == bfr.Nvcc(pip13, (13, 0), site / "nvidia" / "cu13")


def test_nvcc_of_torchs_major_version_is_chosen(tmp_path: Path) -> None:
    old = fake_nvcc(tmp_path / "cuda-12.4" / "bin" / "nvcc", "12.4")
    pip13 = fake_nvcc(tmp_path / "site" / "nvidia" / "cu13" / "bin" / "nvcc", "13.0")
    env = {"PATH": str(old.parent)}
    assert bfr.find_nvcc(env, [str(tmp_path / "site")], (13, 0), []).path == pip13
    with pytest.raises(BuildError, match=r"CUDA 13.0 but the only nvcc found is .*12.4.*"
                       r"pip install 'nvidia-cuda-nvcc==13.0.\*'"):
        bfr.find_nvcc(env, [], (13, 0), [])
    with pytest.raises(BuildError, match="nvidia-cuda-nvcc-cu12 holds no nvcc"):
        bfr.find_nvcc({"PATH": str(pip13.parent)}, [], (12, 8), [])
    assert bfr.find_nvcc({"PATH": ""}, [], (13, 0), []) is None


def test_cuda_home_of_a_wrapper_is_the_real_toolkit(tmp_path: Path) -> None:
    # Like /usr/local/bin/nvcc running /usr/local/cuda-13.0/bin/nvcc.
    wrapper = fake_nvcc(tmp_path / "bin" / "nvcc", "13.0", real_bin=tmp_path / "cuda-13.0" / "bin")
    assert bfr.nvcc_cuda_home(wrapper) == tmp_path / "cuda-13.0"
    assert bfr.nvcc_archs(wrapper) == NVCC13_ARCHS


def test_cudart_link_dir(tmp_path: Path) -> None:
    pip_layout = tmp_path / "cu13"
    (pip_layout / "lib").mkdir(parents=True)
    (pip_layout / "lib" / "libcudart.so.13").write_bytes(b"")
    dirs = bfr._cudart_link_dir(pip_layout, tmp_path / "scratch")
    assert len(dirs) == 1
    assert (Path(dirs[0]) / "libcudart.so").resolve() == pip_layout / "lib" / "libcudart.so.13"
    (pip_layout / "lib" / "libcudart.so").write_bytes(b"")
    assert bfr._cudart_link_dir(pip_layout, tmp_path / "scratch2") == []
    with pytest.raises(BuildError, match="no libcudart"):
        bfr._cudart_link_dir(tmp_path / "empty", tmp_path / "scratch3")


def test_plan_without_nvcc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    plan = bfr.plan_build({"PATH": ""}, [], [])
    assert plan.nvcc is None and "-cuda-none-" in plan.key and "CPU only" in plan.note
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (9, 0))
    with pytest.raises(BuildError, match="sees a GPU but no nvcc"):
        bfr.plan_build({"PATH": ""}, [], [])
    fake_nvcc(tmp_path / "nvidia" / "cu13" / "bin" / "nvcc", "13.0")
    plan = bfr.plan_build({"PATH": ""}, [str(tmp_path)], [])
    assert plan.archs == [CudaArch(90, True)]
    assert plan.key == bfr.wheel_key(torch.__version__, "13.0", plan.archs, bfr.python_tag())
    assert "-cuda-13.0-sm_90ptx-" in plan.key


# ---------------------------------------------------------- import check --
@pytest.fixture
def fake_fast_rnnt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Installs a fake fast_rnnt (with_cuda() and a build record) on sys.path."""
    names = ("fast_rnnt", "_fast_rnnt")
    saved = {name: sys.modules[name] for name in names if name in sys.modules}

    def install(info: dict | None, with_cuda: bool = False, load_error: str = "") -> None:
        package = tmp_path / "fast_rnnt"
        package.mkdir(exist_ok=True)
        (package / "__init__.py").write_text("from _fast_rnnt import with_cuda\n")
        (package / bfr.BUILD_INFO_NAME).unlink(missing_ok=True)
        if info is not None:
            (package / bfr.BUILD_INFO_NAME).write_text(json.dumps(info))
        body = f"raise ImportError({load_error!r})\n" if load_error else ""
        body += f"def with_cuda():\n    return {with_cuda}\n"
        (tmp_path / "_fast_rnnt.py").write_text(body)
        for name in names:
            sys.modules.pop(name, None)
        importlib.invalidate_caches()

    monkeypatch.syspath_prepend(str(tmp_path))
    yield install
    for name in names:
        sys.modules.pop(name, None)
    sys.modules.update(saved)


def record(**overrides) -> dict:
    info = {"key": "k", "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "with_cuda": False, "archs": []}
    info.update(overrides)
    return info


def test_check_accepts_a_matching_build(fake_fast_rnnt) -> None:
    fake_fast_rnnt(record())
    assert bfr.check_fast_rnnt_build() is None


def test_check_names_the_torch_it_was_built_for(fake_fast_rnnt) -> None:
    fake_fast_rnnt(record(torch="2.11.0+cu130", torch_cuda="13.0"))
    problem = bfr.check_fast_rnnt_build()
    assert problem.startswith("fast_rnnt was built for torch 2.11.0+cu130 (CUDA 13.0), "
                              f"this is torch {torch.__version__}")
    assert "shared/setup.sh" in problem and "\n" not in problem


def test_check_explains_an_undefined_symbol(fake_fast_rnnt) -> None:
    error = "_fast_rnnt.so: undefined symbol: _ZN3c104cuda9SetDeviceEa"
    fake_fast_rnnt(record(torch="2.12.0+cpu"), load_error=error)
    problem = bfr.check_fast_rnnt_build()
    assert "built for torch 2.12.0+cpu" in problem and "undefined symbol" in problem
    # A build without record (fast_rnnt's own CMake) still gets a clear line.
    fake_fast_rnnt(None, load_error=error)
    assert bfr.check_fast_rnnt_build().startswith(
        f"fast_rnnt does not load with torch {torch.__version__}")


def test_check_without_fast_rnnt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bfr.importlib.util, "find_spec", lambda name: None)
    assert bfr.check_fast_rnnt_build().startswith("fast_rnnt is not installed")


def test_check_on_a_gpu(fake_fast_rnnt, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (9, 0))
    fake_fast_rnnt(record(), with_cuda=False)
    problem = bfr.check_fast_rnnt_build()
    assert "built without CUDA kernels" in problem and "nvidia-cuda-nvcc==13.0" in problem
    fake_fast_rnnt(record(with_cuda=True, archs=["8.0", "8.6"]), with_cuda=True)
    assert "no kernels for cuda:0 (sm_90)" in bfr.check_fast_rnnt_build()
    fake_fast_rnnt(record(with_cuda=True, archs=["8.0", "8.6+PTX"]), with_cuda=True)
    assert bfr.check_fast_rnnt_build() is None


def test_the_installed_fast_rnnt_passes_the_check() -> None:
    """What shared/setup.sh installed (with this script) suits this torch."""
    pytest.importorskip("fast_rnnt")
    assert bfr.check_fast_rnnt_build() is None


def test_first_error_line_of_a_build_log() -> None:
    log = """  building '_fast_rnnt' extension
  /usr/include/c++/12/bits/stl_vector.h:123: warning: unused variable
  nvcc fatal   : Unsupported gpu architecture 'compute_50'
  error: command '/usr/bin/nvcc' failed with exit code 1
"""
    assert bfr._first_error_line(log) == "nvcc fatal   : Unsupported gpu architecture 'compute_50'"
    assert bfr._first_error_line("just\nthe last line\n") == "the last line"
