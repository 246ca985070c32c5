"""Shared fixtures: one tiny generated corpus, prepared once per test session
through the real prepare.sh, reused by the training and decoding tests.

Every test that uses one of these fixtures (directly or through another
fixture) is marked `slow`, since the first of them prepares data and trains;
`pytest -m "not slow"` runs the unit and oracle tests alone, in seconds.
"""

import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch

from tests.helpers import (
    BPE,
    CHUNK,
    CONTROL_SENTENCES,
    CPU_TRAIN_ARGS,
    FIXTURE_VOICES,
    HOTWORD_VOICES,
    LEFT,
    RARE_SENTENCES,
    RARE_WORDS,
    TINY_MODEL_ARGS,
    CollectFrames,
    build_model,
    clean_wavs,
    export_in_process,
    read_symbols,
    run_script,
)

# Fixtures that prepare data, generate a corpus or train: whoever uses them
# is a slow test (corpus_dir and synth_dir live in test_synth_corpus.py,
# librispeech_dir in test_prepare_librispeech.py).
SLOW_FIXTURES = {"prepared_dir", "trained_exp_dir", "corpus_dir", "synth_dir", "librispeech_dir"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory) -> Path:
    """A directory with data/ filled by prepare.sh stages 0-5 on a tiny
    generated corpus (vocabulary 100).  Tests chdir into it: manifests hold
    paths relative to it, as in icefall."""
    work_dir = tmp_path_factory.mktemp("recipe")
    result = run_script(
        ["prepare.sh", "--synth-hours", "0.03", "--dev-utts", "12", "--test-utts", "12",
         "--synth-voices", FIXTURE_VOICES, "--vocab-sizes", "100", "--nj", "2"],
        work_dir, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work_dir


@pytest.fixture(scope="session")
def trained_exp_dir(prepared_dir: Path) -> Path:
    """A tiny streaming model trained for 2 epochs, with checkpoints; decoding
    and export tests start from it."""
    exp_dir = prepared_dir / "exp/tiny"
    if not (exp_dir / "epoch-2.pt").exists():
        shutil.rmtree(exp_dir, ignore_errors=True)
        result = run_script(
            ["pruned_transducer_stateless4/train.py", "--exp-dir", str(exp_dir),
             "--bpe-model", "data/lang_bpe_100/bpe.model", "--num-epochs", "2",
             "--max-duration", "8", "--enable-musan", "false", "--save-every-n", "10",
             "--average-period", "2", "--valid-interval", "1000", "--valid-wer-utts", "4",
             "--model-warm-step", "5", "--log-interval", "3", *CPU_TRAIN_ARGS,
             *TINY_MODEL_ARGS],
            prepared_dir, timeout=1800,  # a shared 2-core machine can be 5x slower
        )
        assert result.returncode == 0, result.stderr[-3000:]
    return exp_dir


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (`pytestmark =
    pytest.mark.usefixtures("one_thread")`): the machine's cores are shared,
    and small batches gain nothing from more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def export(exp_dir: Path, cwd: Path, *options: str) -> None:
    result = run_script(["pruned_transducer_stateless4/export.py", "--exp-dir", str(exp_dir),
                         "--epoch", "1", "--avg", "1", "--use-averaged-model", "false",
                         "--bpe-model", BPE, *options], cwd)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def exports(prepared_dir: Path, trained_exp_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """{"trained": dir, "emitting": dir}, each with epoch-1.pt and its
    pretrained.pt, cpu_jit.pt and ONNX export (chunk CHUNK, left context LEFT)
    (test_export.py, test_deployment.py)."""
    from pruned_transducer_stateless4.audio_input import read_audio
    from pruned_transducer_stateless4.jit_streaming import stream_encoder

    checkpoint = torch.load(trained_exp_dir / "epoch-2.pt", map_location="cpu",
                            weights_only=False)
    dirs = {"trained": tmp_path_factory.mktemp("export_trained"),
            "emitting": tmp_path_factory.mktemp("export_emitting")}
    shutil.copy(trained_exp_dir / "epoch-2.pt", dirs["trained"] / "epoch-1.pt")

    # Emitting variant: random joiner output layer; biases set so that a
    # word-start piece wins about half of the non-blank choices (so that
    # transcripts have several words) and blank wins on about half of the
    # frames (with a blank-only context).
    state = checkpoint["model"]
    weight = state["joiner.output_linear.weight"]
    generator = torch.Generator().manual_seed(0)
    state["joiner.output_linear.weight"] = torch.randn(weight.shape, generator=generator)
    state["joiner.output_linear.bias"] = torch.zeros(weight.size(0))
    # ScaledLinear: the effective weight and bias are the raw ones times
    # exp(log-scale); with the scales at 0 the values set here are the ones used.
    for name in ("weight_scale", "bias_scale"):
        state[f"joiner.output_linear.{name}"] = torch.zeros(())
    model = build_model(checkpoint)
    with torch.no_grad():
        context = torch.zeros(1, model.decoder.context_size, dtype=torch.int64)
        decoder_proj = model.joiner.decoder_proj(model.decoder(context, need_pad=False))[:, 0]
        logits = []
        for path in clean_wavs(prepared_dir)[:4]:
            search = CollectFrames()
            stream_encoder(model, read_audio(path)[0], 16, 64, search)
            logits.append(model.joiner(model.joiner.encoder_proj(torch.cat(search.frames)),
                                       decoder_proj, project_input=False))
    logits = torch.cat(logits)  # (frames, vocab_size), zero bias
    symbols = read_symbols(prepared_dir / Path(BPE).parent)
    word_start = torch.tensor([s.startswith("\u2581") for s in symbols])
    word_start[0] = False
    other = ~word_start
    other[0] = False
    bias = state["joiner.output_linear.bias"]
    bias[word_start] = float((logits[:, other].max(dim=-1).values
                              - logits[:, word_start].max(dim=-1).values).median())
    logits = logits + bias
    bias[0] = -float((logits[:, 0] - logits[:, 1:].max(dim=-1).values).median())
    torch.save({"model": state, "params": checkpoint["params"]}, dirs["emitting"] / "epoch-1.pt")

    streaming = ["--decode-chunk-size", str(CHUNK), "--left-context", str(LEFT)]
    # The trained model through the command line, the other in this process.
    export(dirs["trained"], prepared_dir)
    export(dirs["trained"], prepared_dir, "--onnx", "1", *streaming)
    for options in ([], ["--jit", "1", *streaming], ["--onnx", "1", *streaming]):
        export_in_process(dirs["emitting"], prepared_dir, *options)
    return dirs


@pytest.fixture(scope="module")
def rare_word_wavs(tmp_path_factory) -> dict[Path, str]:
    """{wav path: sentence}: every sentence said by every HOTWORD_VOICES
    voice (16 kHz), and hotwords.txt in the same directory listing RARE_WORDS."""
    from tests.helpers import speak

    out_dir = tmp_path_factory.mktemp("rare_words")
    wavs = {}
    for voice in HOTWORD_VOICES:
        for i, sentence in enumerate(RARE_SENTENCES + CONTROL_SENTENCES):
            path = out_dir / f"{voice}-{i}.wav"
            sf.write(str(path), speak(sentence, voice), 16000)
            wavs[path] = sentence
    (out_dir / "hotwords.txt").write_text("".join(f"{word}\n" for word in RARE_WORDS))
    return wavs
