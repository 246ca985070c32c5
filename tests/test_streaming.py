"""Real streaming decoding (decode_stream.py, streaming_beam_search.py,
streaming_decode.py, streaming_demo.py) on the tiny generated corpus.

The tiny model of `trained_exp_dir` (2 epochs on 2 minutes of audio) still
emits blanks only, which would make every comparison of hypotheses trivially
true.  The tests therefore decode with a copy of it whose blank logit is
lowered (`active_exp_dir`) until it emits a token every few frames: the
hypotheses are nonsense, but long, and depend on every encoder frame, which is
what a comparison of two decoders needs.
"""

import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lhotse import CutSet, load_manifest

from pruned_transducer_stateless4.audio_input import load_cut_audio
from pruned_transducer_stateless4.beam_search import (
    fast_beam_search_one_best,
    greedy_search_batch,
    modified_beam_search,
)
from pruned_transducer_stateless4.conformer import Conformer, encode
from pruned_transducer_stateless4.decode_stream import (
    PAD_LENGTH,
    OnlineFeatures,
    flush_padding_seconds,
    stable_chunk_of_tokens,
    stack_streams,
    unstack_streams,
)
from pruned_transducer_stateless4.model_loading import load_model
from pruned_transducer_stateless4.result_files import streaming_result_suffix
from pruned_transducer_stateless4.streaming_engine import (
    StreamingSetup,
    decode_dataset,
    decode_one_chunk,
    make_search_config,
)
from shared.features import LOG_EPS, make_fbank_extractor
from shared.fsa_search import trivial_graph
from shared.utils import AttributeDict
from tests.helpers import import_script, run_script

pytestmark = pytest.mark.usefixtures("one_thread")

PROJECT_DIR = Path(__file__).resolve().parent.parent
STREAMING_DECODE = PROJECT_DIR / "pruned_transducer_stateless4/streaming_decode.py"
STREAMING_DEMO = PROJECT_DIR / "pruned_transducer_stateless4/streaming_demo.py"
BPE = "data/lang_bpe_100/bpe.model"
CHUNK, LEFT = 16, 64


class _Cwd:
    """chdir for a block (module-scoped fixtures cannot use monkeypatch)."""

    def __init__(self, path: Path) -> None:
        self.path, self.old = path, None

    def __enter__(self) -> None:
        self.old = os.getcwd()
        os.chdir(self.path)

    def __exit__(self, *exc) -> None:
        os.chdir(self.old)


@pytest.fixture(autouse=True)
def _in_prepared_dir(prepared_dir: Path, monkeypatch) -> None:
    monkeypatch.chdir(prepared_dir)


@pytest.fixture(scope="module")
def test_cuts(prepared_dir: Path) -> CutSet:
    parts = [load_manifest(prepared_dir / f"data/fbank/librispeech_cuts_{part}.jsonl.gz")
             for part in ("test-clean", "test-other")]
    return parts[0] + parts[1]


@pytest.fixture(scope="module")
def audio(prepared_dir: Path, test_cuts: CutSet) -> dict[str, np.ndarray]:
    with _Cwd(prepared_dir):
        return {cut.id: load_cut_audio(cut) for cut in test_cuts}


def _params(exp_dir: Path, *extra: str) -> AttributeDict:
    args = import_script(STREAMING_DECODE).get_parser().parse_args(
        ["--exp-dir", str(exp_dir), "--epoch", "2", "--avg", "1", "--use-averaged-model",
         "false", "--bpe-model", BPE, *extra])
    params = AttributeDict(vars(args))
    params.vocab_size, params.blank_id = 100, 0
    return params


@pytest.fixture(scope="module")
def active_exp_dir(prepared_dir: Path, trained_exp_dir: Path, tmp_path_factory,
                   test_cuts: CutSet, audio: dict[str, np.ndarray]) -> Path:
    """epoch-2.pt of the tiny model with the blank logit lowered so that greedy
    search emits a token on at least every 4th frame of every test cut."""
    exp_dir = tmp_path_factory.mktemp("active_exp")
    checkpoint = torch.load(trained_exp_dir / "epoch-2.pt", weights_only=False)
    bias_name = "joiner.output_linear.bias"
    bias = checkpoint["model"][bias_name].clone()
    with _Cwd(prepared_dir):
        model = load_model(_params(trained_exp_dir))
    extractor = make_fbank_extractor()
    all_features = [torch.from_numpy(extractor.extract(audio[cut.id], 16000))
                    for cut in test_cuts]

    def emits_enough() -> bool:
        for features in all_features:
            with torch.no_grad():
                encoder_out, lens = encode(
                    model.encoder, features[None], torch.tensor([features.size(0)]),
                    chunk_size=CHUNK, left_context=LEFT)
            if len(greedy_search_batch(model, encoder_out, lens)[0]) < int(lens[0]) // 4:
                return False
        return True

    for shift in (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0):
        with torch.no_grad():
            model.joiner.output_linear.bias.copy_(bias)
            model.joiner.output_linear.bias[0] -= shift
        if emits_enough():
            break
    checkpoint["model"][bias_name] = model.joiner.output_linear.bias.detach().clone()
    torch.save(checkpoint, exp_dir / "epoch-2.pt")
    return exp_dir


@pytest.fixture(scope="module")
def active_model(prepared_dir: Path, active_exp_dir: Path):
    with _Cwd(prepared_dir):
        return load_model(_params(active_exp_dir))


def _setup(model, method: str = "greedy_search", chunk: int = CHUNK) -> StreamingSetup:
    params = _params(Path("."), "--decoding-method", method)
    return StreamingSetup(model, chunk, LEFT, make_search_config(params))


_WINDOWED_CACHE: dict[tuple[int, int, int, str], list[int]] = {}


def _windowed_reference(model, samples: np.ndarray, method: str) -> list[int]:
    """The whole utterance through icefall's window protocol (lhotse fbank,
    `windowed_encoder_output`), then beam_search.py's whole-utterance search;
    cached."""
    key = (id(model), id(samples), samples.size, method)
    if key not in _WINDOWED_CACHE:
        _WINDOWED_CACHE[key] = _windowed_reference_uncached(model, samples, method)
    return _WINDOWED_CACHE[key]


def windowed_encoder_output(encoder: Conformer, features: torch.Tensor, chunk: int,
                            left_context: int) -> torch.Tensor:
    """icefall's streaming protocol on a whole utterance in memory (the slow
    reference of DecodeStream): windows of 4 * chunk + PAD_LENGTH frames
    every 4 * chunk frames, PAD_LENGTH LOG_EPS frames appended as real frames,
    windows until no more than those are left.  Returns (T_out, d)."""
    total = features.size(0) + PAD_LENGTH
    window = 4 * chunk + PAD_LENGTH
    padded = torch.cat([features, torch.full((total + window, features.size(1)), LOG_EPS)])
    states = Conformer.stack_states([encoder.get_init_state(left_context)])
    processed = torch.zeros(1, dtype=torch.int64)
    outputs = []
    start = 0
    with torch.no_grad():
        while total - start > PAD_LENGTH:
            x_lens = torch.tensor([min(window, total - start)])
            # Through the class: a test may have patched the instance's method.
            out, out_lens, states = Conformer.streaming_forward(
                encoder, padded[None, start:start + window], x_lens, states, processed,
                left_context=left_context, chunk_size=chunk)
            outputs.append(out[0, : int(out_lens[0])])
            processed = processed + out_lens
            start += 4 * chunk
    return torch.cat(outputs) if outputs else torch.zeros(0, encoder.d_model)


def _windowed_reference_uncached(model, samples: np.ndarray, method: str) -> list[int]:
    """The whole utterance through the windowed streaming protocol
    (lhotse fbank, `windowed_encoder_output`), then beam_search.py's
    whole-utterance search."""
    features = torch.from_numpy(make_fbank_extractor().extract(samples, 16000))
    encoder_out = windowed_encoder_output(model.encoder, features, CHUNK, LEFT)[None]
    lens = torch.tensor([encoder_out.size(1)])
    if lens[0] == 0:
        return []
    if method == "greedy_search":
        return greedy_search_batch(model, encoder_out, lens)[0]
    if method == "modified_beam_search":
        return modified_beam_search(model, encoder_out, lens, beam=4)[0]
    return fast_beam_search_one_best(model, trivial_graph(100), encoder_out, lens, beam=20.0,
                                     max_states=64, max_contexts=8)[0]


def _decode_in_pieces(setup: StreamingSetup, samples: np.ndarray, sizes) -> list[int]:
    """One stream fed piece by piece (sizes: iterator of piece lengths),
    decoding every chunk as soon as it is ready."""
    stream = setup.new_stream()
    position = 0
    while position < samples.size:
        size = next(sizes)
        stream.accept_waveform(samples[position:position + size], 0.0)
        position += size
        while stream.chunk_ready():
            decode_one_chunk(setup, [stream])
    stream.input_finished(0.0)
    while stream.chunk_ready():
        decode_one_chunk(setup, [stream])
    assert stream.done
    return stream.partial_tokens()


# ------------------------------------------------------------------ tests ----


def test_online_fbank_equals_lhotse_fbank(test_cuts: CutSet, audio: dict[str, np.ndarray]):
    rng = random.Random(0)
    extractor = make_fbank_extractor()
    for cut in list(test_cuts)[:4]:
        samples = audio[cut.id]
        expected = extractor.extract(samples, 16000)
        assert expected.shape[0] == cut.num_frames  # the training features' frame count
        online = OnlineFeatures()
        position, ready = 0, []
        while position < samples.size:
            size = rng.choice([1, 7, 160, 400, 1600, rng.randint(1, 5000)])
            online.accept_waveform(samples[position:position + size])
            position += size
            ready.append(online.num_frames_ready)
        assert 0 < ready[-1] < expected.shape[0]  # the last frames wait for the end
        assert ready == sorted(ready)
        online.input_finished()
        assert online.num_frames_ready == expected.shape[0]
        frames = online.get_frames(0, online.num_frames_ready).numpy()
        np.testing.assert_allclose(frames, expected, rtol=0, atol=1e-3)


def test_stack_unstack_of_stream_batches_is_lossless(active_model, test_cuts, audio):
    for method in ("greedy_search", "modified_beam_search"):
        setup = _setup(active_model, method)
        cuts = list(test_cuts)[:3]
        streams = [setup.new_stream(cut.id) for cut in cuts]
        # Different positions: 0, 1 and 3 chunks decoded.
        for stream, cut, num_chunks in zip(streams, cuts, (0, 1, 3)):
            stream.accept_waveform(audio[cut.id][: 16000 * 3], 0.0)
            for _ in range(num_chunks):
                decode_one_chunk(setup, [stream])
        batch = stack_streams(streams)
        layers = active_model.encoder.encoder_layers
        assert batch.states[0].shape == (layers, LEFT, 3, active_model.encoder.d_model)
        assert batch.processed_lens.tolist() == [0, CHUNK, 3 * CHUNK]
        for n, stream in enumerate(streams):
            assert torch.equal(batch.states[0][:, :, n], stream.states[0])
            assert torch.equal(batch.states[1][:, :, n], stream.states[1])
            assert batch.contexts[n].tolist() == stream.hyp[-active_model.decoder.context_size:]

        copies = [setup.new_stream() for _ in streams]
        unstack_streams(batch, copies)
        for stream, copy in zip(streams, copies):
            assert all(torch.equal(a, b) for a, b in zip(stream.states, copy.states))
            assert copy.processed_lens == stream.processed_lens
            assert copy.hyp == stream.hyp and copy.timestamps == stream.timestamps
            assert [(h.ys, h.log_prob) for h in copy.hyps] == \
                [(h.ys, h.log_prob) for h in stream.hyps]
            assert copy.hyp_timestamps == stream.hyp_timestamps
        restacked = stack_streams(copies)
        assert all(torch.equal(a, b) for a, b in zip(batch.states, restacked.states))
        # The encoder's own helpers round-trip too.
        states = Conformer.stack_states(Conformer.unstack_states(batch.states))
        assert all(torch.equal(a, b) for a, b in zip(batch.states, states))


@pytest.mark.parametrize("chunk", [8, 16, 32])
def test_streaming_encoder_output_equals_the_windowed_reference(active_model, test_cuts, audio,
                                                            chunk, monkeypatch):
    """The frames the streams' chunks give (online fbank, audio in random
    pieces, overlapping windows, padded last chunk) are those of icefall's
    protocol run on the whole utterance's features (the equality with the
    chunk-masked whole-utterance forward, for aligned windows, is in
    tests/test_icefall_compat.py)."""
    encoder = active_model.encoder
    outputs: list[torch.Tensor] = []
    original = encoder.streaming_forward

    def recording_forward(*args, **kwargs):
        encoder_out, encoder_out_lens, states = original(*args, **kwargs)
        outputs.append(encoder_out[0, : int(encoder_out_lens[0])])
        return encoder_out, encoder_out_lens, states

    monkeypatch.setattr(encoder, "streaming_forward", recording_forward)
    setup = _setup(active_model, chunk=chunk)
    rng = random.Random(chunk)
    for cut in list(test_cuts)[:3]:
        outputs.clear()
        _decode_in_pieces(setup, audio[cut.id], iter(lambda: rng.randint(1, 4000), None))
        features = torch.from_numpy(make_fbank_extractor().extract(audio[cut.id], 16000))
        expected = windowed_encoder_output(encoder, features, chunk, LEFT)
        streamed = torch.cat(outputs)
        assert streamed.shape == expected.shape
        torch.testing.assert_close(streamed, expected, rtol=0, atol=1e-4)
        # About as many frames as the whole-utterance encoder gives.
        num_frames = ((features.size(0) - 1) // 2 - 1) // 2
        assert abs(streamed.size(0) - num_frames) <= 2, (streamed.size(0), num_frames)


@pytest.mark.parametrize("method", ["greedy_search", "modified_beam_search", "fast_beam_search"])
def test_streaming_equals_the_windowed_reference(active_model, test_cuts, audio, method):
    cuts = list(test_cuts) if method != "fast_beam_search" else list(test_cuts)[:4]
    results, _ = decode_dataset(cuts, _setup(active_model, method), num_decode_streams=8,
                                load_audio=lambda cut: audio[cut.id])
    assert sorted(r.cut_id for r in results) == sorted(cut.id for cut in cuts)
    streamed = {r.cut_id: r.tokens for r in results}
    different = [cut.id for cut in cuts
                 if streamed[cut.id] != _windowed_reference(active_model, audio[cut.id], method)]
    assert not different, f"{len(different)}/{len(cuts)} differ: {different}"
    assert sum(len(tokens) for tokens in streamed.values()) > 10 * len(cuts)


def test_streaming_decode_equals_the_windowed_reference_and_is_close_to_decode_py(
        active_exp_dir, prepared_dir, active_model, test_cuts, audio):
    """streaming_decode.py's transcripts are those of the windowed protocol
    on whole utterances (`_windowed_reference`).  decode.py --simulate-streaming runs
    on the same cuts, but its chunks lie one encoder frame apart from the real
    windows (icefall's protocol cuts a frame off each window's start), and the
    blank-shifted tiny model's transcripts change with that shift (0 of 12
    equal), so their agreement is printed, not asserted; the equality of the
    two encoders for aligned windows is tests/test_icefall_compat.py's."""
    _run_main(["--exp-dir", str(active_exp_dir), "--epoch", "2", "--avg", "1",
               "--use-averaged-model", "false", "--bpe-model", BPE, "--test-sets", "test-clean",
               "--decode-chunk-size", str(CHUNK), "--left-context", str(LEFT)])
    streamed = _read_hyps(next((active_exp_dir / "streaming/greedy_search").glob(
        "recogs-test-clean-greedy_search-*.txt")))
    sp = _sentencepiece()
    reference = {
        cut.id: sp.decode(_windowed_reference(active_model, audio[cut.id], "greedy_search")).split()
        for cut in test_cuts if cut.id in streamed}
    assert set(reference) == set(streamed)
    different = [k for k in streamed if streamed[k] != reference[k]]
    assert not different, f"{len(different)}/{len(streamed)} differ: {different}"

    result = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "pruned_transducer_stateless4/decode.py"),
         "--exp-dir", str(active_exp_dir), "--epoch", "2", "--avg", "1",
         "--use-averaged-model", "false", "--bpe-model", BPE,
         "--decoding-method", "greedy_search", "--test-sets", "test-clean",
         "--simulate-streaming", "true", "--decode-chunk-size", str(CHUNK),
         "--left-context", str(LEFT)],
        cwd=prepared_dir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reference_files = [p for p in active_exp_dir.rglob("recogs-test-clean-*.txt")
                       if "streaming" not in p.relative_to(active_exp_dir).parts]
    simulated = _read_hyps(reference_files[0])
    assert set(simulated) == set(streamed)
    equal = sum(simulated[k] == streamed[k] for k in streamed)
    print(f"streaming_decode.py == decode.py --simulate-streaming on {equal}/{len(streamed)}")


def test_results_do_not_depend_on_num_decode_streams(active_exp_dir):
    out_dir = active_exp_dir / "streaming/modified_beam_search"
    recogs = {}
    for num_streams in ("1", "100"):
        _run_main(["--exp-dir", str(active_exp_dir), "--epoch", "2", "--avg", "1",
                   "--use-averaged-model", "false", "--bpe-model", BPE,
                   "--test-sets", "test-clean", "test-other",
                   "--decoding-method", "modified_beam_search",
                   "--num-decode-streams", num_streams])
        for part in ("test-clean", "test-other"):
            files = {p.name.split("-")[0]: p for p in out_dir.glob(f"*-{part}-*")}
            assert {"recogs", "errs", "wer", "latency"} <= set(files), sorted(files)
            recogs[num_streams, part] = files["recogs"].read_text()
            summary = json.loads(next(out_dir.glob(f"latency-{part}-*.json")).read_text())
            assert summary["num_utterances"] == 12 and summary["rtf"] > 0
            assert summary["token_latency_ms"]["count"] > 0
            assert summary["token_latency_ms"]["p95"] >= summary["token_latency_ms"]["p50"] > 0
    for part in ("test-clean", "test-other"):
        assert recogs["1", part] == recogs["100", part]
    # Known gap: the blank-shifted tiny model can emit little under modified
    # beam search, which makes the comparison above weak (the token count
    # above is only > 0); the emitting-model checks of streaming are in the
    # tests above, and tests/data/demo_model could make this one strong.


def test_results_do_not_depend_on_piece_sizes(active_model, test_cuts, audio):
    setup = _setup(active_model)
    rng = random.Random(1)
    for cut in list(test_cuts)[:4]:
        samples = audio[cut.id]
        whole = _decode_in_pieces(setup, samples, iter([samples.size]))
        random_sizes = _decode_in_pieces(
            setup, samples, iter(lambda: rng.choice([1, 13, 160, 1600, rng.randint(1, 9000)]),
                                 None))
        assert whole and whole == random_sizes


def test_stream_shorter_than_one_chunk_finalises(active_model, test_cuts, audio):
    setup = _setup(active_model)
    samples = audio[next(iter(test_cuts)).id]
    # 0.3 s: 30 feature frames, fewer than the 4 * 16 + 11 of one chunk.
    short = samples[:4800]
    stream = setup.new_stream()
    stream.accept_waveform(short, 0.0)
    assert not stream.chunk_ready() and not stream.done
    stream.input_finished(0.3)
    assert stream.chunk_ready()
    decode_one_chunk(setup, [stream])
    assert stream.done and not stream.chunk_ready()
    assert stream.partial_tokens() == _windowed_reference(active_model, short, "greedy_search")
    # Empty, or too short for a feature frame: done at once.
    for size in (0, 50):
        tiny = setup.new_stream()
        tiny.accept_waveform(samples[:size], 0.0)
        tiny.input_finished(0.0)
        assert tiny.done and not tiny.chunk_ready() and tiny.partial_tokens() == []
    # 5 feature frames: with the final LOG_EPS padding icefall's window still
    # yields one encoder frame, then the stream is done.
    tiny = setup.new_stream()
    tiny.accept_waveform(samples[:800], 0.0)
    tiny.input_finished(0.0)
    assert tiny.chunk_ready()
    decode_one_chunk(setup, [tiny])
    assert tiny.done and not tiny.chunk_ready()
    # Through the driver, mixed with a normal utterance.
    cut = next(iter(test_cuts))
    cuts = [cut.truncate(duration=0.3, offset=0.5), cut.truncate(duration=0.03), cut]
    results, _ = decode_dataset(cuts, setup, num_decode_streams=2,
                                load_audio=lambda c: load_cut_audio(c))
    assert len(results) == 3 and all(r.final_delay >= 0 for r in results)


def test_token_latency_definition():
    # greedy-like growth: each token belongs to the chunk that emitted it
    assert stable_chunk_of_tokens([(), (5,), (5, 6, 7), (5, 6, 7)], (5, 6, 7)) == [1, 2, 2]
    # a beam changing its mind: token 0 is stable only from the chunk after
    # which it is never replaced
    assert stable_chunk_of_tokens([(1,), (2,), (2, 3), (2, 4)], (2, 4)) == [1, 3]


def test_latency_is_measured_on_the_simulated_clock(active_model, test_cuts, audio):
    cut = next(iter(test_cuts))
    ticks = iter(range(10**6))
    # A fake clock that advances 10 ms per reading: every step "takes" 10 ms.
    results, busy = decode_dataset([cut], _setup(active_model), 1,
                                   load_audio=lambda c: audio[c.id],
                                   clock=lambda: next(ticks) * 0.01)
    (result,) = results
    # A token waits for the step that decodes its chunk (10 ms), or at the
    # end of the audio, where two chunks may be ready at once, for two.
    assert result.token_latencies
    assert all(x in (pytest.approx(0.01), pytest.approx(0.02)) for x in result.token_latencies)
    assert result.final_delay in (pytest.approx(0.01), pytest.approx(0.02))
    # The frame latency adds the wait for the rest of the chunk and the
    # look-ahead (4c + 11 feature frames of 10 ms) plus one 100 ms piece.
    assert all(0.01 - 1e-9 <= x <= (4 * CHUNK + PAD_LENGTH) * 0.01 + 0.1 + 0.02 + 1e-9
               for x in result.frame_latencies)
    assert busy > 0


def test_tail_padding_arrives_with_the_end_of_the_audio(active_model, test_cuts, audio):
    """--tail-padding-seconds: the silence is not part of the utterance's
    duration and arrives with the end of the audio, so the final result does
    not wait for it on the simulated clock (real-time delivery would add 0.76 s)."""
    cut = next(iter(test_cuts))
    padding = round(flush_padding_seconds(CHUNK) * 16000)
    setup = _setup(active_model)
    plain, _ = decode_dataset([cut], setup, 1, load_audio=lambda c: audio[c.id])
    padded, _ = decode_dataset([cut], setup, 1, load_audio=lambda c: audio[c.id],
                               tail_padding_samples=padding)
    assert padded[0].duration == plain[0].duration == audio[cut.id].size / 16000
    assert padded[0].final_delay < flush_padding_seconds(CHUNK)
    suffix = streaming_result_suffix(_params(Path("."), "--tail-padding-seconds", "-1"))
    assert suffix.endswith(f"-tail-padding-{flush_padding_seconds(CHUNK):.2f}")
    assert "tail-padding" not in streaming_result_suffix(_params(Path(".")))


@pytest.mark.parametrize("bad_option, message", [
    (["--tail-padding-seconds", "-2"], "--tail-padding-seconds must be >= 0 or -1"),
    (["--right-context", "4"], "--right-context 4 is not supported"),
    (["--epoch", "7"], "epoch-7.pt"),
])
def test_bad_options_and_checkpoints_are_one_line_errors(active_exp_dir, bad_option, message):
    result = run_script(["pruned_transducer_stateless4/streaming_decode.py",
                         "--exp-dir", str(active_exp_dir), "--epoch", "2", "--avg", "1",
                         "--use-averaged-model", "false", "--bpe-model", BPE,
                         *bad_option], Path.cwd())
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("streaming_decode.py: error: ") and message in last_line


def test_demo_prints_growing_partial_results(active_exp_dir, test_cuts, audio, capsys):
    cut = next(iter(test_cuts))
    wav = Path(cut.recording.sources[0].source)
    final = import_script(STREAMING_DEMO).main(
        [str(wav), "--no-realtime", "--exp-dir", str(active_exp_dir), "--epoch", "2",
         "--avg", "1", "--use-averaged-model", "false", "--bpe-model", BPE,
         "--decode-chunk-size", "8"])
    lines = capsys.readouterr().out.splitlines()
    partial = [line.split("] ", 1)[1] for line in lines if line.startswith("[")]
    # Known gap (see above): the tiny model may print few partial results.
    assert lines[len(partial)] == f"FINAL: {final}"
    lengths = [len(text) for text in partial]
    assert lengths == sorted(lengths)  # greedy partial results only grow


# ---------------------------------------------------------------- helpers ----


def _sentencepiece():
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=BPE)


def _run_main(argv: list[str]) -> None:
    """streaming_decode.main in this process, restoring the root logger's
    handlers (setup_logging replaces them) for pytest's log capture."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        import_script(STREAMING_DECODE).main(argv)
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def _read_hyps(path: Path) -> dict[str, list[str]]:
    """cut id -> hypothesis words of a recogs file (icefall format)."""
    import ast

    hyps = {}
    for line in path.read_text().splitlines():
        cut_id, _, rest = line.partition(":\t")
        if rest.startswith("hyp="):
            hyps[cut_id] = ast.literal_eval(rest[len("hyp="):])
    return hyps
