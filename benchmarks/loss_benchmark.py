#!/usr/bin/env python3
"""Time and memory of the recipe's pruned RNN-T loss path versus the full loss.

Paths (forward + backward, through ``shared.rnnt_loss``):

``recipe``
    what ``pruned_transducer_stateless4/model.py`` does: smoothed simple loss
    on ``Linear(D->V)`` projections of encoder and decoder outputs
    (``return_grad=True``), prune ranges, ``do_rnnt_pruning`` of the joiner's
    input projections, joiner ``Linear(J->V)(tanh(am + lm))`` on the pruned
    ``[B, T, s_range, J]`` grid, pruned loss; ``0.5 * simple + pruned``.
``full``
    the same joiner on the full ``[B, T, S + 1, J]`` grid and the full
    (unpruned) ``rnnt_loss`` (fast_rnnt's, as k2 users know it).
``recursion``
    the backend's part alone: ``mutual_information_recursion`` (forward and
    backward) on random ``px [B, S, T + 1]``, ``py [B, S + 1, T]`` log-probs.
``torchaudio_full``
    the same full grid and ``torchaudio.functional.rnnt_loss`` (only where
    torchaudio imports, e.g. the GPU image; independent of ``--rnnt-backend``).
``full_fused``
    the same full grid, its arc log-probs computed the way the recipe's pruned
    loss computes them (``shared.rnnt_loss.get_rnnt_logprobs_pruned``, one
    ``log_softmax`` and one ``gather``; with every frame's range covering all
    ``S + 1`` nodes the pruned loss is the full loss). It shows how much of the
    recipe's lead over ``full`` comes from pruning and how much from that
    cheaper log-prob computation, which the full loss could use too.

Each path runs once per backend of ``--rnnt-backend`` (a comma-separated list of
``shared.rnnt_loss`` backends; ``auto`` is resolved for the device and printed).  The
ratio columns compare each row with fast_rnnt's ``full`` row (the anchor; else the
first ``full`` row).  **Triton on the CPU runs in Triton's interpreter
(``TRITON_INTERPRET=1``, set for its worker): its time is a correctness run, not a
speed figure.**

Each (backend, path) runs in a fresh subprocess so that its peak resident set size
(``getrusage(RUSAGE_SELF).ru_maxrss``) is its own; the table reports the
absolute peak and the peak minus the RSS after building inputs and modules
(i.e. what the loss computation itself added).  "CPU ms" is the process CPU
time per iteration (all threads); when other jobs share the cores, wall time
inflates much more than CPU time, so compare both.

With ``--device cuda`` the tensors and modules live on the GPU, times are
taken after ``torch.cuda.synchronize()``, and the memory columns are CUDA
memory instead of RSS: the peak of ``torch.cuda.max_memory_allocated`` and
that peak minus what was allocated after building inputs and modules.

Usage::

    python benchmarks/loss_benchmark.py                    # auto backend, defaults
    python benchmarks/loss_benchmark.py --rnnt-backend fast_rnnt,torch --paths recipe,full
    python benchmarks/loss_benchmark.py --rnnt-backend triton --num-iters 1  # interpreter
    python benchmarks/loss_benchmark.py --rounds 3   # best of 3 on a busy machine
    python benchmarks/loss_benchmark.py --device cuda --batch-size 32   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from shared.utils import HelpFormatter

PATHS = ("recipe", "full", "full_fused", "recursion", "torchaudio_full")
BACKENDS = ("auto", "fast_rnnt", "triton", "torch", "reference")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=8, help="B")
    parser.add_argument("--num-frames", type=int, default=150, help="T (max frames)")
    parser.add_argument("--num-symbols", type=int, default=40, help="S (max labels)")
    parser.add_argument("--vocab-size", type=int, default=500, help="V, incl. blank")
    parser.add_argument("--encoder-dim", type=int, default=256, help="D (encoder/decoder)")
    parser.add_argument("--joiner-dim", type=int, default=256, help="J (joiner hidden)")
    parser.add_argument("--prune-range", type=int, default=5, help="s_range")
    parser.add_argument("--lm-scale", type=float, default=0.25, help="lm_only_scale")
    parser.add_argument("--am-scale", type=float, default=0.0, help="am_only_scale")
    parser.add_argument(
        "--min-length-ratio", type=float, default=0.75,
        help="other utterances get T_b, S_b uniform in [ratio * max, max]; the first is full",
    )
    parser.add_argument("--num-iters", type=int, default=5, help="timed iterations (median)")
    parser.add_argument("--num-warmup", type=int, default=1, help="untimed iterations")
    parser.add_argument("--num-threads", "--threads", dest="num_threads", type=int, default=2,
                        help="torch.set_num_threads")
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="run every path's subprocess this many times, alternating paths, and keep the "
        "fastest median (robust to other load on a shared machine)",
    )
    parser.add_argument(
        "--rnnt-backend", default="auto",
        help=f"comma-separated shared.rnnt_loss backends, one row per backend and path: "
        f"{', '.join(BACKENDS)}",
    )
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset")
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda or cuda:N (memory columns: CUDA memory on a GPU)")
    parser.add_argument("--seed", type=int, default=0,
                        help="torch.manual_seed of the random inputs.")
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-backend", choices=BACKENDS, help=argparse.SUPPRESS)
    return parser


def _max_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(args: argparse.Namespace) -> dict:
    """Run one path in this process and return its measurements."""
    import torch

    torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    from shared import rnnt_loss
    from shared.utils import get_device

    device = get_device(requested=args.device)  # "cuda" -> cuda:0
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)

    rnnt_loss.set_backend(args.worker_backend)
    backend = rnnt_loss.resolve_backend(device)
    B, T, S, V = args.batch_size, args.num_frames, args.num_symbols, args.vocab_size
    D, J = args.encoder_dim, args.joiner_dim

    # Drawn on the CPU (the same numbers on every device), then moved.
    simple_am_proj = torch.nn.Linear(D, V).to(device)
    simple_lm_proj = torch.nn.Linear(D, V).to(device)
    encoder_proj = torch.nn.Linear(D, J).to(device)
    decoder_proj = torch.nn.Linear(D, J).to(device)
    output_linear = torch.nn.Linear(J, V).to(device)

    encoder_out = torch.randn(B, T, D).to(device).requires_grad_()
    decoder_out = torch.randn(B, S + 1, D).to(device).requires_grad_()
    symbols = torch.randint(1, V, (B, S)).to(device)
    boundary = torch.zeros(B, 4, dtype=torch.int64)
    boundary[:, 2] = torch.randint(int(args.min_length_ratio * S), S + 1, (B,))
    boundary[:, 3] = torch.randint(int(args.min_length_ratio * T), T + 1, (B,))
    boundary[0, 2:] = torch.tensor([S, T])
    boundary = boundary.to(device)
    parameters = [
        p
        for m in (simple_am_proj, simple_lm_proj, encoder_proj, decoder_proj, output_linear)
        for p in m.parameters()
    ]

    def recipe_step() -> torch.Tensor:
        simple_loss, (px_grad, py_grad) = rnnt_loss.rnnt_loss_smoothed(
            lm=simple_lm_proj(decoder_out),
            am=simple_am_proj(encoder_out),
            symbols=symbols,
            termination_symbol=0,
            lm_only_scale=args.lm_scale,
            am_only_scale=args.am_scale,
            boundary=boundary,
            reduction="sum",
            return_grad=True,
        )
        ranges = rnnt_loss.get_rnnt_prune_ranges(px_grad, py_grad, boundary, args.prune_range)
        am_pruned, lm_pruned = rnnt_loss.do_rnnt_pruning(
            am=encoder_proj(encoder_out), lm=decoder_proj(decoder_out), ranges=ranges
        )
        logits = output_linear(torch.tanh(am_pruned + lm_pruned))
        pruned_loss = rnnt_loss.rnnt_loss_pruned(
            logits, symbols, ranges, 0, boundary, reduction="sum"
        )
        return 0.5 * simple_loss + pruned_loss

    def full_step() -> torch.Tensor:
        am = encoder_proj(encoder_out).unsqueeze(2)  # [B, T, 1, J]
        lm = decoder_proj(decoder_out).unsqueeze(1)  # [B, 1, S+1, J]
        logits = output_linear(torch.tanh(am + lm))  # [B, T, S+1, V]
        return rnnt_loss.rnnt_loss(logits, symbols, 0, boundary, reduction="sum")

    def full_fused_step() -> torch.Tensor:
        am = encoder_proj(encoder_out).unsqueeze(2)  # [B, T, 1, J]
        lm = decoder_proj(decoder_out).unsqueeze(1)  # [B, 1, S+1, J]
        logits = output_linear(torch.tanh(am + lm))  # [B, T, S+1, V]
        every_node = torch.arange(S + 1, device=device).expand(B, T, S + 1)
        return rnnt_loss.rnnt_loss_pruned(logits, symbols, every_node, 0, boundary, reduction="sum")

    px_leaf = torch.randn(B, S, T + 1).log_softmax(dim=1).to(device).requires_grad_()
    py_leaf = torch.randn(B, S + 1, T).log_softmax(dim=1).to(device).requires_grad_()

    def recursion_step() -> torch.Tensor:
        return -rnnt_loss.mutual_information_recursion(px_leaf, py_leaf, boundary).sum()

    def torchaudio_full_step() -> torch.Tensor:
        import torchaudio

        am = encoder_proj(encoder_out).unsqueeze(2)  # [B, T, 1, J]
        lm = decoder_proj(decoder_out).unsqueeze(1)  # [B, 1, S+1, J]
        logits = output_linear(torch.tanh(am + lm))  # [B, T, S+1, V]
        return torchaudio.functional.rnnt_loss(
            logits, symbols.int(), boundary[:, 3].int(), boundary[:, 2].int(), blank=0,
            reduction="sum",
        )

    step = {"recipe": recipe_step, "full": full_step, "full_fused": full_fused_step,
            "recursion": recursion_step, "torchaudio_full": torchaudio_full_step}[args.worker]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        rss_before_mb = torch.cuda.memory_allocated(device) / 2**20
    else:
        rss_before_mb = _max_rss_mb()
    times_ms, cpu_times_ms = [], []
    for i in range(args.num_warmup + args.num_iters):
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = step()
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        elapsed_ms = (time.perf_counter() - start) * 1000
        cpu_ms = (time.process_time() - cpu_start) * 1000
        for tensor in [encoder_out, decoder_out, px_leaf, py_leaf, *parameters]:
            tensor.grad = None
        if i >= args.num_warmup:
            times_ms.append(elapsed_ms)
            cpu_times_ms.append(cpu_ms)
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _max_rss_mb()
    return {
        "path": args.worker,
        "backend": "torchaudio" if args.worker == "torchaudio_full" else backend,
        "median_ms": statistics.median(times_ms),
        "median_cpu_ms": statistics.median(cpu_times_ms),
        "peak_rss_mb": peak_mb,
        "delta_rss_mb": peak_mb - rss_before_mb,
        "loss": float(loss),
    }


def run_in_subprocess(args: argparse.Namespace, path: str, backend: str) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", path,
            "--worker-backend", backend]
    for name, value in vars(args).items():
        if name not in ("worker", "worker_backend", "paths", "rounds", "rnnt_backend"):
            argv += [f"--{name.replace('_', '-')}", str(value)]
    env = dict(os.environ)
    env.pop("RNNT_LOSS_BACKEND", None)
    if backend == "triton" and not args.device.startswith("cuda"):
        env["TRITON_INTERPRET"] = "1"  # the only way Triton runs on a CPU
    # Make `import shared` work even without the editable install.
    repo_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, env.get("PYTHONPATH")]))
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"worker for {path!r} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def format_table(results: list[dict], memory: str = "RSS") -> str:
    full_rows = [r for r in results if r["path"] == "full"]
    full = next((r for r in full_rows if r["backend"] == "fast_rnnt"), None) or next(
        iter(full_rows), None
    )
    full_fused = next((r for r in results if r["path"] == "full_fused"), None)

    def ratio(baseline: dict | None, key: str, r: dict, digits: int) -> str:
        return "-" if baseline is None else f"{baseline[key] / max(r[key], 1e-9):.{digits}f}x"

    lines = [
        f"| path | backend | median ms | CPU ms | peak {memory} MB | {memory} added MB "
        f"| speed-up vs full | speed-up vs full_fused | peak {memory} ratio (full/this) "
        f"| {memory}-added ratio (full/this) | loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratios = [
            ratio(full, "median_ms", r, 1),
            ratio(full_fused, "median_ms", r, 1),
            ratio(full, "peak_rss_mb", r, 2),
            ratio(full, "delta_rss_mb", r, 1),
        ]
        lines.append(
            f"| {r['path']} | {r['backend']} | {r['median_ms']:.1f} | {r['median_cpu_ms']:.0f} "
            f"| {r['peak_rss_mb']:.0f} "
            f"| {r['delta_rss_mb']:.0f} | " + " | ".join(ratios) + f" | {r['loss']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = get_parser().parse_args()
    if args.worker is not None:
        print(json.dumps(run_worker(args)))
        return

    paths = [p for p in args.paths.split(",") if p]
    unknown = set(paths) - set(PATHS)
    if unknown:
        raise SystemExit(f"unknown paths {sorted(unknown)}; choose from {PATHS}")
    backends = [b for b in args.rnnt_backend.split(",") if b]
    if not backends or set(backends) - set(BACKENDS):
        raise SystemExit(f"--rnnt-backend {args.rnnt_backend!r}: choose from {BACKENDS}")
    if "torchaudio_full" in paths:
        try:
            import torchaudio  # noqa: F401
        except ImportError as error:
            print(f"torchaudio_full skipped: torchaudio does not import ({error})")
            paths.remove("torchaudio_full")
    # torchaudio's row does not depend on the backend: measure it once.
    runs = [(p, b) for b in backends for p in paths if p != "torchaudio_full"]
    runs += [("torchaudio_full", backends[0])] if "torchaudio_full" in paths else []
    print(
        f"backends={','.join(backends)} B={args.batch_size} T={args.num_frames} "
        f"S={args.num_symbols} V={args.vocab_size} D={args.encoder_dim} J={args.joiner_dim} "
        f"s_range={args.prune_range} lm_scale={args.lm_scale} am_scale={args.am_scale} "
        f"device={args.device} threads={args.num_threads} "
        f"median of {args.num_iters} (+{args.num_warmup} warm-up), "
        f"forward+backward, one subprocess per path, best of {args.rounds} round(s)"
    )
    best: dict[tuple[str, str], dict] = {}
    failed: dict[tuple[str, str], str] = {}
    for _ in range(args.rounds):
        for run in runs:
            if run in failed:
                continue
            try:
                result = run_in_subprocess(args, *run)
            except RuntimeError as error:
                # One backend that cannot run (e.g. fast_rnnt without CUDA kernels) must
                # not hide the others' rows.
                failed[run] = str(error).strip().splitlines()[-1]
                continue
            if run not in best or result["median_ms"] < best[run]["median_ms"]:
                best[run] = result
    memory = "CUDA" if args.device.startswith("cuda") else "RSS"
    print(format_table([best[run] for run in runs if run in best], memory))
    for (path, backend), reason in failed.items():
        print(f"FAILED: path {path}, backend {backend}: {reason}")
    if not args.device.startswith("cuda") and any(r["backend"] == "triton" for r in best.values()):
        print("triton rows on the CPU ran in Triton's interpreter: not a speed figure")
    print(f"load average after the run: {os.getloadavg()[0]:.2f} (the machine has "
          f"{os.cpu_count()} cores)")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
