"""A directory of links to an experiment's checkpoints and exports, for
benchmarks that run the recipe's scripts.

decode.py, streaming_decode.py and sherpa_onnx_decode.py write their result
files (recogs, wer-summary, speed, latency) into the experiment directory, and
make_results.py reports every such file it finds.  Benchmarks decode subsets
(e.g. the first 100 utterances), so they work in a directory of links to the
real one's checkpoints and exports instead: the experiment's RESULTS.md never
mixes in benchmark subsets.
"""

from pathlib import Path


def link_exp_dir(exp_dir: Path, scratch_dir: Path) -> Path:
    """Fills scratch_dir with symbolic links to the checkpoints (*.pt), ONNX
    files and tokens.txt of exp_dir; returns scratch_dir."""
    scratch_dir.mkdir(parents=True, exist_ok=True)
    for path in Path(exp_dir).iterdir():
        if path.is_file() and (path.suffix in (".pt", ".onnx") or path.name == "tokens.txt"):
            (scratch_dir / path.name).symlink_to(path.resolve())
    return scratch_dir
