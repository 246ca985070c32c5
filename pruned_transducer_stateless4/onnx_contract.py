"""The ONNX export's file contract: names, metadata, streaming settings.

export.py --onnx 1 writes, in EXP_DIR, encoder/decoder/joiner-SUFFIX.onnx
and their int8 versions (*.int8.onnx), tokens.txt and bpe.vocab, where
SUFFIX names the checkpoints as the result files do (epoch-E-avg-A or
iter-B-avg-A).  The encoder's metadata is what sherpa-onnx's online
Conformer transducer reads (sherpa-onnx/csrc/online-conformer-transducer-
model.cc): the window of T = 4 * chunk + pad_length feature frames per call,
decode_chunk_len = 4 * chunk, left_context and the state shapes.  The
decoder stores vocab_size and context_size, the joiner joiner_dim.

Writers (export.py) and readers (sherpa_onnx_decode.py, the server, the
benchmarks) both use this module, so the two sides cannot drift apart.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.run_record import model_selection
from shared.utils import RecipeError

if TYPE_CHECKING:
    from pruned_transducer_stateless4.conformer import Conformer

ONNX_PARTS = ("encoder", "decoder", "joiner")


def export_suffix(epoch: int, iter: int, avg: int) -> str:
    """The file-name suffix of an export of --epoch/--iter/--avg."""
    return model_selection(epoch, iter, avg)


def onnx_export_paths(exp_dir: Path, suffix: str, int8: bool = False) -> dict[str, Path]:
    """{"encoder", "decoder", "joiner", "tokens"} -> the files of an ONNX export."""
    ending = ".int8.onnx" if int8 else ".onnx"
    paths = {name: Path(exp_dir) / f"{name}-{suffix}{ending}" for name in ONNX_PARTS}
    paths["tokens"] = Path(exp_dir) / "tokens.txt"
    return paths


def check_export(paths: dict[str, Path], suffix: str) -> None:
    """One-line RecipeError naming the first missing file of the export."""
    for path in paths.values():
        if not path.is_file():
            raise RecipeError(
                f"{path} not found; run ./pruned_transducer_stateless4/export.py --onnx 1 "
                f"--exp-dir {path.parent} with the --epoch/--iter/--avg of {suffix}")


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """The custom metadata of an exported model file (encoder_metadata for the
    encoder)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def export_streaming_config(encoder_path: Path) -> tuple[int, int]:
    """(chunk size, left context) in encoder frames of an exported encoder."""
    metadata = read_onnx_metadata(encoder_path)
    try:
        return (int(metadata["decode_chunk_len"]) // int(metadata.get("subsampling_factor", 4)),
                int(metadata["left_context"]))
    except KeyError as error:
        raise RecipeError(f"{encoder_path} has no {error} metadata: not written by "
                          "export.py --onnx 1") from None


def encoder_metadata(params: dict[str, Any], encoder: "Conformer") -> dict[str, Any]:
    """sherpa-onnx's metadata, T and pad_length from the encoder's chunk
    protocol: a window of 4 * chunk + pad_length feature frames per call."""
    chunk = params["decode_chunk_size"] * encoder.subsampling_factor
    pad_length = encoder.streaming_pad_length(0, encoder.subsampling_factor)
    return {
        "model_type": "conformer",
        "version": "1",
        "model_author": "pruned_transducer_stateless4 (icefall-style CPU recipe)",
        "comment": "streaming reworked Conformer transducer (icefall's stateless4)",
        "decode_chunk_len": chunk,
        "T": chunk + pad_length,
        "pad_length": pad_length,
        "left_context": params["left_context"],
        "num_encoder_layers": params["num_encoder_layers"],
        "encoder_dim": params["encoder_dim"],
        "cnn_module_kernel": params["cnn_module_kernel"],
        "subsampling_factor": params["subsampling_factor"],
    }


def decoder_metadata(params: dict[str, Any], context_size: int) -> dict[str, Any]:
    return {"vocab_size": params["vocab_size"], "context_size": context_size}


def joiner_metadata(joiner_dim: int) -> dict[str, Any]:
    return {"joiner_dim": joiner_dim}


def add_onnx_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Sets (or replaces) custom metadata entries of an ONNX file."""
    import onnx

    model = onnx.load(str(path))
    existing = {prop.key: prop for prop in model.metadata_props}
    for key, value in metadata.items():
        prop = existing.get(key) or model.metadata_props.add()
        prop.key = key
        prop.value = str(value)
    onnx.save(model, str(path))
