"""Test helpers: real audio made with espeak-ng or the corpus generator's
voices, real recipe scripts, the trained demo model of tests/data/demo_model."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
import soundfile as sf
import torch

from pruned_transducer_stateless4.conformer import Conformer
from shared.utils import load_script

PROJECT_DIR = Path(__file__).resolve().parent.parent
# A small model really trained by ./run.sh, the default of commit 259baa9 (4 layers, no CTC
# head; not today's run.sh): tests/data/demo_model/README.md.
DEMO_MODEL_DIR = PROJECT_DIR / "tests/data/demo_model"
DEMO_CHECKPOINT = DEMO_MODEL_DIR / "pretrained-fp16.pt"

# Tiny streaming model options used by every test that trains (seconds per
# epoch on CPU); the scripts' defaults are icefall's non-streaming 12 x 512.
TINY_MODEL_ARGS = [
    "--num-encoder-layers", "2", "--encoder-dim", "64", "--nhead", "2",
    "--dim-feedforward", "128", "--cnn-module-kernel", "7", "--decoder-dim", "64",
    "--joiner-dim", "64", "--causal-convolution", "true", "--dynamic-chunk-training", "true",
]

# The voices of the tiny corpus (speaker ids of local/voices.py): 16 training voices
# (flite's, festival's, eight of espeak-ng's and hibari's own) and both held-out ones.
# Two epochs of 0.03 h teach the tiny model words from these; spread over all 29
# training voices, the same data leaves it emitting one token per utterance, and the
# decoding tests need words.
FIXTURE_VOICES = "101 102 103 104 105 201 202 203 301 302 303 304 305 306 307 308 309 401"

# train.py's defaults are icefall's GPU ones; what the tiny CPU runs need
# instead (as run.sh passes them): data loading in the process, few kept
# checkpoints, SpecAugment masks scaled to ~3 s utterances.
CPU_TRAIN_ARGS = [
    "--num-workers", "0", "--keep-last-k", "5", "--spec-aug-time-warp-factor", "20",
    "--spec-aug-num-frame-masks", "2", "--spec-aug-frames-mask-size", "40",
]


def synthesize(text: str, path: Path, voice: str = "en-us", speed: int = 170) -> None:
    """Speaks `text` with espeak-ng into a 16 kHz mono FLAC/WAV at `path`."""
    raw = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text.lower()],
        check=True, capture_output=True,
    ).stdout
    wav_path = path.with_suffix(".tmp.wav")
    wav_path.write_bytes(raw)
    samples, rate = sf.read(str(wav_path), dtype="float32")
    wav_path.unlink()
    # espeak-ng speaks at 22050 Hz; resample linearly to 16 kHz (good enough for tests).
    target_len = int(len(samples) * 16000 / rate)
    resampled = np.interp(np.linspace(0, len(samples) - 1, target_len),
                          np.arange(len(samples)), samples).astype(np.float32)
    sf.write(str(path), resampled, 16000)


def speak(text: str, voice_name: str) -> np.ndarray:
    """16 kHz float32 samples of `text` said by one of the generated corpus's
    voices (local/voices.py VOICES, e.g. "slt", "rms"), clean:
    no rate, pitch, reverberation or noise change."""
    from local.voices import VOICES, UtteranceStyle, render_utterance

    (voice,) = [v for v in VOICES if v.name == voice_name]
    with tempfile.TemporaryDirectory() as work_dir:
        samples = render_utterance(voice, text, UtteranceStyle(), Path(work_dir),
                                   np.random.default_rng(0))
    return samples.astype(np.float32)


def demo_model_options() -> dict:
    """tests/data/demo_model/model.json: model_args (the model options of
    run.sh, for a checkpoint that stores none), decode_chunk_size, left_context."""
    return json.loads((DEMO_MODEL_DIR / "model.json").read_text())


def demo_model_argv() -> list[str]:
    """The options that load the demo model in pretrained.py (and the other
    scripts): checkpoint, BPE model and model options."""
    return ["--checkpoint", str(DEMO_CHECKPOINT), "--bpe-model",
            str(DEMO_MODEL_DIR / "bpe.model"), *demo_model_options()["model_args"]]


def load_demo_model():
    """The demo model in float32 and eval mode, through the recipe's one
    loader (model_loading.load_model -> shared.checkpoint.load_inference_model,
    model options from the command line as for an icefall pretrained.pt)."""
    import argparse

    from pruned_transducer_stateless4.model_config import add_model_arguments
    from pruned_transducer_stateless4.model_loading import inference_params, load_model
    from shared.checkpoint import explicit_options

    model_args = demo_model_options()["model_args"]
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    vocab_size = len((DEMO_MODEL_DIR / "tokens.txt").read_text().splitlines())
    params = inference_params(**vars(parser.parse_args(model_args)), vocab_size=vocab_size)
    return load_model(params, explicit_options(model_args), checkpoint=DEMO_CHECKPOINT)


def training_params(argv: list[str]):
    """train.py's params for the command line `argv` (its fixed settings,
    training.get_params(), updated with every option of train.py), as
    train.py's run() starts from them."""
    from pruned_transducer_stateless4.training import params_from_command_line

    return params_from_command_line(argv)


def make_librispeech_tree(root: Path, parts: dict[str, list[tuple[str, str, str]]]) -> Path:
    """Writes a LibriSpeech-shaped corpus under root/LibriSpeech.

    parts maps a part name to (speaker, chapter, sentence) triples; utterance
    numbers count up per (speaker, chapter).
    """
    corpus = root / "LibriSpeech"
    for part, utterances in parts.items():
        counters: dict[tuple[str, str], int] = {}
        for speaker, chapter, sentence in utterances:
            chapter_dir = corpus / part / speaker / chapter
            chapter_dir.mkdir(parents=True, exist_ok=True)
            index = counters.get((speaker, chapter), 0)
            counters[(speaker, chapter)] = index + 1
            utt_id = f"{speaker}-{chapter}-{index:04d}"
            synthesize(sentence, chapter_dir / f"{utt_id}.flac")
            with open(chapter_dir / f"{speaker}-{chapter}.trans.txt", "a") as trans:
                trans.write(f"{utt_id} {sentence.upper()}\n")
    return corpus


def import_script(script: Path) -> ModuleType:
    """Imports a script from its file (in-process, nothing is run: its
    command-line block stays out), e.g. to call its get_parser()."""
    return load_script(script)


def run_script(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs a recipe script (path relative to the project) with the venv's python."""
    script = PROJECT_DIR / args[0]
    command = [sys.executable, str(script), *args[1:]] if script.suffix == ".py" \
        else [str(script), *args[1:]]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


def small_manifest_dir(prepared_dir: Path, out_dir: Path, num_train_cuts: int) -> Path:
    """A --manifest-dir with the prepared cut sets, the training part cut to its
    first `num_train_cuts` cuts (features stay where they are: the cut sets
    refer to them by paths relative to prepared_dir), for tests that train a
    whole epoch but need only a few batches."""
    from lhotse import load_manifest

    out_dir.mkdir(parents=True, exist_ok=True)
    fbank = prepared_dir / "data/fbank"
    for path in fbank.glob("librispeech_cuts_*.jsonl.gz"):
        cuts = load_manifest(path)
        if "train" in path.name:
            cuts = cuts.subset(first=num_train_cuts)
        cuts.to_file(out_dir / path.name)
    return out_dir


def two_frame_lattice_fields() -> dict:
    """The fields of a small Lattice: start -(5)-> s1 -(6)-> s2, with a blank
    alternative on each of its 2 frames (tests/test_device.py, test_gpu.py)."""
    import torch

    i64 = torch.int64
    return dict(
        num_frames=2,
        state_offsets=torch.tensor([0, 1, 3, 5], dtype=i64),
        state_graph=torch.zeros(5, dtype=i64),
        state_score=torch.tensor([0.0, -1.0, -2.0, -2.0, -3.0]),
        state_best_arc=torch.tensor([-1, 0, 1, 2, 3], dtype=i64),
        arc_offsets=torch.tensor([0, 2, 4], dtype=i64),
        arc_src=torch.tensor([0, 0, 1, 2], dtype=i64),
        arc_dst=torch.tensor([1, 2, 3, 4], dtype=i64),
        arc_label=torch.tensor([5, 0, 6, 0], dtype=i64),
        arc_word=torch.zeros(4, dtype=i64),
        arc_score=torch.tensor([-1.0, -2.0, -1.0, -1.0]),
        final_score=torch.tensor([float("-inf")] * 3 + [0.0, 0.0]),
    )


# ------------------------------------------- exports (test_export, test_deployment) ----
# The exports fixture (conftest.py) exports the session's tiny model with these.
CHUNK = 4  # decode chunk size of the ONNX export, frames after subsampling
LEFT = 8  # left context of the ONNX export
BPE = "data/lang_bpe_100/bpe.model"
EXPORT_SUFFIX = "epoch-1-avg-1"  # export.py --epoch 1 --avg 1


def clean_wavs(prepared_dir: Path) -> list[Path]:
    """The test-clean audio files of the session's generated corpus (at least 4)."""
    paths = sorted((prepared_dir / "download/LibriSpeech/test-clean").glob("*/*/*.flac"))
    assert len(paths) >= 4, paths
    return paths


def build_model(checkpoint: dict) -> torch.nn.Module:
    """The Transducer of a training checkpoint (its model options), in eval mode."""
    from pruned_transducer_stateless4.model_config import (
        apply_checkpoint_model_options,
        get_transducer_model,
    )
    from pruned_transducer_stateless4.model_loading import inference_params

    params = inference_params()
    params.vocab_size = checkpoint["params"]["vocab_size"]
    apply_checkpoint_model_options(params, checkpoint["params"], "test")
    model = get_transducer_model(params)
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def export_in_process(exp_dir: Path, cwd: Path, *options: str) -> list[Path]:
    """export.py --epoch 1 --avg 1 of exp_dir in this process; the files written."""
    return import_script(PROJECT_DIR / "pruned_transducer_stateless4/export.py").main(
        ["--exp-dir", str(exp_dir), "--epoch", "1", "--avg", "1", "--use-averaged-model",
         "false", "--bpe-model", str(cwd / BPE), *options])


class CollectFrames:
    """A 'search' for stream_encoder that keeps the encoder frames."""

    def __init__(self) -> None:
        self.frames: list[torch.Tensor] = []

    def advance(self, encoder_out: torch.Tensor) -> None:
        self.frames.append(encoder_out)


def read_symbols(exp_dir: Path) -> list[str]:
    """The token of each id in exp_dir/tokens.txt."""
    return [line.split()[0] for line in (exp_dir / "tokens.txt").read_text().splitlines()]


# ---------------------------- hotwords (test_context_graph, test_deployment) ----
# sentences of the generated corpus's voices, each with names or words it
# never saw in training (none is in the run's transcripts) and gets wrong
# without biasing.  The context file lists RARE_WORDS; CONTROL_SENTENCES hold
# none of them.
RARE_WORDS = ["gandalf", "zanzibar", "kilimanjaro", "pinocchio", "hemingway", "madagascar",
              "timbuktu", "amsterdam", "eleanor", "robert", "neptune"]
RARE_SENTENCES = [
    "we sailed to zanzibar last summer",
    "my friend gandalf lives in amsterdam",
    "they climbed kilimanjaro in the winter",
    "the story of pinocchio is very old",
    "she read a book by hemingway",
    "he flew from madagascar to timbuktu",
    "eleanor and robert went to the market",
    "neptune is far from the sun",
]
CONTROL_SENTENCES = [
    "the weather was cold and the children stayed at home",
    "he opened the door and walked into the garden",
    "she wrote a long letter to her mother",
]
HOTWORD_VOICES = ["slt", "rms"]  # flite voices of the training data
HOTWORD_SCORE = 2.0  # icefall's default --context-score


def check_hotword_effect(wavs: dict[Path, str], plain: dict[Path, str],
                         biased: dict[Path, str], min_gain: int) -> None:
    """Asserts that the transcripts with the context file (biased) hold at
    least min_gain more occurrences of the listed words than those without
    (plain), which hold few, and that the control sentences' WER is no
    higher with it (the model recognises them: WER < 35% without)."""
    from shared.metrics import word_error_rate

    def recognised(texts: dict[Path, str]) -> int:
        """Occurrences of listed words in the sentences that the transcripts hold."""
        return sum(min(wavs[p].split().count(w), texts[p].lower().split().count(w))
                   for p in wavs for w in RARE_WORDS)

    occurrences = sum(wavs[p].split().count(w) for p in wavs for w in RARE_WORDS)
    controls = [p for p in wavs if wavs[p] in CONTROL_SENTENCES]
    refs = [wavs[p] for p in controls]
    plain_wer = word_error_rate(refs, [plain[p].lower() for p in controls])
    biased_wer = word_error_rate(refs, [biased[p].lower() for p in controls])
    for path in wavs:
        print(f"{path.stem}: {wavs[path]!r}\n    plain:  {plain[path].lower()!r}\n"
              f"    biased: {biased[path].lower()!r}")
    print(f"listed words recognised: {recognised(plain)}/{occurrences} without the context "
          f"file, {recognised(biased)}/{occurrences} with it; control WER "
          f"{100 * plain_wer:.1f}% -> {100 * biased_wer:.1f}%")
    # The model does recognise speech (a broken checkpoint fails here) ...
    assert plain_wer < 0.35
    # ... misses most listed words without help, and gets more with it.
    assert recognised(plain) <= occurrences // 4
    assert recognised(biased) >= recognised(plain) + min_gain
    assert biased_wer <= plain_wer


# ------------------------------------------------------------ tiny models ----
class TinyDecoder(torch.nn.Module):
    """The decoder interface align_tokens uses (stateless, context 2)."""

    blank_id = 0
    context_size = 2

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(20, 16)

    def forward(self, y: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        return torch.relu(self.embedding(y).sum(dim=1, keepdim=True))  # (N, 1, 16)


class TinyJoiner(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder_proj = torch.nn.Linear(16, 16)
        self.decoder_proj = torch.nn.Linear(16, 16)
        self.output_linear = torch.nn.Linear(16, 20)

    def forward(self, encoder_out, decoder_out, project_input: bool = True):
        if project_input:
            encoder_out, decoder_out = self.encoder_proj(encoder_out), self.decoder_proj(
                decoder_out)
        return self.output_linear(torch.tanh(encoder_out + decoder_out))


# -------------------------------------------------------- real streaming ----
def real_streaming(encoder: Conformer, x: torch.Tensor, x_lens: torch.Tensor,
                   chunk_size: int, left_context: int) -> torch.Tensor:
    """Chunk-by-chunk encoding with icefall's window protocol: windows of
    chunk_size * 4 + pad_length frames, advancing by chunk_size * 4, each
    stream batched with its own states and processed_lens.

    The whole-utterance subsampling's frame m sees feature frames
    4m - 1 .. 4m + 7, frame -1 and frame T being its zero padding, while a
    window's first kept frame is whole-utterance frame (start / 4) + 1.  So
    each stream gets 4 zero frames in front and 4 behind, counted as real:
    then window k outputs exactly frames 16k .. 16k + 15 of the simulated
    streaming, with the same number of valid frames.
    """
    factor = encoder.subsampling_factor
    window = chunk_size * factor + encoder.pad_length
    padded = torch.nn.functional.pad(x, (0, 0, factor, factor + window))
    padded_lens = x_lens + 2 * factor
    batch_size = x.size(0)
    states = Conformer.stack_states(
        [encoder.get_init_state(left_context, x.device) for _ in range(batch_size)])
    processed = torch.zeros(batch_size, dtype=torch.int64)
    outputs = []
    for start in range(0, int(padded_lens.max()), chunk_size * factor):
        chunk = padded[:, start: start + window]
        chunk_lens = torch.clamp(padded_lens - start, min=0, max=window)
        out, out_lens, states = encoder.streaming_forward(
            chunk, chunk_lens, states, processed, left_context=left_context,
            chunk_size=chunk_size)
        assert out.size(1) == chunk_size
        assert states[0].shape == (encoder.encoder_layers, left_context, batch_size,
                                   encoder.d_model)
        outputs.append(out)
        processed = processed + out_lens
    expected_lens = ((x_lens - 1) // 2 - 1) // 2
    assert processed.tolist() == expected_lens.tolist()
    return torch.cat(outputs, dim=1)
