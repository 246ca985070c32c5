"""Building fast_rnnt 1.3's extension for the running torch, and checking an
installed build against the running torch and GPU (:func:`check_fast_rnnt_build`,
which shared/rnnt_loss.py calls before it uses fast_rnnt).

shared/build_fast_rnnt.py is the command (shared/build_fast_rnnt.sh and
shared/setup.sh run it); its docstring says what the build does and why.
Standard library only at import (torch is imported where it is needed): the
command runs with any Python given to shared/build_fast_rnnt.sh.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

FAST_RNNT_VERSION = "1.3"
#: Bump when the way the wheel is built changes, so that cached wheels of an
#: older recipe are not reused (1 was fast_rnnt's own CMake).
BUILD_REVISION = 2
BUILD_INFO_NAME = "_build_info.json"
REBUILD_HINT = "rebuild it: shared/setup.sh (or python shared/build_fast_rnnt.py --force)"
EXIT_NO_CUDA_BUILD = 2

# fast_rnnt 1.3's sources (paths inside the sdist).  fast_rnnt's CMake compiles
# the .cu files as C++ (copied to .cc) when CUDA is off, and all of them with
# nvcc when it is on; here only the kernel file goes through nvcc (the others
# contain no device code, and nvcc would parse torch's headers once per arch).
HOST_SOURCES = (
    "fast_rnnt/csrc/mutual_information_cpu.cu",
    "fast_rnnt/python/csrc/fast_rnnt.cu",
    "fast_rnnt/python/csrc/mutual_information.cu",
)
CUDA_SOURCES = ("fast_rnnt/csrc/mutual_information_cuda.cu",)
PACKAGE_DIR = "fast_rnnt/python/fast_rnnt"

# The setup.py that replaces fast_rnnt's (which runs CMake and make); it reads
# its settings from ft_build_config.json, written next to it by this script.
SETUP_PY = '''\
import json
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "ft_build_config.json")) as f:
    cfg = json.load(f)
Extension = CUDAExtension if cfg["with_cuda"] else CppExtension
setup(
    name="fast_rnnt",
    version=cfg["version"],
    description="fast_rnnt (pruned RNN-T loss), built by shared/build_fast_rnnt.py",
    package_dir={"fast_rnnt": cfg["package_dir"]},
    packages=["fast_rnnt"],
    package_data={"fast_rnnt": [cfg["build_info_name"]]},
    ext_modules=[
        Extension(
            "_fast_rnnt",
            cfg["sources"],
            include_dirs=[here] + cfg["include_dirs"],
            library_dirs=cfg["library_dirs"],
            extra_compile_args=cfg["extra_compile_args"],
        )
    ],
    cmdclass={"build_ext": BuildExtension},
    install_requires=["torch"],
    zip_safe=False,
)
'''


class BuildError(RuntimeError):
    """A build step failed; the message is one line saying why."""


def log(message: str) -> None:
    print(f"[fast_rnnt {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------ architectures --
@dataclasses.dataclass(frozen=True, order=True)
class CudaArch:
    """One CUDA target: SASS for ``sm`` (86 = compute capability 8.6), plus PTX if ``ptx``."""

    sm: int
    ptx: bool = False

    def __str__(self) -> str:
        return f"{self.sm // 10}.{self.sm % 10}" + ("+PTX" if self.ptx else "")

    @property
    def tag(self) -> str:
        """The form used in the cache key: ``86`` or ``120ptx``."""
        return f"{self.sm}" + ("ptx" if self.ptx else "")

    def gencode_flags(self) -> list[str]:
        flags = [f"-gencode=arch=compute_{self.sm},code=sm_{self.sm}"]
        if self.ptx:
            flags.append(f"-gencode=arch=compute_{self.sm},code=compute_{self.sm}")
        return flags


def parse_arch_list(text: str, variable: str = "FT_CUDA_ARCHS") -> list[CudaArch]:
    """Parses an architecture list: ``"80,90"``, ``"sm_80;sm_90"``, ``"7.5 8.6+PTX"``.

    Raises BuildError naming ``variable`` for anything else (named families such
    as ``Ampere`` and arch-specific ``9.0a`` targets are not accepted).
    """
    archs: dict[int, CudaArch] = {}
    for token in re.split(r"[\s,;]+", text.strip()):
        if not token:
            continue
        match = re.fullmatch(r"(?:sm_|compute_)?(\d+)(?:\.(\d))?(\+ptx)?", token, re.IGNORECASE)
        if match is None or (match.group(2) is None and int(match.group(1)) < 10):
            raise BuildError(
                f"{variable}={text!r}: cannot read {token!r}; write e.g. '80,90' or '8.0 9.0+PTX'"
            )
        major_or_sm, minor, ptx = match.groups()
        sm = int(major_or_sm) * 10 + int(minor) if minor is not None else int(major_or_sm)
        previous = archs.get(sm)
        archs[sm] = CudaArch(sm, bool(ptx) or (previous is not None and previous.ptx))
    if not archs:
        raise BuildError(f"{variable} is set but empty")
    return sorted(archs.values())


def default_archs(cuda_version: tuple[int, int]) -> list[CudaArch]:
    """Architectures to build for when neither a list nor a GPU says which.

    Volta (7.0) and newer that the CUDA version can target: CUDA 13 dropped
    everything before Turing (7.5), CUDA 12.8 added Blackwell (10.0, 12.0),
    11.8 Ada and Hopper (8.9, 9.0).  Never Kepler/Maxwell (3.5, 5.0), which
    CUDA 12 deprecated and 13 removed.  The newest also gets PTX, which the
    driver compiles for GPUs newer than the list.
    """
    if cuda_version >= (13, 0):
        sms = [75, 80, 86, 89, 90, 100, 120]
    elif cuda_version >= (12, 8):
        sms = [70, 75, 80, 86, 89, 90, 100, 120]
    elif cuda_version >= (11, 8):
        sms = [70, 75, 80, 86, 89, 90]
    elif cuda_version >= (11, 1):
        sms = [60, 70, 75, 80, 86]
    elif cuda_version >= (11, 0):
        sms = [60, 70, 75, 80]
    else:
        sms = [60, 70, 75]
    return [CudaArch(sm) for sm in sms]


def _with_ptx_on_newest(archs: list[CudaArch]) -> list[CudaArch]:
    archs = sorted(archs)
    return archs[:-1] + [CudaArch(archs[-1].sm, True)]


def select_cuda_archs(
    cuda_version: tuple[int, int],
    gpu_capabilities: Sequence[tuple[int, int]],
    env: Mapping[str, str],
    nvcc_archs: Collection[int] | None = None,
) -> tuple[list[CudaArch], str]:
    """Chooses the CUDA architectures and says where they came from.

    Order: ``FT_CUDA_ARCHS``, ``TORCH_CUDA_ARCH_LIST`` (an explicit setting
    wins, as in torch's own cpp_extension), the visible GPUs, then
    :func:`default_archs`.  ``nvcc_archs`` (the sm numbers the nvcc can target,
    ``None``: unknown) drops what the nvcc cannot build: from a list or the
    defaults silently (an older container's TORCH_CUDA_ARCH_LIST often names
    5.2); a GPU newer than the nvcc gets PTX of the newest arch below it.

    Args:
      cuda_version: (major, minor) of the CUDA toolkit (nvcc).
      gpu_capabilities: compute capabilities of the visible GPUs, e.g. [(9, 0)].
      env: the environment (``os.environ``).
      nvcc_archs: e.g. {75, 80, 86, 89, 90, 100, 120}.
    Returns:
      (sorted architectures, a few words on their source).
    """
    supported = set(nvcc_archs) if nvcc_archs else None
    for variable in ("FT_CUDA_ARCHS", "TORCH_CUDA_ARCH_LIST"):
        text = env.get(variable, "").strip()
        if not text or (variable == "TORCH_CUDA_ARCH_LIST" and text == "native"):
            continue
        archs = parse_arch_list(text, variable)
        if supported is not None:
            kept = [arch for arch in archs if arch.sm in supported]
            if not kept:
                raise BuildError(
                    f"{variable}={text!r}: nvcc {cuda_version[0]}.{cuda_version[1]} can build "
                    f"none of these (it can: {', '.join(str(s) for s in sorted(supported))})"
                )
            archs = kept
        return archs, variable

    if gpu_capabilities:
        archs = []
        for major, minor in sorted(set(gpu_capabilities)):
            sm = major * 10 + minor
            if supported is None or sm in supported:
                archs.append(CudaArch(sm))
                continue
            below = [s for s in supported if s <= sm]
            if not below:
                raise BuildError(
                    f"nvcc {cuda_version[0]}.{cuda_version[1]} cannot build for this GPU "
                    f"(sm_{sm}); it needs an older CUDA (and a torch built for it)"
                )
            # Same major: the SASS runs (8.0 code on an 8.6 GPU); else only PTX does.
            best = max(below)
            archs.append(CudaArch(best, ptx=best // 10 != sm // 10))
        return _with_ptx_on_newest(sorted(set(archs))), "the visible GPUs"

    archs = default_archs(cuda_version)
    if supported is not None:
        archs = [arch for arch in archs if arch.sm in supported] or archs
    return _with_ptx_on_newest(archs), f"the defaults for CUDA {cuda_version[0]}.{cuda_version[1]}"


def arch_runs_on(archs: Sequence[CudaArch], capability: tuple[int, int]) -> bool:
    """Whether code built for ``archs`` runs on a GPU of compute ``capability``.

    SASS runs on the same major version with an equal or higher minor; PTX is
    compiled by the driver for any equal or newer GPU.
    """
    sm = capability[0] * 10 + capability[1]
    return any(
        (arch.sm // 10 == sm // 10 and arch.sm <= sm) or (arch.ptx and arch.sm <= sm)
        for arch in archs
    )


# -------------------------------------------------------------------- nvcc --
@dataclasses.dataclass(frozen=True)
class Nvcc:
    path: Path
    version: tuple[int, int]
    #: The toolkit root (``include``, ``lib`` or ``lib64``), see :func:`nvcc_cuda_home`.
    cuda_home: Path


DEFAULT_TOOLKIT_DIRS = ("/usr/local/cuda",)


def nvcc_candidates(
    env: Mapping[str, str],
    site_dirs: Sequence[str],
    toolkit_dirs: Sequence[str] = DEFAULT_TOOLKIT_DIRS,
) -> list[Path]:
    """Existing nvcc executables, in the order they are preferred.

    ``$CUDACXX``, ``$CUDA_HOME/bin``, ``$CUDA_PATH/bin``, ``PATH``, then
    ``toolkit_dirs/bin``, then the package index's nvcc in ``site_dirs``.
    """
    paths: list[Path] = []
    if env.get("CUDACXX"):
        paths.append(Path(env["CUDACXX"]))
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(variable):
            paths.append(Path(env[variable]) / "bin" / "nvcc")
    on_path = shutil.which("nvcc", path=env.get("PATH", ""))
    if on_path:
        paths.append(Path(on_path))
    paths.extend(Path(directory) / "bin" / "nvcc" for directory in toolkit_dirs)
    for directory in site_dirs:
        # nvidia-cuda-nvcc for CUDA 13 installs nvidia/cu13/bin/nvcc; the CUDA 12
        # wheels use nvidia/cuda_nvcc/ (and hold only ptxas, no nvcc).
        paths.extend(sorted(Path(directory).glob("nvidia/cu[0-9]*/bin/nvcc"), reverse=True))
        paths.append(Path(directory) / "nvidia" / "cuda_nvcc" / "bin" / "nvcc")
    unique: list[Path] = []
    for path in paths:
        if path.is_file() and os.access(path, os.X_OK) and path not in unique:
            unique.append(path)
    return unique


def nvcc_version(nvcc: Path) -> tuple[int, int]:
    """(major, minor) from ``nvcc --version`` ("Cuda compilation tools, release 13.0, ...")."""
    output = subprocess.run(
        [str(nvcc), "--version"], capture_output=True, text=True, timeout=60
    ).stdout
    match = re.search(r"release (\d+)\.(\d+)", output)
    if match is None:
        raise BuildError(f"{nvcc} --version says no release: {output.strip()[-200:]!r}")
    return int(match.group(1)), int(match.group(2))


def nvcc_cuda_home(nvcc: Path) -> Path:
    """The directory above the real nvcc binary.

    ``nvcc`` may be a wrapper script (this project's machines have
    ``/usr/local/bin/nvcc`` running ``/usr/local/cuda-13.0/bin/nvcc``): nvcc's
    dry run names the directory it runs from (``_HERE_``).
    """
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run(
            [str(nvcc), "--dryrun", "-c", "-x", "cu", os.devnull, "-o", f"{scratch}/x.o"],
            capture_output=True, text=True, timeout=60,
        )
    match = re.search(r"^#\$ _HERE_=(.+)$", result.stdout + result.stderr, re.MULTILINE)
    bin_dir = Path(match.group(1).strip()) if match else nvcc.resolve().parent
    return bin_dir.parent


def nvcc_archs(nvcc: Path) -> set[int] | None:
    """The sm numbers ``nvcc --list-gpu-arch`` names (None if it cannot say)."""
    try:
        output = subprocess.run(
            [str(nvcc), "--list-gpu-arch"], capture_output=True, text=True, timeout=60
        ).stdout
    except OSError:
        return None
    archs = {int(number) for number in re.findall(r"compute_(\d+)\b", output)}
    return archs or None


def find_nvcc(
    env: Mapping[str, str],
    site_dirs: Sequence[str],
    torch_cuda: tuple[int, int],
    toolkit_dirs: Sequence[str] = DEFAULT_TOOLKIT_DIRS,
) -> Nvcc | None:
    """The first nvcc whose CUDA major version is torch's; None if there is no nvcc at all.

    Raises BuildError when every nvcc found is of another major version (its
    extension would link another ``libcudart.so.N`` than torch's).
    """
    others = []
    for path in nvcc_candidates(env, site_dirs, toolkit_dirs):
        version = nvcc_version(path)
        if version[0] == torch_cuda[0]:
            return Nvcc(path, version, nvcc_cuda_home(path))
        others.append(f"{path} (CUDA {version[0]}.{version[1]})")
    if others:
        raise BuildError(
            f"torch is built with CUDA {torch_cuda[0]}.{torch_cuda[1]} but the only nvcc found "
            f"{'is' if len(others) == 1 else 'are'} {', '.join(others)}; "
            + nvcc_install_hint(torch_cuda)
        )
    return None


def nvcc_install_hint(torch_cuda: tuple[int, int]) -> str:
    major, minor = torch_cuda
    if major >= 13:
        # nvcc's own dependencies (cicc, crt headers) unpinned would be the newest.
        packages = " ".join(f"'{name}=={major}.{minor}.*'" for name in (
            "nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-crt", "nvidia-cuda-cccl"))
        return f"install one: pip install {packages} (or set CUDA_HOME/CUDACXX)"
    return (
        f"install a CUDA {major}.x toolkit and set CUDA_HOME (the package index's "
        f"nvidia-cuda-nvcc-cu{major} holds no nvcc)"
    )


# --------------------------------------------------------------- cache key --
def python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def wheel_key(
    torch_version: str, cuda_version: str | None, archs: Sequence[CudaArch], py_tag: str
) -> str:
    """The cache directory name of a build, e.g.

    ``torch-2.13.0+cpu-cuda-none-cp311-b2`` or
    ``torch-2.11.0+cu130-cuda-13.0-sm_75_80_90ptx-cp312-b2``.  ``cuda_version``
    is None for an extension without CUDA kernels (also on a CUDA torch).
    """
    if cuda_version is None:
        cuda = "cuda-none"
    else:
        if not archs:
            raise ValueError("a CUDA build needs at least one architecture")
        cuda = f"cuda-{cuda_version}-sm_" + "_".join(arch.tag for arch in sorted(archs))
    return f"torch-{torch_version}-{cuda}-{py_tag}-b{BUILD_REVISION}"


# ----------------------------------------------------------- import check --
def _read_build_info(package_dir: Path) -> dict | None:
    try:
        return json.loads((package_dir / BUILD_INFO_NAME).read_text())
    except (OSError, ValueError):
        return None


def check_fast_rnnt_build() -> str | None:
    """Whether the importable fast_rnnt suits the running torch and GPU.

    Returns None when it does, else one line saying what is wrong and how to
    rebuild: not installed; built for another torch (from the record this
    script leaves in the package, or an import failure such as an undefined
    symbol); built without CUDA kernels while torch has CUDA and sees a GPU; no
    kernels for a visible GPU's architecture.  Imports fast_rnnt (and, with a
    GPU, initialises CUDA to read its compute capability).
    """
    import torch

    spec = importlib.util.find_spec("fast_rnnt")
    if spec is None or spec.origin is None:
        return f"fast_rnnt is not installed; {REBUILD_HINT}"
    info = _read_build_info(Path(spec.origin).parent)
    here = f"torch {torch.__version__} (CUDA {torch.version.cuda})"
    built_for = None
    if info is not None:
        built_for = f"torch {info.get('torch')} (CUDA {info.get('torch_cuda')})"
    try:
        import _fast_rnnt
        import fast_rnnt  # noqa: F401
    except ImportError as error:
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        if built_for is not None and built_for != here:
            return (
                f"fast_rnnt was built for {built_for}, this is {here}: {first_line}; "
                + REBUILD_HINT
            )
        return f"fast_rnnt does not load with {here}: {first_line}; {REBUILD_HINT}"
    if built_for is not None and built_for != here:
        return f"fast_rnnt was built for {built_for}, this is {here}; {REBUILD_HINT}"
    if not (torch.version.cuda and torch.cuda.is_available()):
        return None
    if not _fast_rnnt.with_cuda():
        return (
            f"fast_rnnt was built without CUDA kernels, but {here} sees a GPU: its loss "
            f"would fail on CUDA tensors; {nvcc_install_hint(_cuda_tuple(torch.version.cuda))}, "
            f"then {REBUILD_HINT}"
        )
    if info is not None and info.get("archs"):
        archs = parse_arch_list(" ".join(info["archs"]), "the build record")
        for index in range(torch.cuda.device_count()):
            capability = torch.cuda.get_device_capability(index)
            if not arch_runs_on(archs, capability):
                sm = capability[0] * 10 + capability[1]
                return (
                    f"fast_rnnt has no kernels for cuda:{index} (sm_{sm}); it was built for "
                    f"{' '.join(info['archs'])}; {REBUILD_HINT} (FT_CUDA_ARCHS={sm} to choose)"
                )
    return None


def _cuda_tuple(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


# ------------------------------------------------------------------ build --
@dataclasses.dataclass
class BuildPlan:
    key: str
    nvcc: Nvcc | None
    archs: list[CudaArch]
    note: str  # one line on what is built and why


def plan_build(
    env: Mapping[str, str],
    site_dirs: Sequence[str] | None = None,
    toolkit_dirs: Sequence[str] = DEFAULT_TOOLKIT_DIRS,
) -> BuildPlan:
    """Decides CPU or CUDA, the nvcc and the architectures for the running torch.

    ``site_dirs`` (default: this Python's site-packages and sys.path) and
    ``toolkit_dirs`` are where nvcc is looked for besides the environment.
    Raises BuildError (exit 2) when torch has CUDA and sees a GPU but there is
    no usable nvcc.
    """
    import torch

    tag = python_tag()
    if not torch.version.cuda:
        key = wheel_key(torch.__version__, None, [], tag)
        return BuildPlan(key, None, [], "for CPU (torch has no CUDA)")
    torch_cuda = _cuda_tuple(torch.version.cuda)
    if site_dirs is None:
        site_dirs = list(dict.fromkeys(site.getsitepackages() + [p for p in sys.path if p]))
    nvcc = find_nvcc(env, site_dirs, torch_cuda, toolkit_dirs)
    gpus = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    if nvcc is None:
        if gpus:
            raise BuildError(
                f"torch {torch.__version__} has CUDA and sees a GPU but no nvcc was found; "
                + nvcc_install_hint(torch_cuda)
            )
        key = wheel_key(torch.__version__, None, [], tag)
        return BuildPlan(
            key, None, [], "for CPU only: torch has CUDA but there is neither a GPU nor an nvcc"
        )
    archs, source = select_cuda_archs(nvcc.version, gpus, env, nvcc_archs(nvcc.path))
    key = wheel_key(torch.__version__, torch.version.cuda, archs, tag)
    note = (
        f"with CUDA {nvcc.version[0]}.{nvcc.version[1]} ({nvcc.path}, CUDA_HOME "
        f"{nvcc.cuda_home}) for "
        f"{' '.join(str(a) for a in archs)} (from {source})"
    )
    return BuildPlan(key, nvcc, archs, note)


def _cudart_link_dir(cuda_home: Path, scratch: Path) -> list[str]:
    """A directory with ``libcudart.so`` for the linker, if the toolkit lacks one.

    The package index's nvidia-cuda-runtime ships only ``libcudart.so.13``; a
    link named ``libcudart.so`` lets ``-lcudart`` find it (the extension then
    needs ``libcudart.so.13``, the library torch itself loads).
    """
    for lib in ("lib64", "lib"):
        if (cuda_home / lib / "libcudart.so").exists():
            return []
    for lib in ("lib64", "lib"):
        versioned = sorted((cuda_home / lib).glob("libcudart.so.[0-9]*"))
        if versioned:
            link_dir = scratch / "cudart-link"
            link_dir.mkdir(parents=True, exist_ok=True)
            (link_dir / "libcudart.so").symlink_to(versioned[0])
            return [str(link_dir)]
    raise BuildError(
        f"no libcudart.so* under {cuda_home}/lib64 or lib: install the CUDA runtime "
        "(pip: nvidia-cuda-runtime of torch's CUDA version)"
    )


def prepare_sources(sdist: Path, work: Path, plan: BuildPlan, build_info: dict) -> Path:
    """Unpacks the sdist and writes the setup.py, its config and the build record.

    Returns the source directory to build a wheel from.
    """
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
            archive.extractall(work, filter="data")
        else:
            archive.extractall(work)
    src = work / f"fast_rnnt-{FAST_RNNT_VERSION}"
    if not (src / HOST_SOURCES[0]).is_file():
        raise BuildError(f"{sdist} is not the fast_rnnt {FAST_RNNT_VERSION} sdist")
    sources = []
    for name in HOST_SOURCES:
        # As fast_rnnt's CMake does without CUDA: the same file, compiled as C++.
        copy = (src / name).with_suffix(".cc")
        shutil.copyfile(src / name, copy)
        sources.append(str(copy.relative_to(src)))
    cxx_flags = ["-O3", "-g0"]
    nvcc_flags: list[str] = []
    include_dirs: list[str] = []
    library_dirs: list[str] = []
    if plan.nvcc is not None:
        sources += list(CUDA_SOURCES)
        cuda_home = plan.nvcc.cuda_home
        # nvcc includes cuda_runtime.h by itself; g++ must be told, for the
        # cudaGetDevice/cudaSetDevice of fast_rnnt's DeviceGuard.
        cxx_flags += ["-DFT_WITH_CUDA", "-include", "cuda_runtime_api.h"]
        nvcc_flags = ["-O3", "-DFT_WITH_CUDA", "--expt-extended-lambda"]
        for arch in plan.archs:
            nvcc_flags += arch.gencode_flags()
        if (cuda_home / "include" / "cccl").is_dir():
            # The pip CUDA 13 layout keeps CCCL (cuda/std, nv/target) here.
            include_dirs.append(str(cuda_home / "include" / "cccl"))
        library_dirs = _cudart_link_dir(cuda_home, work)
    package = src / PACKAGE_DIR
    init = package / "__init__.py"
    # _fast_rnnt links libc10/libtorch without an rpath: torch must be loaded first.
    init.write_text("import torch  # noqa: F401  (loads the libraries _fast_rnnt links)\n"
                    + init.read_text())
    (package / BUILD_INFO_NAME).write_text(json.dumps(build_info, indent=1) + "\n")
    config = {
        "version": FAST_RNNT_VERSION,
        "with_cuda": plan.nvcc is not None,
        "package_dir": PACKAGE_DIR,
        "build_info_name": BUILD_INFO_NAME,
        "sources": sources,
        "include_dirs": include_dirs,
        "library_dirs": library_dirs,
        "extra_compile_args": {"cxx": cxx_flags, "nvcc": nvcc_flags},
    }
    (src / "ft_build_config.json").write_text(json.dumps(config, indent=1) + "\n")
    (src / "setup.py").write_text(SETUP_PY)
    (src / "pyproject.toml").unlink(missing_ok=True)
    return src


def _first_error_line(log_text: str) -> str:
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    for pattern in (r"\berror\b|fatal", r"Error"):
        for line in lines:
            if re.search(pattern, line) and "warning" not in line.lower():
                return line[:300]
    return lines[-1][:300] if lines else "no output"


def build_wheel(src: Path, wheel_dir: Path, plan: BuildPlan, env: Mapping[str, str]) -> Path:
    """Runs ``pip wheel`` on the prepared sources; its output goes to wheel_dir/build.log."""
    build_env = dict(env)
    # ninja (if pip installed it beside this Python) is found on PATH.
    build_env["PATH"] = os.pathsep.join(
        [str(Path(sys.executable).parent), build_env.get("PATH", "")]
    )
    build_env.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    if plan.nvcc is not None:
        build_env["CUDA_HOME"] = str(plan.nvcc.cuda_home)
        # The gencode flags are ours; torch would otherwise add its own.
        build_env.pop("TORCH_CUDA_ARCH_LIST", None)
    log_path = wheel_dir / "build.log"
    command = [sys.executable, "-m", "pip", "wheel", "-v", "--disable-pip-version-check",
               "--no-build-isolation", "--no-deps", "--no-index", "-w", str(wheel_dir), str(src)]
    with open(log_path, "w") as log_file:
        result = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT,
                                env=build_env, cwd=src)
    wheels = sorted(wheel_dir.glob(f"fast_rnnt-{FAST_RNNT_VERSION}-*.whl"))
    if result.returncode != 0 or not wheels:
        raise BuildError(f"{_first_error_line(log_path.read_text(errors='replace'))} "
                         f"(full log: {log_path})")
    return wheels[0]


def install_wheel(wheel: Path, target: Path | None) -> None:
    if target is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "--no-deps", "--no-index", "--force-reinstall", str(wheel)], check=True)
        return
    target.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target / "fast_rnnt", ignore_errors=True)
    for old in target.glob("_fast_rnnt*.so"):
        old.unlink()
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)


VERIFY_PY = """\
import sys
import torch
from shared.fast_rnnt_build import check_fast_rnnt_build

problem = check_fast_rnnt_build()
if problem:
    sys.exit(problem)
import _fast_rnnt
import fast_rnnt
from shared.rnnt_reference import rnnt_loss as reference_rnnt_loss

torch.manual_seed(0)
logits = torch.randn(2, 6, 4, 7, dtype=torch.float64)
symbols = torch.tensor([[1, 2, 3], [4, 5, 0]])
boundary = torch.tensor([[0, 0, 3, 6], [0, 0, 2, 5]])
expected = reference_rnnt_loss(logits, symbols, 0, boundary, reduction="none")
devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and _fast_rnnt.with_cuda() else [])
for device in devices:
    loss = fast_rnnt.rnnt_loss(logits.to(device), symbols.to(device), termination_symbol=0,
                               boundary=boundary.to(device), reduction="none")
    torch.testing.assert_close(loss.cpu(), expected)
print(f"fast_rnnt (CUDA kernels: {_fast_rnnt.with_cuda()}) loads with torch {torch.__version__} "
      f"and its loss equals the reference on {', '.join(devices)}")
"""


def verify(target: Path | None) -> None:
    """In a new interpreter: the import check, then the loss against shared.rnnt_reference."""
    script_dir = Path(__file__).resolve().parent
    paths = ([str(target)] if target is not None else []) + [str(script_dir),
                                                               str(script_dir.parent)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", VERIFY_PY], env=env, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise BuildError(f"the built fast_rnnt fails its check: "
                         f"{_first_error_line(result.stderr) if result.stderr else 'no output'}")
    print(result.stdout.strip(), flush=True)


def installed_key(target: Path | None) -> str | None:
    """The key recorded by the fast_rnnt that the build would replace (None: none/unknown)."""
    if target is not None:
        info = _read_build_info(target / "fast_rnnt")
    else:
        spec = importlib.util.find_spec("fast_rnnt")
        info = _read_build_info(Path(spec.origin).parent) if spec and spec.origin else None
    return info.get("key") if info else None


def build(plan: BuildPlan, sdist: Path | None, wheel_dir: Path) -> Path:
    """Builds the wheel of ``plan`` into ``wheel_dir`` from ``sdist`` (None: download it)."""
    import torch

    cuda = plan.nvcc is not None
    log(f"building fast_rnnt {FAST_RNNT_VERSION} {plan.note}"
        + (" (minutes)" if cuda else " (about a minute)"))
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="fast_rnnt-build-") as scratch:
        work = Path(scratch)
        if sdist is None:
            download = subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                 "--no-deps", "--no-binary", ":all:", f"fast_rnnt=={FAST_RNNT_VERSION}",
                 "-d", str(work)], capture_output=True, text=True)
            sdist = work / f"fast_rnnt-{FAST_RNNT_VERSION}.tar.gz"
            if download.returncode != 0 or not sdist.is_file():
                raise BuildError(f"pip could not download the fast_rnnt sdist (pass --sdist): "
                                 f"{_first_error_line(download.stderr)}")
        build_info = {
            "key": plan.key,
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "with_cuda": cuda,
            "archs": [str(arch) for arch in plan.archs],
            "nvcc": str(plan.nvcc.path) if cuda else None,
            "python": python_tag(),
            "build_revision": BUILD_REVISION,
        }
        src = prepare_sources(sdist.resolve(), work, plan, build_info)
        wheel = build_wheel(src, wheel_dir, plan, os.environ)
    log(f"built {wheel.name} in {time.time() - start:.0f} s")
    return wheel
