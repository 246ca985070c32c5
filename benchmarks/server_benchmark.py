#!/usr/bin/env python3
"""How many real-time streams streaming_server.py serves, and how fast partial
results come, for the PyTorch and the sherpa-onnx backends side by side.

Usage (from a directory with the model; the server options after -- are
passed to streaming_server.py, for both backends):

  ./benchmarks/server_benchmark.py --wavs a.wav b.wav --streams 1 2 4 8 16 32 \\
      --cores 0,1 -- --exp-dir exp/pruned_transducer_stateless4 --epoch 30 --avg 9 \\
      --bpe-model data/lang_bpe_500/bpe.model --decode-chunk-size 16 --left-context 64

For each backend a server is started (pinned to --cores with taskset, with
--num-threads torch/onnxruntime threads, endpointing off), and for
each N of --streams, N clients each send the wavs (one after the other, as
one stream) at real-time pace in pieces of --piece-ms, then "Done".

Measured, per N:
* partial-result latency: for the k-th result message of a stream (one per
  decoded chunk of c encoder frames), the receive time minus the send time of
  the piece that held the last sample chunk k needs (feature frame
  4c(k + 1) + 6, i.e. sample 160 * (4c(k + 1) + 6) + 240); p50 and p95 over
  all messages of all streams;
* final delay: receive time of the last result minus the send time of "Done";
* a stream keeps up if its final delay is below --max-final-delay seconds
  (default 1.0); N is served in real time if every stream keeps up.
The largest N served in real time is reported per backend.  The numbers
depend on what else runs on the machine: say so when you quote them.
"""

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from shared.utils import HelpFormatter

SERVER = Path(__file__).resolve().parent.parent / "pruned_transducer_stateless4/streaming_server.py"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--wavs", type=Path, nargs="+", required=True,
                        help="16 kHz mono files; every stream sends all of them in turn.")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 16],
                        help="Numbers of concurrent streams to try (ascending; stops at the "
                        "first that is not served in real time).")
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx"],
                        choices=["torch", "onnx"], help="Servers to measure, one after the other.")
    parser.add_argument("--cores", default="0,1", help="CPU cores of the server (taskset).")
    parser.add_argument("--num-threads", "--threads", dest="num_threads", type=int, default=1,
                        help="torch / onnxruntime threads of the server.  On "
                        "a loaded machine 2 torch threads made a chunk 18x slower than 1.")
    parser.add_argument("--chunk-size", type=int, default=16,
                        help="Encoder frames per chunk of the model (to map results to audio).")
    parser.add_argument("--piece-ms", type=float, default=100.0,
                        help="Audio is sent in pieces of this many milliseconds.")
    parser.add_argument("--max-final-delay", type=float, default=1.0,
                        help="A stream keeps up if its final result arrives within this many "
                        "seconds of its end.")
    parser.add_argument("--output", type=Path, default=None,
                        help="Also write the results as JSON here.")
    parser.add_argument("server_options", nargs=argparse.REMAINDER,
                        help="-- then the options of streaming_server.py.")
    return parser


def start_server(backend: str, options: list[str], cores: str, threads: int, log_path: Path):
    command = ["taskset", "-c", cores, sys.executable, str(SERVER), "--backend", backend,
               "--port", "0", "--enable-endpoint", "false", "--num-threads", str(threads),
               "--max-batch-size", "200", *options]
    log = open(log_path, "w+")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.monotonic() + 180
    while True:
        text = log_path.read_text()
        found = re.search(r"listening on http://[^:]+:(\d+)/", text)
        if found:
            return process, int(found.group(1))
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start:\n{text[-3000:]}")
        time.sleep(0.2)


async def one_stream(port: int, samples: np.ndarray, piece: int, chunk: int) -> dict:
    import websockets

    send_times: list[tuple[int, float]] = []  # (samples sent so far, time)
    latencies: list[float] = []
    async with websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
        received: list[float] = []

        async def receive():
            async for message in ws:
                if message == "Done!":
                    return
                json.loads(message)
                received.append(time.perf_counter())

        receiver = asyncio.create_task(receive())
        start = time.perf_counter()
        for begin in range(0, samples.size, piece):
            due = start + begin / 16000
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await ws.send(samples[begin : begin + piece].astype("<f4").tobytes())
            send_times.append((min(begin + piece, samples.size), time.perf_counter()))
        done_time = time.perf_counter()
        await ws.send("Done")
        await asyncio.wait_for(receiver, 300)
    for k, when in enumerate(received[:-1]):  # the last message is the final one
        needed = 160 * (4 * chunk * (k + 1) + 6) + 240
        sent = next((t for n, t in send_times if n >= needed), None)
        if sent is not None:
            latencies.append(when - sent)
    return {"latencies": latencies, "final_delay": received[-1] - done_time}


async def run_streams(port: int, samples: np.ndarray, n: int, piece: int, chunk: int):
    # Streams start a little apart, as real users do.
    async def delayed(i):
        await asyncio.sleep(0.05 * i % 1.0)
        return await one_stream(port, samples, piece, chunk)

    return await asyncio.gather(*[delayed(i) for i in range(n)])


def main() -> None:
    args = get_parser().parse_args()
    options = [o for o in args.server_options if o != "--"]
    audio = []
    for path in args.wavs:
        samples, rate = sf.read(str(path), dtype="float32")
        if rate != 16000 or samples.ndim != 1:
            sys.exit(f"server_benchmark.py: error: {path} is not 16 kHz mono")
        audio.append(samples)
    samples = np.concatenate(audio)
    piece = round(args.piece_ms * 16)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            process, port = start_server(backend, options, args.cores, args.num_threads,
                                         Path(tmp) / f"{backend}.log")
            rows = []
            try:
                asyncio.run(run_streams(port, samples[:16000], 1, piece, args.chunk_size))
                for n in args.streams:
                    streams = asyncio.run(run_streams(port, samples, n, piece, args.chunk_size))
                    latencies = np.array([x for s in streams for x in s["latencies"]])
                    delays = np.array([s["final_delay"] for s in streams])
                    row = {"streams": n,
                           "partial_p50_ms": float(np.percentile(latencies, 50) * 1e3),
                           "partial_p95_ms": float(np.percentile(latencies, 95) * 1e3),
                           "final_delay_max_s": float(delays.max()),
                           "real_time": bool(delays.max() < args.max_final_delay)}
                    rows.append(row)
                    print(f"{backend}: {n} streams: partial latency p50 "
                          f"{row['partial_p50_ms']:.0f} ms, p95 {row['partial_p95_ms']:.0f} ms; "
                          f"final delay max {row['final_delay_max_s']:.2f} s; "
                          f"{'real time' if row['real_time'] else 'FALLS BEHIND'}", flush=True)
                    if not row["real_time"]:
                        break
            finally:
                process.terminate()
                process.wait(10)
            served = [r["streams"] for r in rows if r["real_time"]]
            results[backend] = {"rows": rows, "max_real_time_streams": max(served, default=0)}
    print(f"\naudio per stream {samples.size / 16000:.1f} s, cores {args.cores}")
    print("| backend | max real-time streams | partial p50 (ms) | partial p95 (ms) |")
    print("|---|---|---|---|")
    for backend, result in results.items():
        best = [r for r in result["rows"] if r["streams"] == result["max_real_time_streams"]]
        p50 = f"{best[0]['partial_p50_ms']:.0f}" if best else "-"
        p95 = f"{best[0]['partial_p95_ms']:.0f}" if best else "-"
        print(f"| {backend} | {result['max_real_time_streams']} | {p50} | {p95} |")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
