"""Model options shared by train.py, decode.py, streaming_decode.py and export.py.

`add_model_arguments(parser)` is the single definition of the model's
hyper-parameters.  train.py stores their values in every checkpoint
(`params`); later scripts take them from the checkpoint (`apply_checkpoint_model_options`),
so a model can never be rebuilt with options other than those it was trained with.
"""

import argparse
import logging
from typing import Any

from pruned_transducer_stateless4.conformer import Conformer
from pruned_transducer_stateless4.decoder import Decoder
from pruned_transducer_stateless4.joiner import Joiner
from pruned_transducer_stateless4.model import Transducer
from shared.utils import str2bool

# Options that define the network's shape; they must match between a
# checkpoint and the model that loads it.
MODEL_OPTION_NAMES = (
    "num_encoder_layers",
    "encoder_dim",
    "nhead",
    "dim_feedforward",
    "cnn_module_kernel",
    "decoder_dim",
    "joiner_dim",
    "context_size",
    "vocab_size",
    "blank_id",
    "use_ctc",
    "causal_convolution",
    "feature_dim",
    "subsampling_factor",
)

# Settings no option changes (80-dim fbank, 4x subsampling, as icefall's
# get_params); vocab_size and blank_id come from the BPE model or token table.
FIXED_SETTINGS = {"feature_dim": 80, "subsampling_factor": 4, "blank_id": 0, "vocab_size": -1}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model options under icefall's names (stateless5's command-line names
    for the sizes; stateless4 fixes them in get_params) with icefall's
    LibriSpeech defaults: 12 layers of 512, 8 heads, FFN 2048, kernel 31,
    decoder and joiner 512, context 2, non-streaming."""
    group = parser.add_argument_group(
        title="Model options",
        description="Shape of icefall's reworked Conformer transducer (defaults: icefall's).")
    group.add_argument("--num-encoder-layers", type=int, default=12,
                       help="Number of Conformer encoder layers.")
    group.add_argument("--encoder-dim", type=int, default=512,
                       help="Attention dimension of the encoder (d_model).")
    group.add_argument("--nhead", type=int, default=8,
                       help="Number of attention heads.")
    group.add_argument("--dim-feedforward", type=int, default=2048,
                       help="Hidden dimension of the encoder's feed-forward modules.")
    group.add_argument("--cnn-module-kernel", type=int, default=31,
                       help="Kernel size of the encoder's depthwise convolution.")
    group.add_argument("--decoder-dim", type=int, default=512,
                       help="Embedding dimension of the stateless decoder.")
    group.add_argument("--joiner-dim", type=int, default=512,
                       help="Hidden dimension of the joiner.")
    group.add_argument("--context-size", type=int, default=2,
                       help="Tokens of left context of the decoder; 1 means bigram.")
    group.add_argument("--dynamic-chunk-training", type=str2bool, default=False,
                       help="Train a streaming model: draw the attention chunk size per "
                       "batch (needs --causal-convolution true).")
    group.add_argument("--causal-convolution", type=str2bool, default=False,
                       help="Causal depthwise convolution in the encoder (needed for "
                       "streaming).")
    group.add_argument("--short-chunk-size", type=int, default=25,
                       help="Dynamic chunk training: chunks are drawn from 1 .. this many "
                       "frames (after subsampling), or full attention.")
    group.add_argument("--num-left-chunks", type=int, default=4,
                       help="Dynamic chunk training: chunks of left context; -1 = unlimited.")
    group.add_argument("--use-ctc", type=str2bool, default=False,
                       help="NOT icefall's: an auxiliary CTC head on the encoder (see "
                       "--ctc-loss-scale in train.py); adds `ctc_output.*` to the state dict.")
    group.add_argument("--encoder-dropout", type=float, default=0.1,
                       help="Dropout of the encoder (residual branches, feed-forward hidden "
                       "layers, positional encoding); training only.")
    group.add_argument("--layer-dropout", type=float, default=0.075,
                       help="Probability of bypassing an encoder layer in a training batch.")


def get_transducer_model(params: dict[str, Any]) -> Transducer:
    """Builds the model from params (an AttributeDict or dict of options)."""
    causal = params["causal_convolution"]
    encoder = Conformer(
        num_features=params["feature_dim"],
        subsampling_factor=params["subsampling_factor"],
        d_model=params["encoder_dim"],
        nhead=params["nhead"],
        dim_feedforward=params["dim_feedforward"],
        num_encoder_layers=params["num_encoder_layers"],
        cnn_module_kernel=params["cnn_module_kernel"],
        dropout=params.get("encoder_dropout", 0.1),
        layer_dropout=params.get("layer_dropout", 0.075),
        causal=causal,
        dynamic_chunk_training=params.get("dynamic_chunk_training", False),
        short_chunk_size=params.get("short_chunk_size", 25),
        num_left_chunks=params.get("num_left_chunks", 4),
    )
    decoder = Decoder(
        vocab_size=params["vocab_size"],
        decoder_dim=params["decoder_dim"],
        blank_id=params["blank_id"],
        context_size=params["context_size"],
    )
    joiner = Joiner(
        encoder_dim=params["encoder_dim"],
        decoder_dim=params["decoder_dim"],
        joiner_dim=params["joiner_dim"],
        vocab_size=params["vocab_size"],
    )
    return Transducer(
        encoder=encoder, decoder=decoder, joiner=joiner,
        encoder_dim=params["encoder_dim"], decoder_dim=params["decoder_dim"],
        joiner_dim=params["joiner_dim"], vocab_size=params["vocab_size"],
        use_ctc=params.get("use_ctc", False),
    )


def apply_checkpoint_model_options(params: dict[str, Any], checkpoint_params: dict[str, Any],
                                   source: str) -> None:
    """Overwrites params' model options with those stored in a checkpoint,
    logging every option whose command-line value differed."""
    for name in MODEL_OPTION_NAMES:
        if name not in checkpoint_params:
            continue
        stored = checkpoint_params[name]
        if name in params and params[name] != stored:
            logging.warning(f"--{name.replace('_', '-')}={params[name]} differs from {source} "
                            f"({stored}); using {stored}")
        params[name] = stored
