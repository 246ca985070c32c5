"""Loading a trained transducer for decoding, streaming and export.

Every script that runs a model loads it here: the checkpoints that
--epoch/--iter/--avg/--use-averaged-model select in --exp-dir (icefall's
options, shared.checkpoint.add_checkpoint_arguments), or one file such as
export.py's pretrained.pt.  The model options (encoder size, context size,
...) are read from the checkpoint when it stores them; a file without them
(icefall's own pretrained.pt) is built from the command-line options
(shared.checkpoint.load_inference_model).
"""

import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from pruned_transducer_stateless4.model import Transducer
from pruned_transducer_stateless4.model_config import (
    FIXED_SETTINGS,
    MODEL_OPTION_NAMES,
    get_transducer_model,
)
from shared.checkpoint import load_inference_model
from shared.utils import AttributeDict


def inference_params(**values) -> AttributeDict:
    """The recipe's fixed settings, as train.py's get_params has them
    (80-dim fbank, 4x subsampling), updated with `values`; the token table
    gives vocab_size and blank_id."""
    params = AttributeDict(FIXED_SETTINGS)
    params.update(values)
    return params


def load_model(
    params: AttributeDict,
    explicit: Iterable[str] = (),
    device: torch.device | str = "cpu",
    checkpoint: Path | None = None,
) -> Transducer:
    """The model the options select, in eval mode on `device`.

    Args:
      params: the parsed options (the model options, and exp_dir and the
        checkpoint selection unless `checkpoint` is given) with vocab_size
        and blank_id; the fixed settings of inference_params() are added if
        missing.  It gets the model options actually used.
      explicit: the options typed on the command line
        (shared.checkpoint.explicit_options); a checkpoint's stored option
        overrides a typed one with a warning.
      checkpoint: one file to load (pretrained.pt, epoch-N.pt) instead of
        the --epoch/--iter/--avg selection.
    """
    for name, value in inference_params().items():
        params.setdefault(name, value)
    model, description = load_inference_model(params, set(explicit), get_transducer_model,
                                              MODEL_OPTION_NAMES, checkpoint=checkpoint)
    logging.info(f"loaded the {description}")
    return model.to(device).eval()
