"""The steps of the GPU check (tools/gpu_check.py runs them in order and
prints the report): each RNN-T loss backend against the reference, learning in
float32 and float16, training under torchrun, decoding, streaming, export,
pretrained.py, the loss benchmark and the cuda-marked tests.

Each step takes the check's parsed options (tools/gpu_check.py get_parser) and
returns a short note for the report, or raises (CheckFailed when what it checks
does not hold). Scripts run as processes, or in-process through their main()
loaded from their file, so the device guard can wrap their functions.
"""

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

# The method lists are the scripts' own, so the check covers whatever they offer.
from pruned_transducer_stateless4.decoding_methods import methods
from shared.utils import load_script

PROJECT_DIR = Path(__file__).resolve().parent.parent
SCRIPTS_DIR = PROJECT_DIR / "pruned_transducer_stateless4"

# A tiny streaming model (train.py's defaults are icefall's non-streaming
# 12 x 512): the check decodes in simulated and real streaming and exports ONNX.
TINY_MODEL_ARGS = [
    "--num-encoder-layers", "2", "--encoder-dim", "64", "--nhead", "2",
    "--dim-feedforward", "128", "--cnn-module-kernel", "7", "--decoder-dim", "64",
    "--joiner-dim", "64", "--causal-convolution", "true", "--dynamic-chunk-training", "true",
]


class Report:
    """Step results, printed as a summary at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, float, str]] = []

    def run(self, name: str, function, *args) -> object:
        print(f"\n=== gpu_check: {name}", flush=True)
        start = time.time()
        try:
            result = function(*args)
        except BaseException as error:  # a failed step must not hide the others
            if isinstance(error, KeyboardInterrupt):
                raise
            seconds = time.time() - start
            message = str(error).strip().splitlines()[-1] if str(error).strip() else ""
            self.rows.append((name, "FAIL", seconds, f"{type(error).__name__}: {message}"))
            print(f"=== gpu_check: {name} FAIL after {seconds:.1f} s: {error!r}", flush=True)
            return None
        seconds = time.time() - start
        self.rows.append((name, "ok", seconds, str(result or "")))
        print(f"=== gpu_check: {name} ok in {seconds:.1f} s {result or ''}", flush=True)
        return result

    def print(self) -> bool:
        print("\n| step | result | seconds | notes |\n|---|---|---|---|")
        for name, status, seconds, note in self.rows:
            print(f"| {name} | {status} | {seconds:.1f} | {note} |")
        return all(status == "ok" for _, status, _, _ in self.rows)


class CheckFailed(RuntimeError):
    """A step ran but what it checks does not hold."""


# ------------------------------------------------------------ loss backends --
def loss_backend_inputs(device: torch.device) -> dict[str, Any]:
    """A small RNN-T problem on `device`: two sequences of different lengths.

    am (2, 24, 16), lm (2, 6, 16), full-loss logits (2, 24, 6, 16), symbols (2, 5)
    and boundary (2, 4); the float tensors are leaves that require grad.
    """
    generator = torch.Generator().manual_seed(0)
    batch, frames, num_symbols, vocab = 2, 24, 5, 16

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device).requires_grad_()

    return {
        "am": leaf(batch, frames, vocab),
        "lm": leaf(batch, num_symbols + 1, vocab),
        "logits": leaf(batch, frames, num_symbols + 1, vocab),
        "symbols": torch.randint(1, vocab, (batch, num_symbols), generator=generator).to(device),
        "boundary": torch.tensor([[0, 0, num_symbols, frames],
                                  [0, 0, num_symbols - 2, frames - 5]], device=device),
    }


def loss_backend_outputs(backend: str, device: torch.device) -> dict[str, torch.Tensor]:
    """The recipe's three losses (smoothed simple, pruned, full) per sequence,
    the prune ranges and the gradients of their sum, computed by `backend`."""
    from shared import rnnt_loss

    rnnt_loss.set_backend(backend)
    used = rnnt_loss.resolve_backend(device)  # raises if it cannot run here
    if used != backend:
        raise CheckFailed(f"backend {backend} resolves to {used} on {device}")
    x = loss_backend_inputs(device)
    simple, (px_grad, py_grad) = rnnt_loss.rnnt_loss_smoothed(
        lm=x["lm"], am=x["am"], symbols=x["symbols"], termination_symbol=0,
        lm_only_scale=0.25, am_only_scale=0.0, boundary=x["boundary"], reduction="none",
        return_grad=True)
    ranges = rnnt_loss.get_rnnt_prune_ranges(px_grad=px_grad, py_grad=py_grad,
                                             boundary=x["boundary"], s_range=3)
    am_pruned, lm_pruned = rnnt_loss.do_rnnt_pruning(am=x["am"], lm=x["lm"], ranges=ranges)
    pruned = rnnt_loss.rnnt_loss_pruned(
        logits=(am_pruned + lm_pruned).log_softmax(-1), symbols=x["symbols"], ranges=ranges,
        termination_symbol=0, boundary=x["boundary"], reduction="none")
    full = rnnt_loss.rnnt_loss(logits=x["logits"], symbols=x["symbols"], termination_symbol=0,
                               boundary=x["boundary"], reduction="none")
    (simple.sum() + pruned.sum() + full.sum()).backward()
    return {"simple": simple.detach(), "pruned": pruned.detach(), "full": full.detach(),
            "ranges": ranges, "am.grad": x["am"].grad, "lm.grad": x["lm"].grad,
            "logits.grad": x["logits"].grad}


def compare_loss_backend(backend: str, device: torch.device) -> str:
    """`backend` against the pure-PyTorch reference on the same device: equal
    prune ranges, losses and gradients within float32 rounding."""
    from shared import rnnt_loss

    requested = rnnt_loss.BACKEND
    try:
        expected = loss_backend_outputs("reference", device)
        got = loss_backend_outputs(backend, device)
    finally:
        rnnt_loss.set_backend(requested)
    worst = 0.0
    mismatches = []
    for name, reference in expected.items():
        value = got[name]
        if value.device != reference.device:
            mismatches.append(f"{name} on {value.device}, not {reference.device}")
        elif name == "ranges":
            if not torch.equal(value, reference):
                mismatches.append("prune ranges differ")
        elif not torch.isfinite(value).all():
            mismatches.append(f"{name} not finite")
        else:
            error = float((value - reference).abs().max() / (reference.abs().max() + 1e-6))
            worst = max(worst, error)
            if not torch.allclose(value, reference, rtol=1e-4, atol=1e-4):
                mismatches.append(f"{name} off by {error:.1e} (relative to its largest)")
    if mismatches:
        raise CheckFailed("; ".join(mismatches))
    return (f"simple/pruned/full loss and gradients = reference on {device} "
            f"(largest relative difference {worst:.1e})")


# ---------------------------------------------------------------- learning --
def fixed_batches(args: argparse.Namespace) -> list[dict[str, Any]]:
    """--learn-batches batches of at least --learn-batch-seconds of audio each,
    the first training cuts of 1-20 s (train.py's duration filter), in a fixed order."""
    from lhotse import load_manifest
    from lhotse.dataset import K2SpeechRecognitionDataset

    cuts = load_manifest(Path("data/fbank/librispeech_cuts_train-clean-100.jsonl.gz"))
    dataset = K2SpeechRecognitionDataset(return_cuts=True)
    batches, current, seconds = [], [], 0.0
    for cut in cuts:
        if not 1.0 <= cut.duration <= 20.0:
            continue
        current.append(cut)
        seconds += cut.duration
        if seconds >= args.learn_batch_seconds:
            batches.append(dataset[cuts.subset(cut_ids=[c.id for c in current])])
            current, seconds = [], 0.0
            if len(batches) == args.learn_batches:
                return batches
    raise CheckFailed(f"the training cuts hold fewer than {args.learn_batches} batches of "
                      f"{args.learn_batch_seconds:g} s")


def learning_failures(
    loss_before: float, loss_after: float, unchanged: list[str], nonfinite_grads: int,
    scale: float | None, max_ratio: float,
) -> list[str]:
    """What a learn step found wrong (empty: it learned)."""
    failures = []
    if unchanged:
        failures.append(f"{len(unchanged)} parameters never changed ({', '.join(unchanged[:3])}"
                        f"{', ...' if len(unchanged) > 3 else ''})")
    if nonfinite_grads:
        failures.append(f"{nonfinite_grads} non-finite parameter gradients")
    if scale is not None and not scale >= 1.0:
        failures.append(f"grad scale fell to {scale:g}")
    if not (math.isfinite(loss_after) and loss_after < max_ratio * loss_before):
        failures.append(f"loss on the fixed batches {loss_before:.3f} -> {loss_after:.3f}, "
                        f"not below {max_ratio:g}x")
    return failures


def learn(args: argparse.Namespace, dtype_name: str) -> str:
    """Trains the recipe's model (TINY_MODEL_ARGS) with train.py's own
    train_one_epoch for --learn-steps steps over the same fixed batches, in
    float32 or under float16 autocast with its GradScaler, and checks that it
    learned (`learning_failures`)."""
    import sentencepiece as spm

    from pruned_transducer_stateless4 import training
    from pruned_transducer_stateless4.model_config import get_transducer_model
    from shared.optim import Eden, Eve

    device = torch.device(args.device)
    exp_dir = args.exp_dir / f"learn-{dtype_name}"
    argv = ["--exp-dir", str(exp_dir), "--bpe-model", str(args.lang_dir / "bpe.model"),
            "--initial-lr", str(args.learn_lr), "--model-warm-step", "1",
            "--valid-interval", "100000", "--log-interval", "10", "--save-every-n", "0",
            "--use-fp16", str(dtype_name != "float32"), *TINY_MODEL_ARGS]
    # --amp-dtype float16: float16 (and its GradScaler) on a CPU too, for the dry-run.
    if dtype_name == "float16":
        argv += ["--amp-dtype", "float16"]
    params = training.params_from_command_line(argv)
    sp = spm.SentencePieceProcessor(model_file=str(params.bpe_model))
    params.blank_id, params.vocab_size = sp.piece_to_id("<blk>"), sp.get_piece_size()
    exp_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    model = get_transducer_model(params).to(device)
    optimizer = Eve(model.parameters(), lr=params.initial_lr)
    scheduler = Eden(optimizer, params.lr_batches, params.lr_epochs)
    grad_scaler = training.make_grad_scaler(params, device)
    autocast_dtype = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(
        training.amp_dtype(params, device), "float32")
    if autocast_dtype != dtype_name:
        raise CheckFailed(f"train.py trains in {autocast_dtype} here, not {dtype_name}")
    batches = fixed_batches(args)

    def loss_on_fixed_batches() -> float:
        """Per-frame simple + pruned loss, eval mode (no dropout, no chunk draw)."""
        model.eval()
        totals = [0.0, 0.0]
        with torch.no_grad():
            for batch in batches:
                _, stats = training.compute_loss(params, model, sp, batch, device)
                totals[0] += stats["simple_loss"] + stats["pruned_loss"]
                totals[1] += stats["frames"]
        model.train()
        return totals[0] / totals[1]

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss_before = loss_on_fixed_batches()
    # Counted on the device, read once at the end (no sync per gradient).
    nonfinite = torch.zeros((), dtype=torch.int64, device=device)

    def count_nonfinite(parameter: torch.Tensor) -> None:
        nonlocal nonfinite
        nonfinite = nonfinite + (~torch.isfinite(parameter.grad)).any()

    hooks = [p.register_post_accumulate_grad_hook(count_nonfinite) for p in model.parameters()]

    class FixedLoader(list):
        sampler = None

    loader = FixedLoader(batches[i % len(batches)] for i in range(args.learn_steps))
    scale_start = grad_scaler.get_scale() if grad_scaler.is_enabled() else None
    start = time.time()
    try:
        training.train_one_epoch(
            params=params, model=model, model_avg=None, optimizer=optimizer,
            scheduler=scheduler, grad_scaler=grad_scaler, sp=sp, train_dl=loader,
            valid_dl=[], wer_dl=[], device=device, tb_writer=None, rank=0, world_size=1,
            epoch_audio_seconds=1.0, rng_state=None)
    finally:
        for hook in hooks:
            hook.remove()
    seconds = time.time() - start
    loss_after = loss_on_fixed_batches()
    unchanged = [name for name, p in model.named_parameters()
                 if torch.equal(p.detach(), before[name])]
    scale = grad_scaler.get_scale() if grad_scaler.is_enabled() else None
    failures = learning_failures(loss_before, loss_after, unchanged, int(nonfinite),
                                 scale, args.learn_max_ratio)
    summary = (f"{args.learn_steps} steps on {len(batches)} batches of "
               f">= {args.learn_batch_seconds:g} s in {seconds:.1f} s: loss {loss_before:.3f} -> "
               f"{loss_after:.3f}, {len(before) - len(unchanged)}/{len(before)} parameters "
               f"changed, {int(nonfinite)} non-finite gradients"
               + (f", grad scale {scale_start:g} -> {scale:g}" if scale is not None else ""))
    print(summary, flush=True)
    if failures:
        raise CheckFailed("; ".join(failures))
    return summary


def train(args: argparse.Namespace) -> str:
    """torchrun with one process, --use-fp16 1, past --average-period."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
        "--nproc-per-node", "1", str(PROJECT_DIR / "pruned_transducer_stateless4/train.py"),
        "--exp-dir", str(args.exp_dir), "--bpe-model", str(args.lang_dir / "bpe.model"),
        "--num-epochs", str(args.num_epochs), "--max-duration", str(args.max_duration),
        "--num-buckets", "5", "--num-workers", "0", "--use-fp16", "1",
        "--average-period", str(args.average_period), "--save-every-n", "0",
        "--valid-interval", "100000", "--valid-wer-utts", "4", "--model-warm-step", "5",
        "--log-interval", "5", "--enable-musan", "false", "--tensorboard", "false",
        *TINY_MODEL_ARGS,
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    sys.stdout.write(result.stdout[-4000:])
    sys.stdout.write(result.stderr[-6000:])
    if result.returncode != 0:
        raise RuntimeError(f"train.py under torchrun exited with {result.returncode}")
    checkpoint = torch.load(args.exp_dir / f"epoch-{args.num_epochs}.pt", map_location="cpu",
                            weights_only=False)
    batches = checkpoint["params"]["batch_idx_train"]
    if batches <= args.average_period:
        raise RuntimeError(f"only {batches} batches: not past --average-period "
                           f"{args.average_period}")
    text = result.stderr + "".join(p.read_text() for p in (args.exp_dir / "log").glob("log-*"))
    device = re.search(r"training on (\S+),", text)
    rates = [float(r) for r in re.findall(r"([\d.]+) s audio/s", text)]
    frames = [float(r) for r in re.findall(r"([\d.]+) frames/s", text)]
    if rates:
        # The first interval holds the start-up (CUDA context, cuDNN autotuning).
        steady = rates[1:] or rates
        print(f"training throughput: {statistics.median(steady):.1f} s of audio per second "
              f"(median of {len(steady)} log intervals, max {max(steady):.1f}), "
              f"{statistics.median(frames[1:] or frames):.0f} feature frames/s, on "
              f"{device.group(1) if device else '?'}", flush=True)
    return (f"{batches} batches on {device.group(1) if device else '?'}, "
            f"{statistics.median(rates[1:] or rates) if rates else 0:.1f} s audio/s")


def load_recipe_script(name: str) -> ModuleType:
    """The recipe script SCRIPTS_DIR/NAME.py loaded from its file, without
    running its command-line block: the steps call its main() in this process,
    so that the device guard can wrap its functions (no library imports a
    script; this tool runs them, as their command line would)."""
    return load_script(SCRIPTS_DIR / f"{name}.py")


def maybe_guard(module, name: str, guard: bool, patches: list) -> None:
    if not guard:
        return
    from shared.device_guard import guarded

    original = getattr(module, name)
    setattr(module, name, guarded(original))
    patches.append((module, name, original))


def decode(args: argparse.Namespace) -> str:
    decode_py = load_recipe_script("decode")
    patches: list = []
    maybe_guard(decode_py, "decode_one_batch", args.guard, patches)
    wers = []
    try:
        for method in methods():
            result = decode_py.main([
                "--exp-dir", str(args.exp_dir), "--epoch", str(args.num_epochs),
                "--avg", str(args.num_epochs - 1), "--use-averaged-model", "true",
                "--decoding-method", method, "--device", args.device,
                "--bpe-model", str(args.lang_dir / "bpe.model"), "--lang-dir",
                str(args.lang_dir), "--test-sets", "test-clean", "--max-duration", "60",
                "--simulate-streaming", "true", "--beam-size", "2", "--max-states", "16",
                "--max-contexts", "4", "--num-paths", "6", "--ngram-lm-scale", "0.3",
                "--num-workers", "0",
            ])
            wers.append(f"{method} {result['test-clean'] * 100:.1f}")
    finally:
        for module, name, original in patches:
            setattr(module, name, original)
    return "WER% " + ", ".join(wers)


def streaming(args: argparse.Namespace) -> str:
    from pruned_transducer_stateless4 import streaming_engine

    streaming_decode = load_recipe_script("streaming_decode")
    patches: list = []
    maybe_guard(streaming_engine, "decode_one_chunk", args.guard, patches)
    maybe_guard(streaming_engine.StreamingSetup, "new_stream", args.guard, patches)
    done = []
    try:
        for method in methods(streaming=True):
            streaming_decode.main([
                "--exp-dir", str(args.exp_dir), "--epoch", str(args.num_epochs), "--avg", "1",
                "--bpe-model", str(args.lang_dir / "bpe.model"), "--decoding-method", method,
                "--device", args.device, "--test-sets", "test-clean",
                "--num-decode-streams", "4", "--simulate-realtime", "false",
                "--beam-size", "2", "--max-states", "16", "--max-contexts", "4",
            ])
            recogs = list((args.exp_dir / "streaming" / method).glob("recogs-test-clean-*"))
            if len(recogs) != 1:
                raise RuntimeError(f"streaming {method} wrote {len(recogs)} recogs files")
            done.append(method)
    finally:
        for module, name, original in patches:
            setattr(module, name, original)
    return ", ".join(done)


def export(args: argparse.Namespace) -> str:
    export_py = load_recipe_script("export")
    written = []
    for extra in ([], ["--jit", "1"], ["--onnx", "1"]):
        paths = export_py.main([
            "--exp-dir", str(args.exp_dir), "--epoch", str(args.num_epochs), "--avg", "1",
            "--bpe-model", str(args.lang_dir / "bpe.model"), "--device", args.device, *extra])
        written += [path.name for path in paths]
    for name in ("pretrained.pt", "cpu_jit.pt"):
        if name == "cpu_jit.pt":
            module = torch.jit.load(str(args.exp_dir / name), map_location="cpu")
            tensors = list(module.state_dict().values())
        else:
            state = torch.load(args.exp_dir / name, map_location=None, weights_only=False)
            tensors = list(state["model"].values())
        devices = {t.device.type for t in tensors}
        if devices != {"cpu"}:
            raise RuntimeError(f"{name} holds tensors on {devices}, not only on the CPU")
    return ", ".join(written)


def pretrained(args: argparse.Namespace) -> str:
    pretrained_py = load_recipe_script("pretrained")
    wav = sorted(Path("download/LibriSpeech/test-clean").rglob("*.flac"))[0]
    patches: list = []
    maybe_guard(pretrained_py, "transcribe", args.guard, patches)
    try:
        for method in methods(graph=(None, "trivial")):  # pretrained.py's choices
            status = pretrained_py.main([
                "--checkpoint", str(args.exp_dir / "pretrained.pt"), "--bpe-model",
                str(args.lang_dir / "bpe.model"), "--method", method, "--device", args.device,
                "--simulate-streaming", "true", str(wav)])
            if status != 0:
                raise RuntimeError(f"pretrained.py {method} exited with {status}")
    finally:
        for module, name, original in patches:
            setattr(module, name, original)
    return wav.name


# benchmarks/loss_benchmark.py's shapes on a GPU: its defaults, and icefall's scale.
LOSS_BENCHMARK_SHAPES = {
    "B=8 T=150 U=40": [],
    "B=32 T=500 U=100": ["--batch-size", "32", "--num-frames", "500", "--num-symbols", "100"],
}


def benchmark_medians(stdout: str) -> dict[tuple[str, str], float]:
    """``{(path, backend): median ms}`` from loss_benchmark.py's table."""
    medians = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) > 2 and cells[0] in ("recursion", "recipe", "full", "torchaudio_full"):
            medians[cells[0], cells[1]] = float(cells[2])
    return medians


def loss_benchmark(args: argparse.Namespace) -> str:
    """On CUDA: each loss backend at both shapes (the recursion alone, the recipe's
    pruned loss, the full loss; torchaudio's where it imports). The goals (Triton's
    recursion within 1.5x of fast_rnnt's, the pruned loss 10x faster than the full
    one at icefall's scale) are reported, not enforced. The CPU dry-run: the auto
    backend at the small shape only (Triton would run in its slow interpreter)."""
    cuda = args.device == "cuda"
    shapes = LOSS_BENCHMARK_SHAPES if cuda else {"dry-run": []}
    notes, failures = [], []
    for shape, shape_args in shapes.items():
        command = [sys.executable, str(PROJECT_DIR / "benchmarks/loss_benchmark.py"),
                   "--device", args.device,
                   "--rnnt-backend", "fast_rnnt,triton,torch" if cuda else "auto",
                   "--paths", "recursion,recipe,full,torchaudio_full" if cuda else "recipe,full",
                   *shape_args, *args.loss_benchmark_args.split()]
        result = subprocess.run(command, capture_output=True, text=True)
        sys.stdout.write(result.stdout)
        if result.returncode != 0:
            sys.stdout.write(result.stderr[-4000:])
            failures += [line for line in result.stdout.splitlines()
                         if line.startswith("FAILED")] or [f"exit status {result.returncode}"]
        ms = benchmark_medians(result.stdout)
        parts = [f"{path} {backend} {value:.1f}" for (path, backend), value in ms.items()]
        if ("recursion", "triton") in ms and ("recursion", "fast_rnnt") in ms:
            ratio = ms["recursion", "triton"] / ms["recursion", "fast_rnnt"]
            parts.append(f"triton/fast_rnnt recursion {ratio:.2f}x (goal <= 1.5x)")
        best_recipe = min((v for (p, _), v in ms.items() if p == "recipe"), default=None)
        best_full = min((v for (p, _), v in ms.items() if p in ("full", "torchaudio_full")),
                        default=None)
        if best_recipe and best_full:
            parts.append(f"full/recipe {best_full / best_recipe:.1f}x (goal >= 10x at icefall's)")
        notes.append(f"{shape}: " + ", ".join(parts) + " (median ms)")
    if failures:
        raise RuntimeError("; ".join(failures + notes))
    return "; ".join(notes)


def cuda_tests(args: argparse.Namespace) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
         str(PROJECT_DIR / "tests/test_averaging.py"), str(PROJECT_DIR / "tests/test_device.py"),
         str(PROJECT_DIR / "tests/test_gpu.py")],
        capture_output=True, text=True, cwd=PROJECT_DIR)
    sys.stdout.write(result.stdout[-4000:])
    # 5: no test collected (none marked cuda ran) is a failure too.
    if result.returncode != 0:
        sys.stdout.write(result.stderr[-3000:])
        raise RuntimeError(f"pytest -m cuda exited with {result.returncode}")
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
