#!/usr/bin/env python3
"""A streaming speech recognition server speaking sherpa-onnx's websocket protocol.

Usage (from the project root, after training or export.py --onnx 1):

  # our PyTorch model and streaming decoder (checkpoint options as in
  # streaming_decode.py, or --checkpoint pretrained.pt)
  ./pruned_transducer_stateless4/streaming_server.py \\
      --exp-dir exp/pruned_transducer_stateless4 --epoch 30 --avg 9 \\
      --bpe-model data/lang_bpe_500/bpe.model --decode-chunk-size 16 --left-context 64 \\
      --port 6006

  # the ONNX export through sherpa-onnx's Python API
  ./pruned_transducer_stateless4/streaming_server.py --backend onnx \\
      --exp-dir exp/pruned_transducer_stateless4 --epoch 30 --avg 9 --port 6006

  # then: a browser at http://127.0.0.1:6006/ (microphone), or sherpa-onnx's client
  sherpa-onnx-online-websocket-client --server-ip=127.0.0.1 --server-port=6006 FILE.wav

Protocol (sherpa-onnx's online websocket server's): a client sends binary
messages of float32 little-endian samples in [-1, 1] at 16 kHz, then the text
message "Done".  After every decoded chunk the server sends a JSON text
message {"text", "tokens", "timestamps", "segment", "start_time", "is_final",
"is_eof"} for the current segment: text and tokens (BPE pieces) of the
segment, timestamps = seconds of each token from the start of the stream,
segment = index of the segment, start_time = its start in seconds,
is_final = an endpoint (or the end of the audio) closed it, is_eof = the last
message.  After the last result the server sends the text message "Done!"
(sherpa-onnx's client waits for it) and closes the connection.

Decoding: one asyncio task owns every stream.  Each step it moves the audio
that arrived into the streams and decodes one chunk of every stream that has
a chunk ready, as one batch (at most --max-batch-size streams): the batching
of streaming_decode.py, whose engine (streaming_engine.py) it uses; the
step runs in a worker thread so that the event loop keeps receiving audio.
Endpoints (endpoint.py, sherpa-onnx's three rules) cut a stream into segments.
The onnx backend does the same with sherpa_onnx.OnlineRecognizer's
decode_streams, is_endpoint and reset, and appends (4 * chunk + 8) * 10 ms of
silence at "Done" so that sherpa-onnx decodes the last frames.

A GET of / (no websocket upgrade) returns the web page (web/index.html):
microphone capture, partial text, and the segments with their times.

Limits: --max-connections (more get HTTP 503), --max-message-bytes (a larger
message closes the connection, code 1009), --max-audio-seconds per
connection, --idle-timeout-seconds without a message.  A binary message whose
length is not a multiple of 4, samples that are NaN or infinite, or a text
message other than "Done" close that connection with a reason (code 1003 or
1007); other connections never notice.  The server listens on 127.0.0.1
unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np

from pruned_transducer_stateless4.context_graph import context_graph_of
from pruned_transducer_stateless4.decode_stream import flush_padding_seconds
from pruned_transducer_stateless4.decoding_methods import get_method, methods
from pruned_transducer_stateless4.endpoint import EndpointConfig, SegmentTracker
from pruned_transducer_stateless4.model_config import add_model_arguments
from pruned_transducer_stateless4.model_loading import load_model
from pruned_transducer_stateless4.onnx_contract import (
    check_export,
    export_streaming_config,
    export_suffix,
    onnx_export_paths,
)
from pruned_transducer_stateless4.streaming_engine import (
    StreamingSetup,
    add_checkpoint_arguments,
    add_streaming_arguments,
    check_streaming_options,
    decode_one_chunk,
    load_tokenizer_and_model,
    make_search_config,
)
from pruned_transducer_stateless4.timestamps import token_times
from pruned_transducer_stateless4.token_table import load_bpe_model
from shared.checkpoint import explicit_options
from shared.features import SAMPLE_RATE
from shared.utils import AttributeDict, HelpFormatter, RecipeError, get_device, run_main, str2bool

WEB_PAGE = Path(__file__).resolve().parent / "web" / "index.html"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                        help="torch: our model and streaming decoder; onnx: the export of "
                        "export.py --onnx 1 through sherpa-onnx.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to listen on (0.0.0.0: every interface).")
    parser.add_argument("--port", type=int, default=6006, help="Port (0: any free one).")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="torch backend: pretrained.pt of export.py instead of the "
                        "--exp-dir/--epoch/--avg checkpoints.")
    parser.add_argument("--int8", type=str2bool, default=False,
                        help="onnx backend: the int8 files (*.int8.onnx).")
    parser.add_argument("--max-batch-size", type=int, default=50,
                        help="At most this many streams in one encoder batch.")
    parser.add_argument("--max-connections", type=int, default=500,
                        help="More simultaneous connections are refused (HTTP 503).")
    parser.add_argument("--max-message-bytes", type=int, default=1 << 20,
                        help="Largest websocket message accepted (1 MiB = 262144 samples).")
    parser.add_argument("--max-audio-seconds", type=float, default=600.0,
                        help="Audio per connection at most; more closes the connection.")
    parser.add_argument("--idle-timeout-seconds", type=float, default=60.0,
                        help="A connection without a message for this long is closed.")
    parser.add_argument("--save-audio-dir", type=Path, default=None,
                        help="Write the audio each connection sent to DIR/CONNECTION.wav "
                        "(float32, 16 kHz) when it ends, e.g. to check what a browser sent.")
    EndpointConfig.add_arguments(parser)
    add_checkpoint_arguments(parser)
    add_streaming_arguments(parser)
    add_model_arguments(parser)
    return parser


# ---------------------------------------------------------------- backends ----
@dataclass
class SegmentResult:
    """One result message (sherpa-onnx's JSON fields)."""

    text: str
    tokens: list[str]
    timestamps: list[float]
    segment: int
    start_time: float
    is_final: bool = False
    is_eof: bool = False

    def to_json(self) -> str:
        return json.dumps({"text": self.text, "tokens": self.tokens,
                           "timestamps": self.timestamps, "segment": self.segment,
                           "start_time": self.start_time, "is_final": self.is_final,
                           "is_eof": self.is_eof}, ensure_ascii=False)


class TorchBackend:
    """Our model: DecodeStream + streaming_engine.decode_one_chunk + endpoint.py."""

    def __init__(self, params: AttributeDict, endpoint: EndpointConfig | None) -> None:
        self.endpoint = endpoint
        self.tail_padding_seconds = 0.0
        if params.checkpoint is not None:
            import torch

            if params.num_threads > 0:
                torch.set_num_threads(params.num_threads)
            self.sp = load_bpe_model(params.bpe_model)
            check_streaming_options(params)
            params.context_graph = context_graph_of(params, self.sp)
            device = get_device(requested=params.get("device"))
            params.vocab_size = self.sp.get_piece_size()
            model = load_model(params, params.get("explicit_options", frozenset()), device,
                               checkpoint=params.checkpoint)
            if not model.encoder.causal:
                raise RecipeError(f"{params.checkpoint} is not a streaming model")
            self.setup = StreamingSetup(model, params.decode_chunk_size, params.left_context,
                                        make_search_config(params), device)
        else:
            self.sp, self.setup = load_tokenizer_and_model(params)

    def new_stream(self) -> Any:
        stream = self.setup.new_stream()
        stream.tracker = SegmentTracker(stream, self.endpoint)
        return stream

    def accept_waveform(self, stream, samples: np.ndarray) -> None:
        stream.accept_waveform(samples)

    def input_finished(self, stream) -> None:
        stream.input_finished()

    def is_ready(self, stream) -> bool:
        return stream.chunk_ready()

    def is_done(self, stream) -> bool:
        return stream.done or (stream.input_is_finished and not stream.chunk_ready())

    def decode(self, streams: list) -> None:
        decode_one_chunk(self.setup, streams)

    def results(self, stream) -> list[SegmentResult]:
        """The messages after a decoded chunk: a segment an endpoint closed,
        and/or the current segment."""
        messages = []
        closed = stream.tracker.update()
        if closed is not None:
            messages.append(self._message(closed, closed.index))
        current = stream.tracker.current()
        if closed is None or self.is_done(stream):
            message = self._message(current, stream.tracker.num_segments)
            message.is_final = self.is_done(stream)
            messages.append(message)
        return messages

    def _message(self, segment, index: int) -> SegmentResult:
        return SegmentResult(self.sp.decode(segment.tokens),
                             [self.sp.id_to_piece(t) for t in segment.tokens],
                             token_times(segment.frames), index, segment.start_time,
                             is_final=segment.is_final)


class OnnxBackend:
    """The ONNX export through sherpa_onnx.OnlineRecognizer."""

    def __init__(self, params: AttributeDict, endpoint: EndpointConfig | None) -> None:
        import sherpa_onnx

        suffix = export_suffix(params.epoch, params.iter, params.avg)
        paths = onnx_export_paths(params.exp_dir, suffix, params.int8)
        check_export(paths, suffix)
        chunk_size, _ = export_streaming_config(paths["encoder"])
        self.tail_padding_seconds = flush_padding_seconds(chunk_size)
        options = {}
        if endpoint is not None:
            options = dict(enable_endpoint_detection=True,
                           rule1_min_trailing_silence=endpoint.rule1.min_trailing_silence,
                           rule2_min_trailing_silence=endpoint.rule2.min_trailing_silence,
                           rule3_min_utterance_length=endpoint.rule3.min_utterance_length)
        self.recognizer = sherpa_onnx.OnlineRecognizer.from_transducer(
            tokens=str(paths["tokens"]), encoder=str(paths["encoder"]),
            decoder=str(paths["decoder"]), joiner=str(paths["joiner"]),
            num_threads=max(1, params.num_threads), sample_rate=SAMPLE_RATE, feature_dim=80,
            decoding_method=params.decoding_method, max_active_paths=params.beam_size,
            **options)

    def new_stream(self) -> Any:
        return self.recognizer.create_stream()

    def accept_waveform(self, stream, samples: np.ndarray) -> None:
        stream.accept_waveform(SAMPLE_RATE, samples)

    def input_finished(self, stream) -> None:
        stream.accept_waveform(SAMPLE_RATE, np.zeros(
            round(self.tail_padding_seconds * SAMPLE_RATE), dtype=np.float32))
        stream.input_finished()

    def is_ready(self, stream) -> bool:
        return self.recognizer.is_ready(stream)

    def decode(self, streams: list) -> None:
        self.recognizer.decode_streams(streams)

    def results(self, stream) -> list[SegmentResult]:
        result = self.recognizer.get_result_all(stream)
        message = SegmentResult(result.text.strip(), list(result.tokens),
                                [round(t, 4) for t in result.timestamps], result.segment,
                                round(result.start_time, 4))
        if self.recognizer.is_endpoint(stream):
            message.is_final = True
            self.recognizer.reset(stream)
        return [message]


# ------------------------------------------------------------- connections ----
class ClientError(Exception):
    """A client broke the protocol: close its connection with (code, reason)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(eq=False)  # one per websocket, hashed by identity
class Connection:
    websocket: Any
    stream: Any = None
    pending: list[np.ndarray] = field(default_factory=list)  # audio not yet in the stream
    num_samples: int = 0
    received: list[np.ndarray] = field(default_factory=list)  # with --save-audio-dir
    done_received: bool = False  # the client sent "Done"
    finished: bool = False  # input_finished() was given to the stream
    closed: bool = False  # the client went away
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)


class RecognitionServer:
    """The websocket server and its decoding task."""

    def __init__(self, backend, args: argparse.Namespace) -> None:
        self.backend = backend
        self.args = args
        self.connections: set[Connection] = set()
        self.num_open = 0  # websocket connections open (idle ones included)
        self.work = asyncio.Event()
        self.page = WEB_PAGE.read_bytes()
        self.num_steps = 0
        self.num_connections = 0  # ever opened (names the saved audio)

    # -------------------------------------------------------------- http --
    def process_request(self, connection, request):
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if upgrade:
            if self.num_open >= self.args.max_connections:
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE,
                                          "too many connections\n")
            return None
        if request.path.split("?")[0] not in ("/", "/index.html"):
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        headers = Headers([("Content-Type", "text/html; charset=utf-8"),
                           ("Content-Length", str(len(self.page))),
                           ("Cache-Control", "no-store")])
        return Response(HTTPStatus.OK.value, "OK", headers, self.page)

    # --------------------------------------------------------- websocket --
    async def handle(self, websocket) -> None:
        self.num_open += 1
        self.num_connections += 1
        number = self.num_connections
        conn = Connection(websocket)
        sender = asyncio.create_task(self._send_loop(conn))
        try:
            await self._receive_loop(conn)
            if conn.done_received:
                await sender  # ends after "Done!"
                try:  # sherpa-onnx's client closes once it has "Done!"
                    await asyncio.wait_for(websocket.wait_closed(), 5)
                except asyncio.TimeoutError:
                    pass
        except ClientError as error:
            logging.info(f"{websocket.remote_address}: closing: {error.reason}")
            await websocket.close(error.code, error.reason)
        except Exception as error:  # ConnectionClosed and the like: the client left
            logging.info(f"{websocket.remote_address}: {type(error).__name__}: {error}")
        finally:
            conn.closed = True
            self.connections.discard(conn)
            sender.cancel()
            self.num_open -= 1
            if self.args.save_audio_dir is not None and conn.received:
                self._save_audio(conn, number)

    def _save_audio(self, conn: Connection, number: int) -> None:
        import soundfile as sf

        self.args.save_audio_dir.mkdir(parents=True, exist_ok=True)
        path = self.args.save_audio_dir / f"connection-{number:06d}.wav"
        sf.write(str(path), np.concatenate(conn.received), SAMPLE_RATE, subtype="FLOAT")
        logging.info(f"saved {conn.num_samples / SAMPLE_RATE:.2f} s of audio to {path}")

    async def _receive_loop(self, conn: Connection) -> None:
        import websockets

        args = self.args
        max_samples = args.max_audio_seconds * SAMPLE_RATE
        while not conn.done_received:
            try:
                message = await asyncio.wait_for(conn.websocket.recv(),
                                                 args.idle_timeout_seconds)
            except asyncio.TimeoutError:
                raise ClientError(1000, f"idle for {args.idle_timeout_seconds:g} s") from None
            except websockets.ConnectionClosed:
                return
            if isinstance(message, str):
                if message != "Done":
                    raise ClientError(1003, "unknown text message (expected 'Done' or "
                                      "binary float32 samples)")
                conn.done_received = True
                if conn.stream is None:  # "Done" without audio: an empty result
                    self._open_stream(conn)
            else:
                if len(message) % 4 != 0:
                    raise ClientError(1003, f"binary message of {len(message)} bytes: not "
                                      "float32 samples (length not a multiple of 4)")
                samples = np.frombuffer(message, dtype="<f4")
                if not np.isfinite(samples).all():
                    raise ClientError(1007, "samples must be finite floats (got NaN or Inf)")
                conn.num_samples += samples.size
                if conn.num_samples > max_samples:
                    raise ClientError(1009, f"more than --max-audio-seconds "
                                      f"{args.max_audio_seconds:g} s of audio")
                if conn.stream is None:
                    self._open_stream(conn)
                conn.pending.append(samples.astype(np.float32))
                if args.save_audio_dir is not None:
                    conn.received.append(conn.pending[-1])
            self.work.set()

    def _open_stream(self, conn: Connection) -> None:
        conn.stream = self.backend.new_stream()
        self.connections.add(conn)

    async def _send_loop(self, conn: Connection) -> None:
        while True:
            message = await conn.outbox.get()
            await conn.websocket.send(message)
            if message == "Done!":
                return

    # ---------------------------------------------------------- decoding --
    async def decode_loop(self) -> None:
        """Forever: wait for work, run one step in a worker thread."""
        while True:
            await self.work.wait()
            self.work.clear()
            while True:
                batch = self._take_work()
                if not batch:
                    break
                messages = await asyncio.to_thread(self._step, batch)
                for conn, outgoing in messages:
                    if not conn.closed:
                        for message in outgoing:
                            conn.outbox.put_nowait(message)

    def _take_work(self) -> list[tuple[Connection, list[np.ndarray], bool]]:
        """(connection, its new audio, whether its input ended) for every
        connection with something to do; pending audio moves out here, in
        the event loop, so that the worker thread never races with it."""
        work = []
        for conn in list(self.connections):
            if conn.closed:
                continue
            audio, conn.pending = conn.pending, []
            finish = conn.done_received and not conn.finished
            if audio or finish or self.backend.is_ready(conn.stream):
                work.append((conn, audio, finish))
                conn.finished = conn.finished or finish
        return work

    def _step(self, work) -> list[tuple[Connection, list[str]]]:
        """Feeds the audio, decodes one chunk of every ready stream (batches
        of --max-batch-size), and returns the messages to send."""
        backend = self.backend
        for conn, audio, finish in work:
            for samples in audio:
                backend.accept_waveform(conn.stream, samples)
            if finish:
                backend.input_finished(conn.stream)
        ready = [conn for conn, _, _ in work if backend.is_ready(conn.stream)]
        size = self.args.max_batch_size
        for start in range(0, len(ready), size):
            backend.decode([conn.stream for conn in ready[start : start + size]])
            self.num_steps += 1
        outgoing = []
        for conn, _, _ in work:
            messages = []
            if conn in ready:
                messages = [m.to_json() for m in backend.results(conn.stream)]
            if conn.finished and not backend.is_ready(conn.stream):
                final = backend.results(conn.stream)[-1] if not messages else None
                if final is not None:
                    messages.append(final.to_json())
                last = json.loads(messages[-1])
                last["is_final"] = last["is_eof"] = True
                messages[-1] = json.dumps(last, ensure_ascii=False)
                messages.append("Done!")
                self.connections.discard(conn)
            if messages:
                outgoing.append((conn, messages))
        return outgoing


async def serve(backend, args: argparse.Namespace, started: asyncio.Future | None = None):
    """Runs the server until cancelled; `started` gets the port it listens on."""
    from websockets.asyncio.server import serve as websocket_serve

    server = RecognitionServer(backend, args)
    decoder = asyncio.create_task(server.decode_loop())
    async with websocket_serve(server.handle, args.host, args.port,
                               process_request=server.process_request,
                               max_size=args.max_message_bytes, max_queue=64,
                               ping_interval=20, ping_timeout=20) as ws_server:
        port = next(iter(ws_server.sockets)).getsockname()[1]
        logging.info(f"listening on http://{args.host}:{port}/ ({args.backend} backend)")
        if started is not None:
            started.set_result(port)
        try:
            await asyncio.Future()
        finally:
            decoder.cancel()


def make_backend(args: argparse.Namespace):
    for name in ("max_batch_size", "max_connections", "max_message_bytes"):
        if getattr(args, name) < 1:
            raise RecipeError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("max_audio_seconds", "idle_timeout_seconds"):
        if not getattr(args, name) > 0 or math.isinf(getattr(args, name)):
            raise RecipeError(f"--{name.replace('_', '-')} must be a positive number")
    try:
        endpoint = EndpointConfig.from_args(args) if args.enable_endpoint else None
    except ValueError as error:
        raise RecipeError(str(error)) from error
    method = get_method(args.decoding_method)
    if endpoint is not None and method.stream_state == "lattice":
        # The segments cut the greedy hypothesis or the beam (endpoint.py).
        with_endpoints = [m for m in methods(streaming=True)
                          if get_method(m).stream_state != "lattice"]
        raise RecipeError(f"endpointing supports {' and '.join(with_endpoints)}; pass "
                          f"--enable-endpoint false for {method.name}")
    params = AttributeDict(vars(args))
    started = time.perf_counter()
    if args.backend == "onnx":
        if not method.sherpa_onnx:
            raise RecipeError("the onnx backend supports "
                              + " and ".join(methods(sherpa_onnx=True, streaming=True)))
        backend = OnnxBackend(params, endpoint)
    else:
        backend = TorchBackend(params, endpoint)
    logging.info(f"{args.backend} backend ready in {time.perf_counter() - started:.1f} s")
    return backend


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    # Model options typed on the command line: what an icefall pretrained.pt,
    # which stores none, is built with (shared.checkpoint.load_inference_model).
    args.explicit_options = explicit_options(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] "
                        "%(message)s", level=logging.INFO, force=True)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    backend = make_backend(args)
    try:
        asyncio.run(serve(backend, args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    run_main(main)
