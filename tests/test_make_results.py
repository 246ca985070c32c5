"""make_results.py on a small experiment directory written by the recipe's own writers:
decode.py's and streaming_decode.py's save_results (recogs, errs, wer-summary, latency
json), shared.checkpoint.save_checkpoint with train.py's params, and a tensorboard
SummaryWriter with the tags train.py uses.  No model is trained or run."""

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from pruned_transducer_stateless4 import decode, make_results, streaming_decode, train
from pruned_transducer_stateless4.decode_stream import flush_padding_seconds
from pruned_transducer_stateless4.streaming_decode import UtteranceResult
from shared.checkpoint import save_checkpoint
from shared.utils import AttributeDict
from tests.helpers import PROJECT_DIR, run_script

# Three test-clean utterances, 10 reference words.
REFS = {"1089-134686-0000": "THE CAT SAT", "1089-134686-0001": "ON THE MAT",
        "1089-134686-0002": "A DOG RAN FAST"}
# decode.py --simulate-streaming, greedy: one deletion -> WER 1/10 = 10.00%.
SIMULATED = {"1089-134686-0000": "THE CAT SAT", "1089-134686-0001": "ON THE MAT",
             "1089-134686-0002": "A DOG RAN"}
# streaming_decode.py, greedy: the third transcript differs from the simulated one
# (2 substitutions -> WER 20.00%), so 2 of 3 agree.
REAL = {"1089-134686-0000": "THE CAT SAT", "1089-134686-0001": "ON THE MAT",
        "1089-134686-0002": "A LOG RUN FAST"}
# decode.py modified_beam_search: 3 substitutions -> 30.00%.
BEAM = {"1089-134686-0000": "THE BAT SAT", "1089-134686-0001": "ON A MAT",
        "1089-134686-0002": "A DOG RUN FAST"}

# The not-run row of the WER table, spaces removed.
NOT_RUN_ROW = "|-|sherpa-onnx|notrun|"

MODEL_SELECTION = ["--iter", "1000", "--avg", "2", "--use-averaged-model", "true"]
CHUNK = ["--decode-chunk-size", "16", "--left-context", "64"]


def triples(hyps: dict[str, str]) -> list[tuple[str, str, str]]:
    return [(cut_id, REFS[cut_id], hyp) for cut_id, hyp in hyps.items()]


def write_decode_results(exp_dir: Path, method: str, hyps_by_part: dict[str, dict[str, str]],
                         extra: list[str]) -> None:
    """What decode.py writes for `method`, with its own option parsing and writer."""
    args = decode.get_parser().parse_args(
        [*MODEL_SELECTION, "--exp-dir", str(exp_dir), "--decoding-method", method, *extra])
    params = AttributeDict(vars(args))
    params.res_dir = exp_dir / method
    params.res_dir.mkdir(parents=True, exist_ok=True)
    for part, hyps in hyps_by_part.items():
        decode.save_results(params, part, triples(hyps))


def write_streaming_results(exp_dir: Path, hyps_by_part: dict[str, dict[str, str]],
                            extra: tuple[str, ...] = ()) -> None:
    """What streaming_decode.py writes for greedy search: recogs/errs/wer-summary and
    latency-*.json from its summarize() of planted latencies."""
    args = streaming_decode.get_parser().parse_args(
        [*MODEL_SELECTION, "--exp-dir", str(exp_dir), "--decoding-method", "greedy_search",
         *CHUNK, *extra])
    key, suffix = streaming_decode.result_key(args), streaming_decode.result_suffix(args)
    res_dir = exp_dir / "streaming" / "greedy_search"
    for part, hyps in hyps_by_part.items():
        utterances = [
            # token latencies 200 and 300 ms (mean 250, p95 300), final delays 50/100/150 ms
            UtteranceResult(cut_id=cut_id, ref=REFS[cut_id], tokens=[1, 2], duration=10.0,
                            token_latencies=[0.2, 0.3], frame_latencies=[0.5, 0.6],
                            final_delay=0.05 * (index + 1))
            for index, cut_id in enumerate(hyps)
        ]
        summary = streaming_decode.summarize(utterances, processing_seconds=1.5)  # RTF 0.05
        streaming_decode.save_results(res_dir, part, key, suffix, triples(hyps), summary)


def write_training(exp_dir: Path, monkeypatch: pytest.MonkeyPatch,
                   with_tensorboard: bool = True) -> None:
    """A checkpoint with train.py's params, and what train.py logs and writes to
    tensorboard: validation through its own run_validation (validate() stubbed to
    return planted numbers), the training-progress scalars and log lines as
    train_one_epoch writes them."""
    params = train.get_params()
    params.update(vars(train.get_parser().parse_args(["--exp-dir", str(exp_dir)])))
    params.update(num_params=6_310_000, vocab_size=500)

    log_dir = exp_dir / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "log-train-2026-01-01-00-00-00-rank0"
    # train_one_epoch's progress line, for batches 400 and 800; its tensorboard
    # values below differ (40/42/44 s/s, losses 3.0/2.4/1.6) so that the report
    # shows which source it used.
    progress = ("2026-01-01 00:0{m}:00,000 INFO [train.py:363] epoch 1, batch {b}, loss {loss}, "
                "simple_loss 1.2, pruned_loss 1.3, ctc_loss 1.4, lr 2.94e-03, grad norm 0.35, "
                "{rate} s audio/s, 957 frames/s, epoch ETA 13.4 min\n")
    log_path.write_text("2026-01-01 00:00:01,000 INFO [train.py:532] model: 6.31 M parameters\n"
                        + progress.format(m=1, b=400, loss="2.5000", rate="38.0")
                        + progress.format(m=3, b=800, loss="1.5000", rate="46.0"))

    writer = SummaryWriter(log_dir=str(exp_dir / "tensorboard")) if with_tensorboard else None
    if writer is not None:
        for batch, loss, rate in ((200, 3.0, 40.0), (400, 2.4, 42.0), (800, 1.6, 44.0)):
            writer.add_scalar(make_results.TB_TRAIN_LOSS, loss, batch)
            writer.add_scalar(make_results.TB_AUDIO_RATE, rate, batch)

    handler = logging.FileHandler(log_path)  # appends run_validation's log lines
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        # (batch, seconds of training, valid loss per frame, WER as a fraction)
        for batch, seconds, loss, wer in ((400, 252.0, 2.1, 0.945), (800, 510.0, 1.8, 0.8125)):
            tracker = train.Tracker(frames=100.0, loss=loss * 100.0)
            monkeypatch.setattr(train, "validate", lambda *args, t=tracker, w=wer: (t, w))
            params.update(batch_idx_train=batch, train_seconds=seconds)
            train.run_validation(params, None, None, None, None, torch.device("cpu"), writer,
                                 rank=0, world_size=1)
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)
    if writer is not None:
        writer.close()
    save_checkpoint(exp_dir / "checkpoint-800.pt", torch.nn.Linear(2, 2), params)


def write_run_log(path: Path) -> None:
    """run.sh's progress lines: an earlier invocation that trained, a later one that
    skipped training and decoded."""
    path.write_text(
        "[run.sh 10:00:00, +0s] set-up: checking the environment\n"
        "[run.sh 10:00:05, +5s] train: starting\n"
        "[run.sh 10:30:05, +1805s] train: finished\n"
        "[run.sh 11:00:00, +0s] set-up: checking the environment\n"
        "[run.sh 11:00:01, +1s] train: done before, skipping (exp/.done/train)\n"
        "[run.sh 11:00:01, +1s] decode: starting\n"
        "[run.sh 11:06:01, +361s] decode: finished\n"
    )


@pytest.fixture()
def full_exp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    exp_dir = tmp_path / "exp"
    exp_dir.mkdir()
    write_decode_results(exp_dir, "greedy_search",
                         {"test-clean": SIMULATED, "test-other": REFS},
                         ["--simulate-streaming", "true", *CHUNK])
    write_decode_results(exp_dir, "modified_beam_search", {"test-clean": BEAM},
                         ["--simulate-streaming", "true", *CHUNK, "--beam-size", "4"])
    write_streaming_results(exp_dir, {"test-clean": REAL, "test-other": REFS})
    write_training(exp_dir, monkeypatch)
    write_run_log(exp_dir / "run-sh.log")
    return exp_dir


def table_row(text: str, *needles: str) -> list[str]:
    """The cells of the one markdown table row that contains every needle."""
    rows = [line for line in text.splitlines()
            if line.startswith("|") and all(needle in line for needle in needles)
            and (not needles[0].startswith("| ") or line.startswith(needles[0]))]
    assert len(rows) == 1, (needles, rows)
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def first_cell_row(text: str, first_cell: str) -> list[str]:
    """The cells of the one table row whose first cell is `first_cell`."""
    return table_row(text, f"| {first_cell} |")


def section(text: str, number: int) -> str:
    match = re.search(rf"^## {number}\..*?(?=^## |\Z)", text, re.M | re.S)
    assert match, number
    return match.group(0)


def test_tags_are_train_py_tags() -> None:
    """make_results reads the tags train.py writes (a renamed tag would silently
    empty the training section).  The validation tags are also exercised for real
    by run_validation in write_training; train/loss is written as f"train/{key}"."""
    source = (PROJECT_DIR / "pruned_transducer_stateless4/train.py").read_text()
    for tag in make_results.TB_TAGS:
        prefix, name = tag.split("/")
        assert f'"{tag}"' in source or (f'f"{prefix}/{{key}}"' in source
                                        and f'("{name}", ' in source), tag


def test_full_report(full_exp_dir: Path, capsys) -> None:
    assert make_results.main(["--exp-dir", str(full_exp_dir), "--total-minutes", "42.3",
                              "--run-log", str(full_exp_dir / "run-sh.log")]) == 0
    text = (full_exp_dir / "RESULTS.md").read_text()
    assert capsys.readouterr().out.strip() == text.strip()  # printed as well

    # 1. WER: the planted values, with the settings that reproduce them.
    wer = section(text, 1)
    greedy = table_row(wer, "decode.py", "greedy_search", "simulated streaming")
    assert greedy[-2:] == ["10.00", "0.00"]
    assert "16" in greedy and "64" in greedy and "iter-1000-avg-2, averaged" in greedy
    assert table_row(wer, "modified_beam_search")[-2:] == ["30.00", "-"]
    assert table_row(wer, "streaming_decode.py", "real streaming")[-2:] == ["20.00", "0.00"]
    assert NOT_RUN_ROW in wer.replace(" ", "")  # no sherpa-onnx results
    assert ("decode.py --iter 1000 --avg 2 --use-averaged-model true --exp-dir "
            f"{full_exp_dir} --bpe-model data/lang_bpe_500/bpe.model --decoding-method "
            "modified_beam_search --simulate-streaming true --decode-chunk-size 16 "
            "--left-context 64 --beam-size 4") in wer
    assert "streaming_decode.py --iter 1000 --avg 2 --use-averaged-model true" in wer

    # 2. Agreement: 1 of 3 test-clean transcripts differs, none of test-other.
    agreement = section(text, 2)
    clean = table_row(agreement, "test-clean", "chunk 16")
    assert clean[2:5] == ["2/3", "66.67%", "1"]
    assert table_row(agreement, "test-other", "chunk 16")[2:5] == ["3/3", "100.00%", "0"]
    assert '"A DOG RAN" / real "A LOG RUN FAST"' in agreement
    assert "sherpa-onnx agreement" in agreement and "not run" in agreement

    # 3. RTF 1.5 s / 30 s, token latency mean 250 / p95 300 ms, final delay mean 100 ms.
    latency = section(text, 3)
    row = table_row(latency, "test-clean", "greedy_search")
    assert row[2:10] == ["3", "0.0500", "250.0", "300.0", "550.0", "600.0", "100.0", "145.0"]

    # 4. Training: checkpoint counters; tensorboard values, not the log's; the log's
    # finer validation minutes.
    training = section(text, 4)
    assert table_row(training, "parameters")[1] == "6.31 M"
    assert table_row(training, "training time")[1] == "8.5 min"
    assert table_row(training, "batches")[1] == "800"
    assert table_row(training, "throughput")[1].startswith("42.0 ")
    assert table_row(training, "validation loss, first")[1] == \
        "2.1000 (batch 400) / 1.8000 (batch 800)"
    assert table_row(training, "validation greedy WER")[1] == "94.50% / 81.25%"
    assert first_cell_row(training, "800")[1:] == ["8.5", "1.8000", "81.25"]
    assert "From: checkpoint checkpoint-800.pt, tensorboard, train log." in training
    assert table_row(training, "training loss")[1] == "3.0000 (batch 200) / 1.6000 (batch 800)"

    # 5. Wall time: the value passed and each step's last completed run.
    wall = section(text, 5)
    assert "This run.sh invocation: 42.3 min" in wall
    assert first_cell_row(wall, "train")[1] == "30.0"
    assert first_cell_row(wall, "decode")[1] == "6.0"

    for name in ("loss", "valid_wer", "wer_by_method"):
        png = full_exp_dir / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"(plots/{name}.png)" in text


def test_log_only_and_sherpa(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without tensorboard the train log is used; sherpa-onnx's files (the names and
    keys sherpa_onnx_decode.py writes) are read."""
    exp_dir = tmp_path / "exp"
    exp_dir.mkdir()
    write_training(exp_dir, monkeypatch, with_tensorboard=False)
    sherpa = exp_dir / "sherpa_onnx"
    sherpa.mkdir()
    key = "greedy_search-float"  # a key with a hyphen, as sherpa_onnx_decode.py's
    (sherpa / f"wer-summary-test-clean-{key}.txt").write_text(f"settings\tWER\n{key}\t12.50\n")
    (sherpa / f"rtf-test-clean-{key}.json").write_text(json.dumps(
        {"rtf": 0.0123, "num_utterances": 3, "audio_seconds": 30.0, "processing_seconds": 0.369,
         "num_threads": 1, "model": str(exp_dir / "encoder-epoch-30-avg-9.onnx")}))
    (sherpa / f"log-decode-{key}").write_text(
        "2026-01-01 00:00:00,000 INFO [sherpa_onnx_decode.py:364] sherpa-onnx on "
        "encoder-epoch-30-avg-9.onnx (and decoder, joiner): chunks of 16 frames, 64 frames of "
        "left context, 1 thread(s), 100 streams\n")
    (sherpa / f"agreement-test-clean-{key}.json").write_text(json.dumps(
        {"num_utts": 3, "num_equal": 2, "agreement": 2 / 3,
         "compare_file": str(exp_dir / "streaming/greedy_search/recogs-test-clean-x.txt"),
         "example_differences": [["u1", "A B", "A C"]]}))
    assert make_results.main(["--exp-dir", str(exp_dir), "--quiet", "true"]) == 0
    text = (exp_dir / "RESULTS.md").read_text()

    row = table_row(section(text, 1), "sherpa-onnx", key)
    assert row[4:7] + row[-1:] == ["epoch-30-avg-9", "16", "64", "12.50"]
    assert (f"sherpa_onnx_decode.py --exp-dir {exp_dir} --epoch 30 --avg 9 --int8 false"
            in section(text, 1))
    assert table_row(section(text, 2), "test-clean", f"`{key}`")[2:] == \
        ["3", "2", "66.67%", "recogs-test-clean-x.txt"]
    assert table_row(section(text, 3), "test-clean", f"`{key}`")[2:] == \
        ["0.0123", "3", "30.0", "0.4", "1"]
    training = section(text, 4)
    assert "From: checkpoint checkpoint-800.pt, train log." in training
    assert table_row(training, "throughput")[1].startswith("42.0 ")  # (38 + 46) / 2
    assert table_row(training, "training loss")[1] == "2.5000 (batch 400) / 1.5000 (batch 800)"
    assert table_row(training, "validation greedy WER")[1] == "94.50% / 81.25%"
    assert first_cell_row(training, "400")[1:] == ["4.2", "2.1000", "94.50"]
    assert "not run: pass --total-minutes" in section(text, 5)


def test_empty_exp_dir(tmp_path: Path) -> None:
    """Nothing produced yet: every section says "not run", no plot, no crash."""
    assert make_results.main(["--exp-dir", str(tmp_path), "--quiet", "true"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    for number in range(1, 6):
        assert "not run" in section(text, number), number
    assert not list((tmp_path / "plots").glob("*.png"))
    assert make_results.main(["--exp-dir", str(tmp_path / "missing")]) == 1


def test_help_documents_every_option(tmp_path: Path) -> None:
    for action in make_results.get_parser()._actions:
        assert action.help, action.dest
    result = run_script(["pruned_transducer_stateless4/make_results.py", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--exp-dir", "--total-minutes", "--run-log", "--plots"):
        assert option in result.stdout


def test_corrupt_inputs(tmp_path: Path) -> None:
    """Truncated or foreign files cost their own numbers, never the report."""
    (tmp_path / "checkpoint-5.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events.out.tfevents.1.host.1.0").write_bytes(b"\x00garbage")
    method_dir = tmp_path / "greedy_search"
    method_dir.mkdir()
    (method_dir / "wer-summary-test-clean-greedy_search_max_sym_per_frame_1-epoch-1-avg-1"
     "-streaming-chunk-size-16-left-context-64.txt").write_text("settings\tWER\n")
    streaming_dir = tmp_path / "streaming" / "greedy_search"
    streaming_dir.mkdir(parents=True)
    name = "test-clean-greedy_search-epoch-1-avg-1-streaming-chunk-size-16-left-context-64"
    (streaming_dir / f"wer-summary-{name}.txt").write_text("settings\tWER\ngreedy_search\t5.00\n")
    (streaming_dir / f"latency-{name}.json").write_text("{truncated")
    assert make_results.main(["--exp-dir", str(tmp_path), "--quiet", "true"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert table_row(section(text, 1), "streaming_decode.py")[-1] == "5.00"
    assert "no decode.py --simulate-streaming greedy_search result" in section(text, 2)
    assert table_row(section(text, 3), "test-clean")[2:4] == ["n/a", "n/a"]
    assert "checkpoint-5.pt: unreadable" in section(text, 4)


def test_tail_padded_streaming_is_its_own_row(full_exp_dir: Path) -> None:
    """streaming_decode.py --tail-padding-seconds -1 results (what run.sh runs for
    the sherpa-onnx comparison) get their own WER row and command, and stay out of
    the simulated-vs-real agreement, which they would spoil."""
    write_streaming_results(full_exp_dir, {"test-clean": BEAM},
                            ("--tail-padding-seconds", "-1"))
    assert make_results.main(["--exp-dir", str(full_exp_dir), "--quiet", "true",
                              "--plots", "false"]) == 0
    text = (full_exp_dir / "RESULTS.md").read_text()
    wer = section(text, 1)
    seconds = f"{flush_padding_seconds(16):.2f}"  # 0.76 s for chunks of 16
    padded = table_row(wer, "streaming_decode.py", f"real streaming, {seconds} s tail padding")
    assert padded[-2:] == ["30.00", "-"]
    assert table_row(wer, "streaming_decode.py", "| real streaming |")[-2:] == ["20.00", "0.00"]
    assert f"--left-context 64 --max-sym-per-frame 1 --tail-padding-seconds {seconds}" in wer
    agreement = section(text, 2)
    assert table_row(agreement, "test-clean", "chunk 16")[2:5] == ["2/3", "66.67%", "1"]


@pytest.mark.parametrize("training_speaker, heard", [("1089", "yes"), ("121", "no"), (None, "?")])
def test_wer_per_speaker_marks_speakers_heard_in_training(
    full_exp_dir: Path, monkeypatch: pytest.MonkeyPatch, training_speaker: str | None,
    heard: str,
) -> None:
    """The checkpoint's --manifest-dir is data/fbank (relative): the training cut set
    written there decides "heard in training"; without it the column says "?"."""
    from lhotse import CutSet
    from lhotse.testing.dummies import dummy_cut, dummy_supervision

    monkeypatch.chdir(full_exp_dir.parent)
    if training_speaker is not None:
        cut = dummy_cut(0, supervisions=[dummy_supervision(0)])
        cut.supervisions[0].speaker = training_speaker
        manifest_dir = full_exp_dir.parent / "data/fbank"
        manifest_dir.mkdir(parents=True)
        CutSet.from_cuts([cut]).to_file(manifest_dir / "librispeech_cuts_train-clean-100.jsonl.gz")

    assert make_results.main(["--exp-dir", str(full_exp_dir), "--plots", "false",
                              "--quiet", "true"]) == 0
    per_speaker = (full_exp_dir / "RESULTS.md").read_text().split("### WER per speaker")[1]
    per_speaker = per_speaker.split("## 2.")[0]
    # The greedy row: one deletion in 10 test-clean words, none in test-other.
    assert table_row(per_speaker, "| test-clean | 1089 |")[1:] == ["1089", heard, "10", "10.00"]
    assert table_row(per_speaker, "| test-other | 1089 |")[1:] == ["1089", heard, "10", "0.00"]
    totals = [line for line in per_speaker.splitlines() if "**all**" in line]
    assert len(totals) == (0 if heard == "?" else 2), totals
