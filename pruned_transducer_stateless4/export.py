#!/usr/bin/env python3
"""Export a trained model for inference outside the training code.

Usage (from the directory that holds exp/ and data/):

  # pretrained.pt: {"model": state_dict, "params": model options}
  ./pruned_transducer_stateless4/export.py --exp-dir exp/pruned_transducer_stateless4 \\
      --epoch 30 --avg 9 --bpe-model data/lang_bpe_500/bpe.model

  # cpu_jit.pt: TorchScript (torch.jit.script), loadable with torch.jit.load alone
  ./pruned_transducer_stateless4/export.py ... --jit 1

  # ONNX for sherpa-onnx's online (streaming) Conformer transducer:
  # encoder/decoder/joiner-epoch-30-avg-9{,.int8}.onnx, tokens.txt and bpe.vocab
  ./pruned_transducer_stateless4/export.py ... --onnx 1 --decode-chunk-size 16 --left-context 64

The weights are chosen as in decode.py: --epoch E --avg A averages epoch-(E-A+1)
.. epoch-E.pt; --iter B uses the checkpoint-*.pt files up to batch B instead;
--use-averaged-model uses the running averages stored in the checkpoints
(the average of all models trained between epoch E-A and epoch E).  The model
options are read from the checkpoint; for a file without them (icefall's own
pretrained.pt linked as epoch-999.pt) they come from the command line
(docs/icefall-model.md).

pretrained.pt can be decoded by decode.py through a link
(`ln -s pretrained.pt EXP_DIR/epoch-999.pt`, then `--epoch 999 --avg 1`) and by
pretrained.py.

cpu_jit.pt holds a scripted module with `encoder` (forward,
streaming_forward, get_init_state), `decoder` and `joiner` submodules, and
int attributes decode_chunk_size, left_context, pad_length,
subsampling_factor, context_size, blank_id, vocab_size; jit_pretrained.py
shows how to run it.

The ONNX files follow sherpa-onnx's online Conformer transducer contract
(sherpa-onnx/csrc/online-conformer-transducer-model.cc):

* encoder: inputs x (N, T, 80) with T = 4 * decode_chunk_size + pad_length
  feature frames (pad_length = 11, the encoder's chunk protocol, see
  conformer.py), cached_attn (num_encoder_layers, left_context, N, encoder_dim),
  cached_conv (num_encoder_layers, cnn_module_kernel - 1, N, encoder_dim),
  processed_lens (N,) int64 = feature frames consumed so far (sherpa advances
  it by 4 * decode_chunk_size per call); outputs encoder_out
  (N, decode_chunk_size, joiner_dim) already passed through the joiner's
  encoder_proj, new_cached_attn, new_cached_conv.  Metadata: model_type
  "conformer", T, decode_chunk_len, pad_length, left_context,
  num_encoder_layers, encoder_dim, cnn_module_kernel.
* decoder: y (N, context_size) int64 -> decoder_out (N, joiner_dim), the
  decoder_proj included.  Metadata: vocab_size, context_size.
* joiner: encoder_out (N, joiner_dim), decoder_out (N, joiner_dim) -> logit
  (N, vocab_size) = output_linear(tanh(encoder_out + decoder_out)).

sherpa-onnx's default front end (kaldi-native-fbank: 16 kHz, 80 bins,
low_freq 20, high_freq -400, dither 0, snip_edges False, samples in [-1, 1])
computes the training features (shared/features.py) to within 3e-4.
"""

import argparse
import copy
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from pruned_transducer_stateless4.conformer import Conformer
from pruned_transducer_stateless4.model import Transducer
from pruned_transducer_stateless4.model_config import MODEL_OPTION_NAMES, add_model_arguments
from pruned_transducer_stateless4.model_loading import inference_params, load_model
from pruned_transducer_stateless4.onnx_contract import (
    add_onnx_metadata,
    decoder_metadata,
    encoder_metadata,
    export_suffix,
    joiner_metadata,
)
from pruned_transducer_stateless4.scaling import fold_scales
from pruned_transducer_stateless4.token_table import read_token_table
from shared.checkpoint import add_checkpoint_arguments, explicit_options
from shared.utils import (
    AttributeDict,
    HelpFormatter,
    RecipeError,
    add_device_argument,
    atomic_torch_save,
    get_device,
    run_main,
    setup_logging,
    str2bool,
)

ONNX_OPSET = 13


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--exp-dir", type=Path, default=Path("exp/pruned_transducer_stateless4"),
                        help="Where the checkpoints are; the exported files are written here.")
    parser.add_argument("--bpe-model", type=Path, default=Path("data/lang_bpe_500/bpe.model"),
                        help="Sentencepiece model of the training run (gives the vocabulary "
                        "and tokens.txt).")
    parser.add_argument("--tokens", type=Path, default=None,
                        help="tokens.txt ('symbol id' per line) instead of --bpe-model.")
    parser.add_argument("--streaming-model", type=str2bool, default=True,
                        help="The model is a streaming one (causal convolution, trained with "
                        "dynamic chunks); required for --onnx.")
    parser.add_argument("--decode-chunk-size", type=int, default=16,
                        help="Chunk size in frames after subsampling (x4 feature frames) of "
                        "the ONNX encoder and the default of cpu_jit.pt.")
    parser.add_argument("--left-context", type=int, default=64,
                        help="Cached frames (after subsampling) of attention left context of "
                        "the ONNX encoder and the default of cpu_jit.pt.")
    parser.add_argument("--jit", type=str2bool, default=False,
                        help="Write cpu_jit.pt (torch.jit.script) instead of pretrained.pt.")
    parser.add_argument("--onnx", type=str2bool, default=False,
                        help="Write the ONNX files for sherpa-onnx (and int8 versions) and "
                        "tokens.txt instead of pretrained.pt.")
    add_device_argument(parser)
    add_checkpoint_arguments(parser)
    add_model_arguments(parser)
    return parser


def get_params() -> AttributeDict:
    """Fixed settings of the recipe (as in train.py)."""
    return inference_params()


# ---------------------------------------------------------- the model ----
def load_model_and_params(
    args: argparse.Namespace, explicit: set[str] | frozenset[str] = frozenset()
) -> tuple[Transducer, AttributeDict]:
    """The model the --epoch/--iter/--avg/--use-averaged-model options select
    (model_loading.load_model), with the vocabulary of --tokens or --bpe-model.

    Returns:
      (model in eval mode on the CPU, params with the model options).
    """
    params = get_params()
    params.update(vars(args))
    symbols = read_token_table(args.tokens, args.bpe_model)
    if "<blk>" not in symbols:
        raise RecipeError("the vocabulary has no '<blk>' symbol (the blank)")
    params.blank_id = symbols.index("<blk>")
    params.vocab_size = len(symbols)
    model = load_model(params, explicit)
    if params.streaming_model and not params.causal_convolution:
        raise RecipeError("the model has non-causal convolution: not a streaming model "
                          "(pass --streaming-model false, or --causal-convolution true for "
                          "an icefall pretrained.pt of a streaming model)")
    return model, params


def model_options(params: dict[str, Any]) -> dict[str, Any]:
    """What pretrained.pt stores next to the weights: every option needed to
    rebuild the model, and the streaming settings of the export."""
    options = {name: params[name] for name in MODEL_OPTION_NAMES if name in params}
    for name in ("streaming_model", "decode_chunk_size", "left_context"):
        options[name] = params[name]
    return options


def export_pretrained(model: Transducer, params: AttributeDict, path: Path) -> None:
    """pretrained.pt with CPU tensors, loadable on any machine whatever the
    device the model was averaged on."""
    state = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    atomic_torch_save({"model": state, "params": model_options(params)}, path)


# --------------------------------------------------------- TorchScript ----
class JitTransducer(nn.Module):
    """What cpu_jit.pt holds: the three networks plus the settings a client
    needs, all in TorchScript."""

    def __init__(self, model: Transducer, decode_chunk_size: int, left_context: int) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.decoder = model.decoder
        self.joiner = model.joiner
        self.decode_chunk_size = decode_chunk_size
        self.left_context = left_context
        self.pad_length = model.encoder.pad_length
        self.subsampling_factor = model.encoder.subsampling_factor
        self.context_size = model.decoder.context_size
        self.blank_id = model.decoder.blank_id
        self.vocab_size = model.decoder.vocab_size

    def forward(
        self, x: Tensor, x_lens: Tensor, chunk_size: int = -1, left_context: int = -1
    ) -> tuple[Tensor, Tensor]:
        """Encoder on whole utterances: full attention for chunk_size <= 0,
        else simulated streaming (see conformer.encode)."""
        if chunk_size <= 0:
            return self.encoder(x, x_lens)
        out, out_lens, _ = self.encoder.streaming_forward(
            x, x_lens, None, None, left_context, 0, chunk_size, True)
        return out, out_lens


def script_model(model: Transducer, decode_chunk_size: int, left_context: int):
    """The scripted JitTransducer of an eval-mode model."""
    wrapper = JitTransducer(model, decode_chunk_size, left_context)
    wrapper.eval()
    return torch.jit.script(wrapper)


# ---------------------------------------------------------------- ONNX ----
class OnnxEncoder(nn.Module):
    """One streaming step in sherpa-onnx's online Conformer layout."""

    def __init__(self, encoder: Conformer, encoder_proj: nn.Linear, left_context: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder_proj = encoder_proj
        self.left_context = left_context

    def forward(
        self, x: Tensor, cached_attn: Tensor, cached_conv: Tensor, processed_lens: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """
        Args:
          x: (N, 4 * chunk + pad_length, num_features).
          cached_attn, cached_conv: states of Conformer.get_init_state layout.
          processed_lens: (N,) int64 FEATURE frames consumed so far (sherpa's
            count); streaming_forward wants frames after subsampling.
        Returns:
          encoder_out (N, chunk, joiner_dim) after encoder_proj, and the new
          states.
        """
        x_lens = torch.zeros_like(processed_lens) + x.size(1)
        processed_frames = torch.div(
            processed_lens, self.encoder.subsampling_factor, rounding_mode="floor"
        )
        encoder_out, _, states = self.encoder.streaming_forward(
            x, x_lens, [cached_attn, cached_conv], processed_frames,
            left_context=self.left_context, right_context=0)
        return self.encoder_proj(encoder_out), states[0], states[1]


class OnnxDecoder(nn.Module):
    """(N, context_size) token ids -> (N, joiner_dim) projected decoder output.

    sherpa-onnx starts a stream with the context [-1, ..., -1, blank]: ids < 0
    stand for "no token" (a zero embedding in icefall's decoders).  They are
    mapped to blank here, whose embedding is the all-zero padding row, so
    sherpa's start context gives exactly our [blank, ..., blank].
    """

    def __init__(self, model: Transducer) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.decoder_proj = model.joiner.decoder_proj
        self.blank_id = model.decoder.blank_id

    def forward(self, y: Tensor) -> Tensor:
        y = torch.where(y < 0, torch.full_like(y, self.blank_id), y)
        return self.decoder_proj(self.decoder(y, need_pad=False)).squeeze(1)


class OnnxJoiner(nn.Module):
    """Projected encoder and decoder frames (N, joiner_dim) -> logits (N, vocab)."""

    def __init__(self, model: Transducer) -> None:
        super().__init__()
        self.output_linear = model.joiner.output_linear

    def forward(self, encoder_out: Tensor, decoder_out: Tensor) -> Tensor:
        return self.output_linear(torch.tanh(encoder_out + decoder_out))


def export_encoder_onnx(model: Transducer, params: dict[str, Any], path: Path) -> None:
    encoder = model.encoder
    metadata = encoder_metadata(params, encoder)
    wrapper = OnnxEncoder(encoder, model.joiner.encoder_proj, params["left_context"]).eval()
    batch_size = 2
    device = next(model.parameters()).device  # the example inputs follow the model
    x = torch.zeros(batch_size, int(metadata["T"]), encoder.num_features, device=device)
    cached_attn, cached_conv = Conformer.stack_states(
        [encoder.get_init_state(params["left_context"], device=device)] * batch_size)
    processed_lens = torch.zeros(batch_size, dtype=torch.int64, device=device)
    torch.onnx.export(
        wrapper, (x, cached_attn, cached_conv, processed_lens), str(path),
        input_names=["x", "cached_attn", "cached_conv", "processed_lens"],
        output_names=["encoder_out", "new_cached_attn", "new_cached_conv"],
        dynamic_axes={"x": {0: "N"}, "cached_attn": {2: "N"}, "cached_conv": {2: "N"},
                      "processed_lens": {0: "N"}, "encoder_out": {0: "N"},
                      "new_cached_attn": {2: "N"}, "new_cached_conv": {2: "N"}},
        opset_version=ONNX_OPSET, dynamo=False,
    )
    add_onnx_metadata(path, metadata)


def export_decoder_onnx(model: Transducer, params: dict[str, Any], path: Path) -> None:
    blank_row = model.decoder.embedding.weight[model.decoder.blank_id]
    if bool(blank_row.abs().max() > 0):
        raise RecipeError("the decoder's blank embedding is not zero; sherpa-onnx's start "
                          "context [-1, blank] would not equal [blank, blank]")
    wrapper = OnnxDecoder(model).eval()
    y = torch.zeros(2, model.decoder.context_size, dtype=torch.int64,
                    device=blank_row.device)
    torch.onnx.export(
        wrapper, (y,), str(path), input_names=["y"], output_names=["decoder_out"],
        dynamic_axes={"y": {0: "N"}, "decoder_out": {0: "N"}},
        opset_version=ONNX_OPSET, dynamo=False,
    )
    add_onnx_metadata(path, decoder_metadata(params, model.decoder.context_size))


def export_joiner_onnx(model: Transducer, params: dict[str, Any], path: Path) -> None:
    wrapper = OnnxJoiner(model).eval()
    joiner_dim = model.joiner.output_linear.in_features
    device = model.joiner.output_linear.weight.device
    encoder_out = torch.zeros(2, joiner_dim, device=device)
    decoder_out = torch.zeros(2, joiner_dim, device=device)
    torch.onnx.export(
        wrapper, (encoder_out, decoder_out), str(path),
        input_names=["encoder_out", "decoder_out"], output_names=["logit"],
        dynamic_axes={"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}},
        opset_version=ONNX_OPSET, dynamo=False,
    )
    add_onnx_metadata(path, joiner_metadata(joiner_dim))


def quantize_int8(path: Path) -> Path:
    """Dynamic int8 quantisation of the MatMul weights (onnxruntime), one scale
    and zero point per output channel, weights as UNSIGNED 8-bit (QUInt8).

    Why unsigned: the activations are quantised to uint8 at run time.  With
    signed weights onnxruntime's x86 kernels multiply u8 x s8 with VPMADDUBSW
    on CPUs without AVX-512 VNNI (e.g. AVX2-only AMD EPYC), which adds two
    products into a SATURATING int16: 255 * (127 + 127) overflows it, and the
    int8 model then computes different logits on those CPUs than on VNNI ones
    (onnxruntime's quantisation FAQ names exactly this case).  u8 x u8 runs in
    16-bit multiplies with 32-bit sums on every x86 kernel, so it cannot
    saturate and every CPU computes the same integers.  reduce_range (7-bit
    signed weights) would also avoid the overflow but halves the weight
    resolution; per-channel scales keep the error low (on the default run's
    model per-tensor scales moved the test-other WER by 0.87 from the float
    model's, per-channel ones by 0.46).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8_path = path.with_suffix(".int8.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime logs advice per tensor
    try:
        quantize_dynamic(model_input=str(path), model_output=str(int8_path),
                         op_types_to_quantize=["MatMul"], weight_type=QuantType.QUInt8,
                         per_channel=True, reduce_range=False)
    finally:
        root.setLevel(level)
    # Make sure the metadata sherpa-onnx reads survives.
    metadata = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    add_onnx_metadata(int8_path, metadata)
    return int8_path


def export_onnx(model: Transducer, params: AttributeDict, symbols: list[str], out_dir: Path,
                suffix: str, bpe_vocab: Path | None = None) -> list[Path]:
    """Writes encoder/decoder/joiner-SUFFIX{,.int8}.onnx, tokens.txt and a copy
    of bpe_vocab (if given) as bpe.vocab."""
    if not params.causal_convolution:
        raise RecipeError("--onnx exports sherpa-onnx's streaming Conformer, which needs a "
                          "model with causal convolution")
    # Plain weights in the graphs, so that int8 quantises every MatMul.
    model = fold_scales(copy.deepcopy(model))
    written = []
    for name, export in (("encoder", export_encoder_onnx), ("decoder", export_decoder_onnx),
                         ("joiner", export_joiner_onnx)):
        path = out_dir / f"{name}-{suffix}.onnx"
        with warnings.catch_warnings():
            # The tracer's notes on Python asserts and the legacy exporter's
            # deprecation notice; the tests check the exported graphs.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            export(model, params, path)
        written += [path, quantize_int8(path)]
    tokens_path = out_dir / "tokens.txt"
    tokens_path.write_text("".join(f"{symbol} {i}\n" for i, symbol in enumerate(symbols)))
    written.append(tokens_path)
    if bpe_vocab is not None:
        written.append(copy_bpe_vocab(bpe_vocab, out_dir))
    return written


def find_bpe_vocab(args: argparse.Namespace) -> Path | None:
    """bpe.vocab of the vocabulary (sherpa-onnx's hotwords with modeling_unit
    "bpe" need it next to tokens.txt): beside --bpe-model, else beside --tokens."""
    candidates = [args.bpe_model.with_suffix(".vocab")]
    if args.tokens is not None:
        candidates.insert(0, args.tokens.with_name("bpe.vocab"))
    for path in candidates:
        if path.is_file():
            return path
    logging.warning(f"no bpe.vocab next to {args.tokens or args.bpe_model} (rerun prepare.sh "
                    "stage 4 to write it); sherpa-onnx hotwords need it next to tokens.txt")
    return None


def copy_bpe_vocab(source: Path, out_dir: Path) -> Path:
    target = out_dir / "bpe.vocab"
    tmp_path = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.copyfile(source, tmp_path)
    os.replace(tmp_path, target)
    return target


# ---------------------------------------------------------------- main ----
def run(args: argparse.Namespace) -> list[Path]:
    """Exports what the options ask for; returns the files written."""
    if args.decode_chunk_size < 1 or args.left_context < 0:
        raise RecipeError("--decode-chunk-size must be >= 1 and --left-context >= 0")
    if args.onnx and not args.streaming_model:
        raise RecipeError("--onnx is for streaming models (sherpa-onnx's online Conformer "
                          "transducer); drop --streaming-model false")
    model, params = load_model_and_params(args, getattr(args, "explicit_options", frozenset()))
    device = get_device(requested=args.device)
    model.to(device)
    logging.info(f"exporting on {device}")
    num_params = sum(p.numel() for p in model.parameters())
    logging.info(f"{num_params / 1e6:.2f} M parameters; options: {model_options(params)}")

    if args.onnx:
        written = export_onnx(model, params, read_token_table(args.tokens, args.bpe_model),
                              args.exp_dir, export_suffix(args.epoch, args.iter, args.avg),
                              find_bpe_vocab(args))
    elif args.jit:
        path = args.exp_dir / "cpu_jit.pt"
        # Its name promises CPU tensors: script the model once it is there.
        scripted = script_model(model.cpu(), args.decode_chunk_size, args.left_context)
        tmp_path = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        scripted.save(str(tmp_path))
        os.replace(tmp_path, path)
        written = [path]
    else:
        path = args.exp_dir / "pretrained.pt"
        export_pretrained(model, params, path)
        written = [path]
    for path in written:
        logging.info(f"wrote {path}")
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    """Exports what the options ask for; returns the files written."""
    args = get_parser().parse_args(argv)
    args.explicit_options = explicit_options(sys.argv[1:] if argv is None else argv)
    setup_logging()
    return run(args)


if __name__ == "__main__":
    run_main(main)
