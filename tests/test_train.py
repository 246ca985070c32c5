"""train.py end to end on a tiny generated corpus: learning, DDP, resume, errors."""

import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import CPU_TRAIN_ARGS, TINY_MODEL_ARGS, run_script

BATCH_LINE = re.compile(r"epoch (\d+), batch (\d+), loss ([\d.]+), simple_loss ([\d.]+), "
                        r"pruned_loss ([\d.]+), ctc_loss ([\d.]+)")


def train_args(exp_dir: Path, *extra: str) -> list[str]:
    return ["pruned_transducer_stateless4/train.py", "--exp-dir", str(exp_dir),
            "--bpe-model", "data/lang_bpe_100/bpe.model", "--max-duration", "6",
            "--enable-musan", "false", "--valid-interval", "1000", "--valid-wer-utts", "4",
            "--model-warm-step", "5", *CPU_TRAIN_ARGS, *TINY_MODEL_ARGS, *extra]


def batch_losses(log_text: str) -> dict[int, tuple[str, ...]]:
    """batch index -> logged loss strings."""
    return {int(m.group(2)): m.groups()[2:] for m in BATCH_LINE.finditer(log_text)}


def read_logs(exp_dir: Path, pattern: str = "log-train-*") -> str:
    return "".join(p.read_text() for p in sorted((exp_dir / "log").glob(pattern)))


def test_training_lowers_the_loss_and_writes_outputs(trained_exp_dir: Path):
    losses = batch_losses(read_logs(trained_exp_dir))
    assert len(losses) >= 4, losses
    first, last = losses[min(losses)], losses[max(losses)]
    # simple loss has the same meaning at every step (the total's weights change in warm-up)
    assert float(last[1]) < 0.8 * float(first[1]), (first, last)
    assert (trained_exp_dir / "epoch-1.pt").is_file() and (trained_exp_dir / "epoch-2.pt").is_file()
    assert list(trained_exp_dir.glob("checkpoint-*.pt"))
    assert list((trained_exp_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert "greedy WER" in read_logs(trained_exp_dir)
    checkpoint = torch.load(trained_exp_dir / "epoch-2.pt", weights_only=False)
    assert checkpoint["params"]["encoder_dim"] == 64  # model options travel with the model
    assert checkpoint["model_avg"] is not None and checkpoint["sampler"] is not None


def test_ddp_world_size_2_keeps_replicas_identical(prepared_dir: Path, monkeypatch):
    monkeypatch.chdir(prepared_dir)
    exp_dir = prepared_dir / "exp/ddp"
    result = run_script(train_args(exp_dir, "--world-size", "2", "--num-epochs", "1",
                                   "--master-port", "29517"), prepared_dir, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    checksums = re.findall(r"rank (\d) final parameter checksum (\S+)", read_logs(exp_dir))
    assert sorted(rank for rank, _ in checksums) == ["0", "1"], checksums
    assert checksums[0][1] == checksums[1][1]
    assert (exp_dir / "epoch-1.pt").is_file()


def test_ddp_max_train_minutes_stops_every_rank_at_the_same_batch(prepared_dir: Path,
                                                                  monkeypatch):
    """Each rank times its own steps; a rank that stopped alone would leave the
    other waiting in the gradient all-reduce until the timeout."""
    monkeypatch.chdir(prepared_dir)
    exp_dir = prepared_dir / "exp/ddp-time"
    # The time-tied learning-rate decay must use the ranks' shared clock too, or
    # the replicas' weights drift apart.
    result = run_script(train_args(exp_dir, "--world-size", "2", "--num-epochs", "5",
                                   "--max-train-minutes", "0.01", "--lr-decay-fraction", "0.5",
                                   "--master-port", "29519"),
                        prepared_dir, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = read_logs(exp_dir)
    stops = re.findall(r"--max-train-minutes 0.01 reached at batch (\d+)", logs)
    assert len(stops) == 2 and stops[0] == stops[1], stops
    checksums = re.findall(r"rank (\d) final parameter checksum (\S+)", logs)
    assert len(checksums) == 2 and checksums[0][1] == checksums[1][1], checksums


def test_resume_from_checkpoint_reproduces_the_next_losses(prepared_dir: Path, monkeypatch):
    monkeypatch.chdir(prepared_dir)
    full_dir = prepared_dir / "exp/resume-full"
    result = run_script(train_args(full_dir, "--num-epochs", "1", "--save-every-n", "4",
                                   "--keep-last-k", "0", "--log-interval", "1"), prepared_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    full_losses = batch_losses(read_logs(full_dir))
    assert max(full_losses) >= 8, full_losses

    resumed_dir = prepared_dir / "exp/resume-part"
    resumed_dir.mkdir(parents=True)
    shutil.copy(full_dir / "checkpoint-4.pt", resumed_dir / "checkpoint-4.pt")
    result = run_script(train_args(resumed_dir, "--num-epochs", "1", "--start-batch", "4",
                                   "--log-interval", "1"), prepared_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed_losses = batch_losses(read_logs(resumed_dir))
    assert min(resumed_losses) == 5
    assert resumed_losses == {b: v for b, v in full_losses.items() if b >= 5}


def test_bad_checkpoint_and_options_give_one_line_errors(prepared_dir: Path, tmp_path: Path):
    result = run_script(train_args(tmp_path, "--start-batch", "999"), prepared_dir)
    assert result.returncode == 1
    assert "checkpoint-999.pt does not exist" in result.stderr
    assert "Traceback" not in result.stderr

    (tmp_path / "epoch-1.pt").write_bytes(b"garbage")
    result = run_script(train_args(tmp_path, "--start-epoch", "2"), prepared_dir)
    assert result.returncode == 1 and "unreadable" in result.stderr
    assert "Traceback" not in result.stderr

    result = run_script(train_args(tmp_path, "--use-fp16", "maybe"), prepared_dir)
    assert result.returncode == 2 and "expected a boolean" in result.stderr

    result = run_script(train_args(tmp_path, "--lr-decay-fraction", "0.3"), prepared_dir)
    assert result.returncode == 2
    assert "needs --max-train-batches or --max-train-minutes" in result.stderr


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_loss_skips_the_batch_without_touching_weights(
    prepared_dir: Path, monkeypatch, bad_value: float
):
    """A batch whose features are non-finite gives a non-finite loss: train.py
    must log it and leave every weight as it was."""
    monkeypatch.chdir(prepared_dir)
    import sentencepiece as spm
    from lhotse import load_manifest
    from lhotse.dataset import K2SpeechRecognitionDataset

    from pruned_transducer_stateless4 import training
    from pruned_transducer_stateless4.model_config import get_transducer_model
    from shared.optim import Eden, Eve
    from tests.helpers import training_params

    params = training_params(train_args(prepared_dir / "exp/nan")[1:])
    sp = spm.SentencePieceProcessor(model_file=str(params.bpe_model))
    params.vocab_size = sp.get_piece_size()
    model = get_transducer_model(params)
    optimizer = Eve(model.parameters(), lr=1e-3)
    scheduler = Eden(optimizer, 100, 1)
    cuts = load_manifest("data/fbank/librispeech_cuts_dev-clean.jsonl.gz").subset(first=2)
    batch = K2SpeechRecognitionDataset(return_cuts=True)[cuts]
    batch["inputs"][0, 5] = bad_value
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    class OneBatchLoader(list):
        sampler = None

    with monkeypatch.context():
        logged = []
        monkeypatch.setattr(training.logging, "warning", lambda msg: logged.append(msg))
        training.train_one_epoch(
            params, model, None, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False),
            sp, OneBatchLoader([batch]), [], [], torch.device("cpu"), None, 0, 1, 1.0, None,
        )
    assert any("non-finite loss" in message for message in logged), logged
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


def test_loss_scales_follow_icefall_stateless4():
    """Simple loss scale fixed; pruned loss 0 before --model-warm-step, 0.1
    strictly between one and two times it, 1 from there (and at exactly 1,
    as icefall's condition has it); the encoder's warmup is batch / warm."""
    from pruned_transducer_stateless4 import training

    params = training.get_params()
    params.update(simple_loss_scale=0.5, model_warm_step=100)
    expected = {0: 0.0, 50: 0.0, 99: 0.0, 100: 1.0, 101: 0.1, 150: 0.1, 199: 0.1, 200: 1.0,
                5000: 1.0}
    for batch, pruned_scale in expected.items():
        params.batch_idx_train = batch
        assert training.loss_scales(params) == (0.5, pruned_scale), batch
        assert training.warmup_value(params) == batch / 100
