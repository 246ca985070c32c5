"""Deployment: timestamps and endpointing of our streaming decoder against
sherpa-onnx on the same export, and streaming_server.py driven by
sherpa-onnx's own C++ websocket client, by 50 concurrent clients, by bad
clients and by a real headless Chromium with a fake microphone.

The model is test_export.py's "emitting" export (the tiny trained model with a
random joiner output layer that emits tokens on about half of the speech
frames), so that every comparison runs over many tokens.  The tests that need
a model that recognises speech and decodes silence as blank (endpointing,
the browser page, hotwords on rare words, timestamps on whole utterances)
use the trained demo model of tests/data/demo_model.
"""

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pruned_transducer_stateless4.audio_input import read_audio
from pruned_transducer_stateless4.decode_stream import flush_padding_seconds
from pruned_transducer_stateless4.endpoint import EndpointConfig, decode_with_endpoints
from pruned_transducer_stateless4.model_loading import inference_params, load_model
from pruned_transducer_stateless4.sherpa_recognizer import (
    build_recognizer,
    decode_waves,
    sherpa_word_times,
)
from pruned_transducer_stateless4.streaming_engine import (
    StreamingSetup,
    decode_dataset,
    make_search_config,
)
from pruned_transducer_stateless4.timestamps import word_start_times
from shared.metrics import read_recogs, read_recogs_word_times, word_error_rate, write_recogs
from shared.utils import AttributeDict
from tests.helpers import (
    BPE,
    CHUNK,
    DEMO_CHECKPOINT,
    DEMO_MODEL_DIR,
    EXPORT_SUFFIX,
    HOTWORD_SCORE,
    LEFT,
    PROJECT_DIR,
    RARE_WORDS,
    check_hotword_effect,
    clean_wavs,
    demo_model_argv,
    demo_model_options,
    import_script,
    load_demo_model,
    read_symbols,
    speak,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
SERVER = PROJECT_DIR / "pruned_transducer_stateless4/streaming_server.py"


def search_setup(model, method: str = "greedy_search", chunk: int = CHUNK,
                 left: int = LEFT) -> StreamingSetup:
    return StreamingSetup(model, chunk, left, make_search_config(AttributeDict(
        decoding_method=method, max_sym_per_frame=1, beam_size=4, beam=20.0, max_states=64,
        max_contexts=8)))


def emitting_model(exports):
    return load_model(inference_params(vocab_size=100),
                      checkpoint=exports["emitting"] / "pretrained.pt")


class WavCut:
    """The little of a lhotse cut that decode_dataset needs, for a wav file."""

    def __init__(self, path: Path) -> None:
        self.id = path.stem
        self.path = path
        self.supervisions = []


def our_streaming(model, paths: list[Path], tail_padding: int = 0):
    """{id: (tokens, frames)} of streaming_decode.py's decoding loop."""
    cuts = [WavCut(p) for p in paths]
    with torch.no_grad():
        results, _ = decode_dataset(cuts, search_setup(model), num_decode_streams=3,
                                    simulate_realtime=False,
                                    load_audio=lambda cut: read_audio(cut.path)[0],
                                    tail_padding_samples=tail_padding)
    return {r.cut_id: (r.tokens, r.token_frames) for r in results}


@pytest.fixture(scope="module")
def wavs(prepared_dir: Path, tmp_path_factory) -> list[Path]:
    """16-bit 16 kHz wav copies of the test-clean utterances (what
    sherpa-onnx's client reads)."""
    out_dir = tmp_path_factory.mktemp("wavs")
    paths = []
    for path in clean_wavs(prepared_dir):
        samples, rate = sf.read(str(path), dtype="int16")
        assert rate == 16000
        paths.append(out_dir / (path.stem + ".wav"))
        sf.write(str(paths[-1]), samples, rate, subtype="PCM_16")
    return paths


# ------------------------------------------------------------ timestamps ----
def test_timestamps_agree_with_sherpa_onnx(exports, wavs, tmp_path: Path):
    """Word start times of streaming_decode.py's loop vs sherpa-onnx's
    result.timestamps on the same export and audio (the padding sherpa-onnx
    needs added for both): within one encoder frame (40 ms) on >= 95% of the
    words of the utterances whose words agree; and the recogs file carries
    them."""
    model = emitting_model(exports)
    symbols = read_symbols(exports["emitting"])
    padding = flush_padding_seconds(CHUNK)
    ours = our_streaming(model, wavs, round(padding * 16000))
    recognizer = build_recognizer(exports["emitting"], EXPORT_SUFFIX, num_threads=1)
    theirs, _ = decode_waves(recognizer, [read_audio(p)[0] for p in wavs], padding)
    close = total = compared_utts = 0
    word_times = {}
    for path, sherpa in zip(wavs, theirs):
        tokens, frames = ours[path.stem]
        words = word_start_times([symbols[t] for t in tokens], frames)
        word_times[path.stem] = [start for _, start in words]
        sherpa_times = sherpa_word_times(sherpa)
        sherpa_words = [w for w, _ in word_start_times(
            sherpa.tokens, [round(t / 0.04) for t in sherpa.timestamps])]
        n = min(len(words), len(sherpa_words))
        if [w for w, _ in words[:n]] != sherpa_words[:n]:
            continue
        compared_utts += 1
        for (_, ours_start), theirs_start in zip(words[:n], sherpa_times[:n]):
            total += 1
            close += abs(ours_start - theirs_start) <= 0.04 + 1e-6
    print(f"timestamps: {close}/{total} words within 40 ms of sherpa-onnx's "
          f"({compared_utts}/{len(wavs)} utterances compared)")
    assert compared_utts >= len(wavs) // 2 and total >= 10 * compared_utts
    assert close >= 0.95 * total

    recogs = tmp_path / "recogs.txt"
    write_recogs(recogs, [(k, "", " ".join(w for w, _ in word_start_times(
        [symbols[t] for t in ours[k][0]], ours[k][1]))) for k in word_times], word_times)
    assert read_recogs_word_times(recogs) == {k: [round(t, 2) for t in v]
                                             for k, v in word_times.items()}
    assert all(len(read_recogs(recogs)[k][1]) == len(v) for k, v in word_times.items())


def test_timestamps_agree_with_sherpa_onnx_on_trained_model(demo_export, rare_word_wavs):
    """The same comparison with the trained demo model on generated sentences,
    where no utterance may be skipped: streaming_decode.py's loop and
    sherpa-onnx (greedy search, same export and padding) give the same words
    on every utterance, and >= 95% of their start times lie within one
    encoder frame of each other (measured: all 155 words)."""
    options = demo_model_options()
    chunk = options["decode_chunk_size"]
    paths = list(rare_word_wavs)
    symbols = read_symbols(DEMO_MODEL_DIR)
    padding = flush_padding_seconds(chunk)
    cuts = [WavCut(p) for p in paths]
    with torch.no_grad():
        results, _ = decode_dataset(cuts, demo_setup(), num_decode_streams=4,
                                    simulate_realtime=False,
                                    load_audio=lambda cut: read_audio(cut.path)[0],
                                    tail_padding_samples=round(padding * 16000))
    ours = {r.cut_id: (r.tokens, r.token_frames) for r in results}
    recognizer = build_recognizer(demo_export, EXPORT_SUFFIX, num_threads=1)
    theirs, _ = decode_waves(recognizer, [read_audio(p)[0] for p in paths], padding)
    close = total = 0
    for path, sherpa in zip(paths, theirs):
        tokens, frames = ours[path.stem]
        words_times = word_start_times([symbols[t] for t in tokens], frames)
        sherpa_words = [w for w, _ in word_start_times(
            sherpa.tokens, [round(t / 0.04) for t in sherpa.timestamps])]
        assert [w for w, _ in words_times] == sherpa_words, path.stem
        for (_, ours_start), theirs_start in zip(words_times, sherpa_word_times(sherpa)):
            total += 1
            close += abs(ours_start - theirs_start) <= 0.04 + 1e-6
    print(f"timestamps (trained model): {close}/{total} words within 40 ms of sherpa-onnx's")
    assert total >= 4 * len(paths) and close >= 0.95 * total


def test_pretrained_print_timestamps(exports, prepared_dir: Path, wavs):
    """pretrained.py --print-timestamps prints word@start for every word."""
    from tests.helpers import run_script

    result = run_script(["pruned_transducer_stateless4/pretrained.py", "--checkpoint",
                         str(exports["emitting"] / "pretrained.pt"), "--bpe-model", BPE,
                         "--simulate-streaming", "1", "--decode-chunk-size", str(CHUNK),
                         "--left-context", str(LEFT), "--print-timestamps", "1",
                         str(wavs[0])], prepared_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    line = result.stdout.strip().splitlines()[-1]
    items = line.split(": ", 1)[1].split()
    assert items, line
    times = [float(item.rsplit("@", 1)[1]) for item in items]
    assert times == sorted(times) and 0 <= times[0] and times[-1] <= 4.0, line


# ------------------------------------------------------------ endpointing ----
# Two sentences said by a voice of the training data, joined by 3 s of digital
# silence, decoded by the trained demo model (tests/data/demo_model), which
# recognises them and decodes silence as blank (the random "emitting" model
# emits tokens on silence, so no trailing-silence rule could fire).
ENDPOINT_SENTENCES = ("he opened the door and walked into the garden",
                      "she wrote a long letter to her mother")
ENDPOINT_VOICE = "rms"
GAP_SECONDS = 3.0


@pytest.fixture(scope="module")
def two_utterances() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, second, both joined by GAP_SECONDS of zeros), 16 kHz float32."""
    a, b = (speak(sentence, ENDPOINT_VOICE) for sentence in ENDPOINT_SENTENCES)
    return a, b, np.concatenate([a, np.zeros(round(GAP_SECONDS * 16000), np.float32), b])


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory) -> Path:
    """The demo model's ONNX export by export.py (its chunk and left context),
    with tokens.txt and bpe.vocab, as EXP_DIR/*-epoch-1-avg-1.onnx."""
    exp_dir = tmp_path_factory.mktemp("demo_export")
    shutil.copy(DEMO_CHECKPOINT, exp_dir / "epoch-1.pt")
    options = demo_model_options()
    import_script(PROJECT_DIR / "pruned_transducer_stateless4/export.py").main(
        ["--exp-dir", str(exp_dir), "--epoch", "1", "--avg", "1", "--use-averaged-model",
         "false", "--bpe-model", str(DEMO_MODEL_DIR / "bpe.model"), "--onnx", "1",
         "--decode-chunk-size", str(options["decode_chunk_size"]),
         "--left-context", str(options["left_context"]), *options["model_args"]])
    return exp_dir


def demo_server_options() -> list[str]:
    """streaming_server.py's options for the demo model (torch backend)."""
    options = demo_model_options()
    return [*demo_model_argv(), "--decode-chunk-size", str(options["decode_chunk_size"]),
            "--left-context", str(options["left_context"]), "--num-threads", "1"]


def demo_setup(method: str = "greedy_search") -> StreamingSetup:
    options = demo_model_options()
    return search_setup(load_demo_model(), method, options["decode_chunk_size"],
                        options["left_context"])


def sherpa_endpoint_segments(exp_dir: Path, samples: np.ndarray) -> list[str]:
    """The texts of the segments sherpa-onnx's endpointing (its default rules,
    greedy search) cuts `samples` into, fed in 0.1 s pieces and followed by
    the padding it needs to decode the last frames."""
    import sherpa_onnx

    chunk = demo_model_options()["decode_chunk_size"]
    recognizer = sherpa_onnx.OnlineRecognizer.from_transducer(
        **{name: str(exp_dir / f"{name}-{EXPORT_SUFFIX}.onnx")
           for name in ("encoder", "decoder", "joiner")},
        tokens=str(exp_dir / "tokens.txt"), num_threads=1, sample_rate=16000,
        feature_dim=80, decoding_method="greedy_search", enable_endpoint_detection=True,
        rule1_min_trailing_silence=2.4, rule2_min_trailing_silence=1.2,
        rule3_min_utterance_length=20.0)
    stream = recognizer.create_stream()
    texts = []
    padding = np.zeros(round(flush_padding_seconds(chunk) * 16000), np.float32)
    samples = np.concatenate([samples, padding])
    for start in range(0, samples.size, 1600):
        stream.accept_waveform(16000, samples[start : start + 1600])
        if start + 1600 >= samples.size:
            stream.input_finished()
        while recognizer.is_ready(stream):
            recognizer.decode_stream(stream)
            if recognizer.is_endpoint(stream):
                if recognizer.get_result(stream).strip():
                    texts.append(recognizer.get_result(stream).strip().lower())
                recognizer.reset(stream)
    if recognizer.get_result(stream).strip():
        texts.append(recognizer.get_result(stream).strip().lower())
    return texts


def test_endpointing_splits_two_utterances(demo_export, two_utterances):
    """Two utterances joined by 3 s of silence come out of our streaming
    decoder's endpointing (endpoint.py, sherpa-onnx's default rules) as two
    segments:

    * their texts are the two sentences (word error rate <= 25% each, what
      the model gets on them) and the first is the text of the first
      utterance decoded alone;
    * the cut lies in the silence, 1.2 s (rule 2) to 1.2 s + one chunk after
      the first segment's last token; the second segment starts there and its
      tokens lie in the second utterance;
    * sherpa-onnx's endpointing on the same model's ONNX export finds the same
      two segments, the first with the same text."""
    a, b, joined = two_utterances
    setup = demo_setup()
    chunk_seconds = setup.chunk_size * 0.04
    padding = round(flush_padding_seconds(setup.chunk_size) * 16000)
    with torch.no_grad():
        segments = decode_with_endpoints(setup, joined, EndpointConfig(),
                                         tail_padding_samples=padding)
        alone = decode_with_endpoints(setup, joined[: a.size + 48000], EndpointConfig(),
                                      tail_padding_samples=padding)
    symbols = read_symbols(DEMO_MODEL_DIR)

    def text(tokens) -> str:
        return words([symbols[t] for t in tokens]).lower()

    ours = [text(s.tokens) for s in segments]
    print("our segments:", [(s.start_time, s.end_time, t) for s, t in zip(segments, ours)])
    assert len(segments) == 2, ours
    assert ours[0] == text(alone[0].tokens)
    for sentence, hyp in zip(ENDPOINT_SENTENCES, ours):
        assert word_error_rate([sentence], [hyp]) <= 0.25, (sentence, hyp)
    end_a = a.size / 16000
    first, second = segments
    last_token_a = first.frames[-1] * 0.04
    assert first.start_time == 0.0
    assert last_token_a + 1.2 <= first.end_time <= last_token_a + 1.2 + chunk_seconds + 0.04
    assert first.end_time < end_a + GAP_SECONDS
    assert second.start_time == first.end_time
    assert end_a + GAP_SECONDS - 0.2 <= second.frames[0] * 0.04
    assert second.frames[-1] * 0.04 <= second.end_time <= joined.size / 16000 + padding / 16000

    theirs = sherpa_endpoint_segments(demo_export, joined)
    print("sherpa-onnx segments:", theirs)
    assert len(theirs) == 2 and theirs[0] == ours[0], (theirs, ours)
    assert word_error_rate([ENDPOINT_SENTENCES[1]], [theirs[1]]) <= 0.25, theirs


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_server_sends_endpoint_segments(demo_export, two_utterances, tmp_path: Path, backend):
    """streaming_server.py with endpointing on (its default) cuts the two
    utterances into two final segments, the second starting in the silence,
    as its backend does alone: the segments and start times of
    decode_with_endpoints (torch backend, which adds no padding) or the
    segments of sherpa-onnx's endpointing (onnx)."""
    a, _, joined = two_utterances
    if backend == "torch":
        server_options = demo_server_options()
        symbols = read_symbols(DEMO_MODEL_DIR)
        with torch.no_grad():
            segments = decode_with_endpoints(demo_setup(), joined, EndpointConfig())
        expected = [words([symbols[t] for t in s.tokens]) for s in segments]
        expected_starts = [round(s.start_time, 4) for s in segments]
    else:
        server_options = ["--backend", "onnx", "--exp-dir", str(demo_export), "--epoch", "1",
                          "--avg", "1", "--num-threads", "1"]
        expected = [t.upper() for t in sherpa_endpoint_segments(demo_export, joined)]
        expected_starts = None
    server = Server(tmp_path, *server_options)
    try:
        messages = asyncio.run(stream_file(server.port, joined))
    finally:
        server.stop()
    finals = [m for m in messages if m["is_final"] and m["text"].strip()]
    print(f"{backend} server segments:",
          [(m["segment"], m["start_time"], m["text"]) for m in finals])
    assert messages[-1]["is_eof"]
    assert len(expected) == 2
    assert [m["text"].strip() for m in finals] == expected
    assert [m["segment"] for m in finals] == [0, 1]
    assert finals[0]["start_time"] == 0.0
    assert a.size / 16000 < finals[1]["start_time"] < a.size / 16000 + GAP_SECONDS  # in the gap
    if expected_starts is not None:
        assert [m["start_time"] for m in finals] == expected_starts


def test_endpoint_rules():
    """sherpa-onnx's three rules at their defaults (40 ms frames)."""
    config = EndpointConfig()
    assert not config.is_endpoint(59, 59)  # 2.36 s of nothing
    assert config.is_endpoint(60, 60)  # 2.4 s of nothing: rule 1
    assert not config.is_endpoint(100, 29)  # speech, then 1.16 s of silence
    assert config.is_endpoint(100, 30)  # speech, then 1.2 s: rule 2
    assert not config.is_endpoint(499, 0)
    assert config.is_endpoint(500, 0)  # 20 s: rule 3


# ---------------------------------------------------------------- server ----
class Server:
    """streaming_server.py as a subprocess on a free loopback port."""

    def __init__(self, cwd: Path, *options: str) -> None:
        self.log = open(cwd / f"server-{os.getpid()}-{time.monotonic_ns()}.log", "w+")
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", "0", *options], cwd=cwd,
            stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + 120
        self.port = None
        while self.port is None:
            assert self.process.poll() is None, self.text()
            assert time.monotonic() < deadline, self.text()
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", self.text())
            if found:
                self.port = int(found.group(1))
            else:
                time.sleep(0.2)

    def text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def torch_server_options(exports) -> list[str]:
    return ["--checkpoint", str(exports["emitting"] / "pretrained.pt"), "--bpe-model", BPE,
            "--decode-chunk-size", str(CHUNK), "--left-context", str(LEFT),
            "--num-threads", "1"]


def final_text(messages: list[dict]) -> str:
    """The transcript of a connection: its final segments in order."""
    finals = [m["text"].strip() for m in messages if m["is_final"] and m["text"].strip()]
    assert messages and messages[-1]["is_eof"], messages[-3:]
    return " ".join(finals)


async def stream_file(port: int, samples: np.ndarray, piece: int = 3200,
                      pause: float = 0.0) -> list[dict]:
    """A well-behaved client: sends the samples in pieces, then "Done";
    returns the JSON messages received before "Done!"."""
    import websockets

    messages = []
    async with websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
        async def receive():
            async for message in ws:
                if message == "Done!":
                    return
                messages.append(json.loads(message))

        receiver = asyncio.create_task(receive())
        for start in range(0, samples.size, piece):
            await ws.send(samples[start : start + piece].astype("<f4").tobytes())
            await asyncio.sleep(pause)
        await ws.send("Done")
        await asyncio.wait_for(receiver, 120)
    return messages


def sherpa_client(port: int, wav: Path) -> list[dict]:
    client = shutil.which("sherpa-onnx-online-websocket-client") or str(
        Path(sys.executable).parent / "sherpa-onnx-online-websocket-client")
    result = subprocess.run([client, "--server-ip=127.0.0.1", f"--server-port={port}",
                             "--seconds-per-message=0.01", "--samples-per-message=4000",
                             str(wav)], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    messages = [json.loads(line[line.index("{"):]) for line in output.splitlines()
                if "OnMessage" in line and "{" in line]
    return messages


def words(tokens: list[str]) -> str:
    return " ".join("".join(tokens).replace("\u2581", " ").split())


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_sherpa_onnx_client_through_our_server(exports, prepared_dir: Path, wavs, backend):
    """sherpa-onnx's C++ client decodes wavs through our server to the text of
    streaming_decode.py's loop (torch backend) or of sherpa-onnx's recognizer
    (onnx backend) on the same audio."""
    symbols = read_symbols(exports["emitting"])
    if backend == "torch":
        options = torch_server_options(exports)
        expected = {k: words([symbols[t] for t in tokens])
                    for k, (tokens, _) in our_streaming(emitting_model(exports), wavs).items()}
    else:
        options = ["--backend", "onnx", "--exp-dir", str(exports["emitting"]), "--epoch", "1",
                   "--avg", "1"]
        recognizer = build_recognizer(exports["emitting"], EXPORT_SUFFIX, num_threads=1)
        results, _ = decode_waves(recognizer, [read_audio(p)[0] for p in wavs],
                                  flush_padding_seconds(CHUNK))
        expected = {p.stem: words(r.tokens) for p, r in zip(wavs, results)}
    # No endpointing: streaming_decode.py and sherpa_onnx_decode.py do not cut
    # utterances either (test_endpointing_* test the segments).
    server = Server(prepared_dir, *options, "--enable-endpoint", "false")
    try:
        got = {p.stem: final_text(sherpa_client(server.port, p)) for p in wavs}
    finally:
        server.stop()
    print(f"{backend} server via sherpa-onnx's client:", got)
    assert sum(len(t.split()) for t in got.values()) >= 2 * len(wavs)
    assert got == expected


def test_50_concurrent_clients_equal_one_at_a_time(exports, prepared_dir: Path, wavs):
    audio = [read_audio(p)[0] for p in wavs]
    server = Server(prepared_dir, *torch_server_options(exports), "--max-batch-size", "50")
    try:
        alone = [final_text(asyncio.run(stream_file(server.port, x))) for x in audio]

        async def together():
            return await asyncio.gather(*[
                stream_file(server.port, audio[i % len(audio)], piece=1600, pause=0.005)
                for i in range(50)])

        started = time.perf_counter()
        results = asyncio.run(together())
        elapsed = time.perf_counter() - started
    finally:
        server.stop()
    together_texts = [final_text(m) for m in results]
    print(f"50 concurrent clients in {elapsed:.1f} s; texts equal to one at a time: "
          f"{sum(t == alone[i % len(audio)] for i, t in enumerate(together_texts))}/50")
    assert together_texts == [alone[i % len(audio)] for i in range(50)]


async def bad_clients(port: int) -> dict[str, tuple[int | None, str]]:
    """Each bad client's close code and reason."""
    import websockets

    async def expect_close(payloads) -> tuple[int | None, str]:
        async with websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
            try:
                for payload in payloads:
                    await ws.send(payload)
                    await asyncio.sleep(0.05)
                await asyncio.wait_for(ws.recv(), 30)
                await asyncio.wait_for(ws.recv(), 30)
            except websockets.ConnectionClosed:
                pass
            await ws.wait_closed()
            return ws.close_code, ws.close_reason

    good_audio = np.zeros(1600, dtype="<f4").tobytes()
    cases = {
        "odd length": [good_audio, b"\x00" * 4001],
        "nan": [good_audio, np.array([0.1, np.nan, 0.2], dtype="<f4").tobytes()],
        "inf": [np.array([np.inf] * 100, dtype="<f4").tobytes()],
        "unknown text": ["Hello"],
        "oversized": [np.zeros(70000, dtype="<f4").tobytes()],
    }
    results = dict(zip(cases, await asyncio.gather(*[expect_close(p) for p in cases.values()])))

    # Disconnect mid-utterance: audio, then the TCP connection just goes.
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/")
    await ws.send(np.random.default_rng(0).standard_normal(8000).astype("<f4").tobytes())
    ws.transport.abort()
    results["abrupt disconnect"] = (None, "")
    return results


def test_bad_clients_do_not_disturb_a_good_one(exports, prepared_dir: Path, wavs):
    audio = read_audio(wavs[0])[0]
    server = Server(prepared_dir, *torch_server_options(exports), "--max-connections", "250",
                    "--max-message-bytes", "65536", "--idle-timeout-seconds", "120")
    try:
        expected = final_text(asyncio.run(stream_file(server.port, audio)))

        async def scenario():
            import websockets

            idle = [await websockets.connect(f"ws://127.0.0.1:{server.port}/")
                    for _ in range(200)]
            good = asyncio.create_task(stream_file(server.port, audio, piece=1600, pause=0.01))
            bad = await bad_clients(server.port)
            messages = await good
            # The idle connections are still open and the server still serves.
            again = await stream_file(server.port, audio)
            still_open = sum(ws.state.name == "OPEN" for ws in idle)
            for ws in idle:
                await ws.close()
            return messages, bad, again, still_open

        messages, bad, again, still_open = asyncio.run(scenario())
    finally:
        log = server.text()
        server.stop()
    print("bad clients:", bad)
    assert final_text(messages) == expected and final_text(again) == expected
    assert still_open == 200
    assert bad["odd length"][0] == 1003 and "multiple of 4" in bad["odd length"][1]
    assert bad["nan"][0] == 1007 and bad["inf"][0] == 1007
    assert bad["unknown text"][0] == 1003 and "Done" in bad["unknown text"][1]
    assert bad["oversized"][0] == 1009
    assert "Traceback" not in log, log[-3000:]


# --------------------------------------------------------------- browser ----
def test_web_page_in_headless_chromium(two_utterances, tmp_path: Path):
    """The page at / in a real headless Chromium whose microphone is a fake
    device playing a generated wav (a second of silence, then speech), the
    server running the trained demo model:

    * what the page sent (the server saves it, --save-audio-dir) is the wav's
      audio at 16 kHz: correlation > 0.95 at the best offset (a page that sent
      nothing, the wrong sample format or the wrong rate gets ~0);
    * the page shows the text, segment by segment, that the server gives when
      that same audio is streamed to it directly;
    * that text is the sentence the wav says: word error rate <= 40% (a
      model that recognises nothing gets ~100%).  The page starts sending at
      an arbitrary point of the fake device's audio, which shifts the chunk
      boundaries, so the text need not be that of the wav decoded alone;
      over leading silences of 0-1 s in 40 ms steps this sentence's WER
      stays <= 25% (the other sentence's reaches 44%).

    Saves a screenshot into the test's tmp_path,
    or to $SCREENSHOT_DIR/streaming_server_page.png when set (how the one in
    docs/ was made: SCREENSHOT_DIR=docs), so a test run never rewrites docs/."""
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, ("Debian chromium and chromium-driver are missing: "
                                      "run shared/setup.sh")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    samples = two_utterances[1]
    played = np.concatenate([np.zeros(16000, np.float32), samples, np.zeros(16000, np.float32)])
    wav = tmp_path / "speech.wav"
    sf.write(str(wav), played, 16000, subtype="PCM_16")
    saved_dir = tmp_path / "received"
    server = Server(tmp_path, *demo_server_options(), "--save-audio-dir", str(saved_dir))
    try:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                     f"--use-file-for-fake-audio-capture={wav}%noloop",
                     "--autoplay-policy=no-user-gesture-required", "--window-size=1000,700"):
            options.add_argument(flag)
        browser = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            browser.get(f"http://127.0.0.1:{server.port}/")
            browser.find_element(By.ID, "start").click()
            WebDriverWait(browser, 30).until(
                lambda b: b.find_element(By.ID, "status").text.startswith("listening"))
            time.sleep(played.size / 16000 + 1.0)
            browser.find_element(By.ID, "stop").click()
            WebDriverWait(browser, 60).until(
                lambda b: b.find_element(By.ID, "status").text == "done")
            texts = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#segments .text")]
            shot_dir = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
            shot_dir.mkdir(parents=True, exist_ok=True)
            assert browser.save_screenshot(str(shot_dir / "streaming_server_page.png"))
        finally:
            browser.quit()
        deadline = time.monotonic() + 30
        while not list(saved_dir.glob("*.wav")) and time.monotonic() < deadline:
            time.sleep(0.2)
        (saved,) = saved_dir.glob("*.wav")
        sent, rate = sf.read(str(saved), dtype="float32")
        expected = final_text(asyncio.run(stream_file(server.port, sent)))
    finally:
        server.stop()
    assert rate == 16000
    # Where the sent audio lies in what the device played (lag: sent[t] is
    # played[t + lag]), and how alike the two are where they overlap.
    size = 2 * (sent.size + played.size)
    correlation = np.fft.irfft(np.fft.rfft(played, size) * np.conj(np.fft.rfft(sent, size)),
                               size)
    lags = np.arange(-sent.size + 1, played.size)
    lag = int(lags[np.argmax(correlation[lags % size])])
    start, end = max(0, -lag), min(sent.size, played.size - lag)
    a, b = sent[start:end], played[start + lag : end + lag]
    similarity = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))
    offset = lag
    overlap = b
    shown = " ".join(texts)
    print(f"page sent {sent.size / 16000:.2f} s from {offset / 16000:.2f} s of the played "
          f"audio (similarity {similarity:.3f}); page: {shown!r}; server on the same "
          f"audio: {expected!r}")
    assert similarity > 0.95
    assert overlap.size > samples.size  # all the speech was sent
    assert shown == expected
    assert word_error_rate([ENDPOINT_SENTENCES[1]], [shown.lower()]) <= 0.4, shown


def test_decode_recogs_have_word_times(exports, prepared_dir: Path, tmp_path: Path):
    """decode.py's recogs file gives a start time for every hypothesis word:
    increasing (one token per frame), within the utterance."""
    from lhotse import load_manifest

    from tests.helpers import run_script

    exp_dir = tmp_path / "exp"
    exp_dir.mkdir()
    (exp_dir / "epoch-1.pt").symlink_to(exports["emitting"] / "epoch-1.pt")
    result = run_script(["pruned_transducer_stateless4/decode.py", "--exp-dir", str(exp_dir),
                         "--epoch", "1", "--avg", "1", "--use-averaged-model", "false",
                         "--bpe-model", BPE, "--test-sets", "test-clean", "--max-duration", "30",
                         "--decoding-method", "modified_beam_search", "--num-threads", "1"],
                        prepared_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    (recogs_path,) = (exp_dir / "modified_beam_search").glob("recogs-test-clean-*.txt")
    recogs = read_recogs(recogs_path)
    times = read_recogs_word_times(recogs_path)
    durations = {c.id: c.duration for c in load_manifest(
        prepared_dir / "data/fbank/librispeech_cuts_test-clean.jsonl.gz")}
    assert set(times) == set(recogs) and sum(map(len, times.values())) >= 2 * len(recogs)
    for cut_id, (_, hyp) in recogs.items():
        assert len(times[cut_id]) == len(hyp), cut_id
        assert times[cut_id] == sorted(set(times[cut_id])), times[cut_id]
        assert all(0 <= t < durations[cut_id] for t in times[cut_id]), cut_id


# --------------------------------------------------------------- hotwords ----
def test_context_graph_scores_like_sherpa_onnx_hotwords(exports, prepared_dir: Path, wavs,
                                                         tmp_path: Path):
    """sherpa-onnx with the export's bpe.vocab (modeling_unit bpe) reports
    non-zero context scores for listed phrases, and our context graph gives
    each token of sherpa-onnx's results the same score change."""
    import sentencepiece as spm

    from pruned_transducer_stateless4.context_graph import ContextGraph

    assert (exports["emitting"] / "bpe.vocab").read_bytes() == (
        prepared_dir / "data/lang_bpe_100/bpe.vocab").read_bytes()
    symbols = read_symbols(exports["emitting"])
    sp = spm.SentencePieceProcessor(model_file=str(prepared_dir / BPE))
    audio = [np.concatenate([read_audio(p)[0], np.zeros(8000, np.float32)]) for p in wavs]
    plain = build_recognizer(exports["emitting"], EXPORT_SUFFIX, num_threads=1,
                             decoding_method="modified_beam_search")
    plain_results, _ = decode_waves(plain, audio, 0.0)
    # Phrases the model outputs: the first two words of the first results.
    phrases = []
    for result in plain_results:
        words = result.text.split()
        if len(words) >= 2 and " ".join(words[:2]) not in phrases:
            phrases.append(" ".join(words[:2]))
        if len(phrases) == 3:
            break
    hotwords = tmp_path / "hotwords.txt"
    hotwords.write_text("".join(f"{p}\n" for p in phrases))
    recognizer = build_recognizer(exports["emitting"], EXPORT_SUFFIX, num_threads=1,
                                  decoding_method="modified_beam_search",
                                  hotwords_file=hotwords, hotwords_score=2.0)
    graph = ContextGraph([sp.encode(p) for p in phrases], 2.0)
    nonzero = compared = 0
    for samples in audio:
        stream = recognizer.create_stream()
        stream.accept_waveform(16000, samples)
        stream.input_finished()
        while recognizer.is_ready(stream):
            recognizer.decode_stream(stream)
        result = recognizer.get_result_all(stream)
        ids = [symbols.index(t.replace(" ", "\u2581")) for t in result.tokens]
        state, ours = None, []
        for token in ids:
            delta, state = graph.forward_one_step(state, token)
            ours.append(delta)
        assert ours == pytest.approx(list(result.context_scores)), (result.tokens, phrases)
        nonzero += sum(score != 0 for score in result.context_scores)
        compared += len(ids)
    print(f"hotwords {phrases}: {nonzero} of {compared} tokens with a context score; "
          "ours equal sherpa-onnx's on all")
    assert nonzero > 0


def test_sherpa_onnx_hotwords_on_rare_words(demo_export, rare_word_wavs, tmp_path: Path):
    """sherpa-onnx (modified_beam_search) on the demo model's export, with the
    rare words as its hotwords file encoded with export.py's bpe.vocab:
    more of them are recognised than without it (measured: 0 -> 7 of 22 at
    score 2.0), the sentences without them no worse (test_context_graph.py
    does the same with our own search).  The file is written in the BPE
    model's case (upper): sherpa-onnx does not fold case, and a lower-case
    file changes nothing."""
    hotwords = tmp_path / "hotwords.txt"
    hotwords.write_text("".join(f"{word.upper()}\n" for word in RARE_WORDS))
    audio = [read_audio(p)[0] for p in rare_word_wavs]
    padding = flush_padding_seconds(demo_model_options()["decode_chunk_size"])

    def decode(**hotword_options) -> dict[Path, str]:
        recognizer = build_recognizer(demo_export, EXPORT_SUFFIX, num_threads=1,
                                      decoding_method="modified_beam_search", **hotword_options)
        results, _ = decode_waves(recognizer, audio, padding)
        return {p: r.text for p, r in zip(rare_word_wavs, results)}

    check_hotword_effect(rare_word_wavs, decode(),
                         decode(hotwords_file=hotwords, hotwords_score=HOTWORD_SCORE),
                         min_gain=len(rare_word_wavs) // 8)


def test_connection_limit_and_page(exports, prepared_dir: Path, wavs):
    """Over --max-connections a websocket handshake gets HTTP 503 and the
    others are unaffected; GET / returns the page, other paths 404."""
    import urllib.error
    import urllib.request

    import websockets

    audio = read_audio(wavs[0])[0]
    server = Server(prepared_dir, *torch_server_options(exports), "--max-connections", "3")
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=30)
        assert page.status == 200 and b"getUserMedia" in page.read()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/nothing", timeout=30)
        assert missing.value.code == 404
        expected = final_text(asyncio.run(stream_file(server.port, audio)))

        async def scenario():
            idle = [await websockets.connect(f"ws://127.0.0.1:{server.port}/")
                    for _ in range(3)]
            with pytest.raises(websockets.InvalidStatus) as refused:
                await websockets.connect(f"ws://127.0.0.1:{server.port}/")
            await idle[0].close()
            await asyncio.sleep(0.2)
            messages = await stream_file(server.port, audio)
            for ws in idle[1:]:
                await ws.close()
            return refused.value.response.status_code, messages

        status, messages = asyncio.run(scenario())
    finally:
        server.stop()
    assert status == 503
    assert final_text(messages) == expected
