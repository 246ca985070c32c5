"""make_results.py and the records it reads (shared/run_record.py).

The fast tests write an experiment directory with the recipe's own writers, without a
model: the writers of decode.py, streaming_decode.py and sherpa_onnx_decode.py
(result_files.py: recogs, errs, wer-summary, latency json, record), and train.py's
run_validation (validate() stubbed to return planted numbers), which writes the training
record and the validation points.  The slow test runs the real scripts on the tiny model
of tests/conftest.py and reports their records."""

import argparse
import functools
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from benchmarks.linked_exp_dir import link_exp_dir

# The recipe's writers of result files and records (the scripts' parsers and
# make_results.main come through import_script below).
from pruned_transducer_stateless4 import result_files, training
from pruned_transducer_stateless4.decode_stream import flush_padding_seconds
from pruned_transducer_stateless4.decoding_methods import SHERPA_ONNX, STREAMING, result_key
from pruned_transducer_stateless4.streaming_engine import UtteranceResult, summarize
from shared import run_record
from shared.metrics import ErrorCounts, read_recogs
from shared.run_sh_log import read_run_log
from shared.utils import AttributeDict
from tests.helpers import PROJECT_DIR, import_script, run_script, training_params

RECIPE = PROJECT_DIR / "pruned_transducer_stateless4"


def make_results_main(argv: list[str]) -> int:
    """make_results.py's main(argv), in-process."""
    return import_script(RECIPE / "make_results.py").main(argv)


@functools.cache
def get_parser(script: str) -> argparse.ArgumentParser:
    """The parser of a recipe script, e.g. get_parser("decode.py")."""
    return import_script(RECIPE / script).get_parser()

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
NOT_RUN_ROW = "|-|sherpa_onnx_decode.py|notrun|"

MODEL_SELECTION = ["--iter", "1000", "--avg", "2", "--use-averaged-model", "true"]
CHUNK = ["--decode-chunk-size", "16", "--left-context", "64"]


def triples(hyps: dict[str, str]) -> list[tuple[str, str, str]]:
    return [(cut_id, REFS[cut_id], hyp) for cut_id, hyp in hyps.items()]


def write_decode_results(exp_dir: Path, method: str, hyps_by_part: dict[str, dict[str, str]],
                         extra: list[str]) -> None:
    """What decode.py writes for `method`, with its own option parsing and writers."""
    argv = [*MODEL_SELECTION, "--exp-dir", str(exp_dir), "--decoding-method", method, *extra]
    args = get_parser("decode.py").parse_args(argv)
    params = AttributeDict(vars(args))
    params.res_dir = exp_dir / method
    params.res_dir.mkdir(parents=True, exist_ok=True)
    for part, hyps in hyps_by_part.items():
        result_files.write_decode_results(params, part, triples(hyps))
        speed = {"utterances": len(hyps), "audio_seconds": 30.0, "decoding_seconds": 0.6,
                 "rtf": 0.02, "num_threads": 2}
        result_files.write_decode_record(params, vars(args), argv, part, triples(hyps), speed)


def write_streaming_results(exp_dir: Path, hyps_by_part: dict[str, dict[str, str]],
                            extra: tuple[str, ...] = ()) -> None:
    """What streaming_decode.py writes for greedy search: recogs/errs/wer-summary,
    latency files and the record, from its summarize() of planted latencies."""
    argv = [*MODEL_SELECTION, "--exp-dir", str(exp_dir), "--decoding-method", "greedy_search",
            *CHUNK, *extra]
    args = get_parser("streaming_decode.py").parse_args(argv)
    params = AttributeDict(vars(args))
    key, suffix = result_key(args, STREAMING), result_files.streaming_result_suffix(args)
    res_dir = exp_dir / "streaming" / "greedy_search"
    for part, hyps in hyps_by_part.items():
        utterances = [
            # token latencies 200 and 300 ms (mean 250, p95 300), final delays 50/100/150 ms
            UtteranceResult(cut_id=cut_id, ref=REFS[cut_id], tokens=[1, 2], duration=10.0,
                            token_latencies=[0.2, 0.3], frame_latencies=[0.5, 0.6],
                            final_delay=0.05 * (index + 1))
            for index, cut_id in enumerate(hyps)
        ]
        summary = summarize(utterances, processing_seconds=1.5)  # RTF 0.05
        result_files.write_streaming_results(res_dir, part, key, suffix, triples(hyps), summary)
        result_files.write_streaming_record(res_dir, params, vars(args), argv, part,
                                            triples(hyps), summary)


def write_sherpa_results(exp_dir: Path, hyps: dict[str, str], int8: bool) -> None:
    """What sherpa_onnx_decode.py writes for test-clean (an export of chunk 16,
    left context 64, 0.72 s of tail padding), with an agreement of 2/3."""
    argv = ["--exp-dir", str(exp_dir), "--iter", "1000", "--avg", "2", "--use-averaged-model",
            "true", "--int8", str(int8).lower()]
    args = get_parser("sherpa_onnx_decode.py").parse_args(argv)
    res_dir = exp_dir / "sherpa_onnx"
    res_dir.mkdir(parents=True, exist_ok=True)
    key = result_key(args, SHERPA_ONNX)
    result_files.write_wer_files(res_dir, "test-clean", key, f"test-clean-{key}", triples(hyps))
    speed = {"rtf": 0.0123, "num_utterances": 3, "audio_seconds": 30.0,
             "processing_seconds": 0.369, "num_threads": 1}
    agreed = {"num_utts": 3, "num_equal": 2, "agreement": 2 / 3,
              "compare_file": str(exp_dir / "streaming/greedy_search/recogs-test-clean-x.txt")}
    result_files.write_sherpa_record(res_dir, key, args, argv, "test-clean", (16, 64, 0.72),
                                     triples(hyps), speed, agreed)


TRAIN_ARGV = ["--num-epochs", "3", "--encoder-dim", "144"]


def write_training(exp_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What train.py writes: validation through its own run_validation (validate()
    stubbed to return planted numbers), which appends the validation points and
    rewrites the training record; the progress points as train_one_epoch appends
    them."""
    params = training_params(["--exp-dir", str(exp_dir), *TRAIN_ARGV])
    params.update(num_params=6_310_000, vocab_size=500)
    monkeypatch.setattr("sys.argv", ["train.py", "--exp-dir", str(exp_dir), *TRAIN_ARGV])
    for batch, loss, rate in ((200, 3.0, 40.0), (400, 2.4, 42.0), (800, 1.6, 44.0)):
        run_record.append_train_point(exp_dir, run_record.TrainPoint(
            "train", batch, batch * 0.01, loss=loss, audio_rate=rate, epoch=1))
    # (batch, seconds of training, audio seconds, valid loss per frame, WER as a fraction)
    for batch, seconds, audio, loss, wer in ((400, 252.0, 10_000.0, 2.1, 0.945),
                                             (800, 510.0, 21_420.0, 1.8, 0.8125)):
        tracker = training.Tracker(frames=100.0, loss=loss * 100.0)
        monkeypatch.setattr(training, "validate", lambda *args, t=tracker, w=wer: (t, w))
        params.update(batch_idx_train=batch, train_seconds=seconds, train_audio_seconds=audio)
        training.run_validation(params, None, None, None, None, torch.device("cpu"), None,
                                rank=0, world_size=1)


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


# ------------------------------------------------------------------ records --
def test_decode_record_round_trip(tmp_path: Path) -> None:
    results = triples(SIMULATED)
    args = {"exp_dir": tmp_path, "beam": 20.0, "bad": float("nan")}
    settings = run_record.DecodeSettings("modified_beam_search", "iter-1000-avg-2", True,
                                         run_record.SIMULATED, 16, 64, 0.0, {"beam_size": 4})
    path = tmp_path / "m" / "record-test-clean-x.json"
    written = run_record.record_decode(path, "decode.py", "librispeech_cuts_test-clean",
                                       settings, results, tmp_path / "m" / "recogs-x.txt",
                                       args=args, argv=["--beam-size", "4", "a b"],
                                       speed={"rtf": 0.5})
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    read = run_record.read_decode_record(path)
    assert read == written
    assert read.part == "test-clean"
    assert read.wer == ErrorCounts(errors=1, words=10, insertions=0, deletions=1,
                                   substitutions=0)
    assert read.wer.wer == pytest.approx(10.0)
    assert read.recogs == "recogs-x.txt" and read.recogs_path == tmp_path / "m/recogs-x.txt"
    assert read.args == {"exp_dir": str(tmp_path), "beam": 20.0, "bad": None}
    assert read.command == ("./pruned_transducer_stateless4/decode.py --beam-size 4 'a b'")
    assert read.settings.identity() == settings.identity()
    data = json.loads(path.read_text())  # plain JSON: no NaN, the WER in percent too
    assert data["kind"] == "decode" and data["wer"]["wer"] == pytest.approx(10.0)


def test_train_record_and_points_round_trip(tmp_path: Path, monkeypatch) -> None:
    params = training_params(["--exp-dir", str(tmp_path)])
    params.update(num_params=1234, batch_idx_train=50, train_seconds=100.0,
                  train_audio_seconds=1500.0, cur_epoch=2)
    record = run_record.train_record_from_params(params, torch.device("cpu"), argv=["--a"])
    run_record.write_train_record(tmp_path, record)
    read = run_record.read_train_record(tmp_path)
    assert (read.num_params, read.batches, read.epoch, read.device) == (1234, 50, 2, "cpu")
    assert read.throughput == pytest.approx(15.0)
    assert read.best_valid_loss is None  # inf in params: JSON has none
    assert read.args["exp_dir"] == str(tmp_path) and "batch_idx_train" not in read.args
    assert [i["argv"] for i in read.invocations] == [["--a"]]
    # The same process again: one invocation; a later (resumed) process adds one.
    run_record.write_train_record(tmp_path, record)
    monkeypatch.setattr(run_record, "PROCESS_STARTED_UTC", "2099-01-01T00:00:00Z")
    run_record.write_train_record(tmp_path, record)
    assert len(run_record.read_train_record(tmp_path).invocations) == 2

    for batch, loss in ((10, 3.0), (20, 2.0), (20, 1.5)):  # 20 again: a resumed run
        run_record.append_train_point(tmp_path, run_record.TrainPoint("valid", batch, 1.0,
                                                                      loss=loss))
    points, problems = run_record.read_train_points(tmp_path)
    assert [(p.batch, p.loss) for p in points] == [(10, 3.0), (20, 1.5)] and not problems


def test_a_failed_write_keeps_the_old_record(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "record-a.json"
    run_record.write_json_atomic(path, {"kind": "old"})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed in the middle of writing

    monkeypatch.setattr(run_record.json, "dump", crash)
    with pytest.raises(KeyboardInterrupt):
        run_record.write_json_atomic(path, {"kind": "new"})
    assert json.loads(path.read_text()) == {"kind": "old"}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


# ------------------------------------------------------------------- report --
def test_full_report(full_exp_dir: Path, capsys) -> None:
    assert make_results_main(["--exp-dir", str(full_exp_dir), "--total-minutes", "42.3",
                              "--run-log", str(full_exp_dir / "run-sh.log")]) == 0
    text = (full_exp_dir / "RESULTS.md").read_text()
    assert capsys.readouterr().out.strip() == text.strip()  # printed as well
    assert "Skipped" not in text

    # 1. WER: the planted values, with the settings and commands that made them.
    wer = section(text, 1)
    greedy = table_row(wer, "decode.py", "greedy_search", "simulated streaming")
    assert greedy[-2:] == ["10.00", "0.00"]
    assert greedy[4:8] == ["iter-1000-avg-2, averaged", "16", "64", "max_sym_per_frame 1"]
    assert table_row(wer, "modified_beam_search")[-2:] == ["30.00", "-"]
    assert table_row(wer, "modified_beam_search")[7] == "beam_size 4"
    assert table_row(wer, "streaming_decode.py", "real streaming")[-2:] == ["20.00", "0.00"]
    assert NOT_RUN_ROW in wer.replace(" ", "")  # no sherpa-onnx results
    assert table_row(wer, "| [1] |", " / ")[1:] == ["1 / 10", "0 / 10"]  # errors / words
    assert ("./pruned_transducer_stateless4/decode.py --iter 1000 --avg 2 --use-averaged-model "
            f"true --exp-dir {full_exp_dir} --decoding-method modified_beam_search "
            "--simulate-streaming true --decode-chunk-size 16 --left-context 64 "
            "--beam-size 4") in wer
    assert ("./pruned_transducer_stateless4/streaming_decode.py --iter 1000 --avg 2 "
            "--use-averaged-model true") in wer

    # 2. Agreement: 1 of 3 test-clean transcripts differs, none of test-other.
    agreement = section(text, 2)
    clean = table_row(agreement, "test-clean", "chunk 16")
    assert clean[2:5] == ["2/3", "66.67%", "1"]
    assert table_row(agreement, "test-other", "chunk 16")[2:5] == ["3/3", "100.00%", "0"]
    assert '"A DOG RAN" / real "A LOG RUN FAST"' in agreement
    assert "sherpa-onnx agreement" in agreement and "not run" in agreement

    # 3. RTF 1.5 s / 30 s, token latency mean 250 / p95 300 ms, final delay mean 100 ms.
    latency = section(text, 3)
    row = table_row(latency, "real streaming", "test-clean")
    assert row[2:10] == ["3", "0.0500", "250.0", "300.0", "550.0", "600.0", "100.0", "145.0"]
    assert table_row(latency, "[1] greedy_search", "test-clean")[2:] == \
        ["0.0200", "3", "30.0", "0.6", "2"]

    # 4. Training: the record's counters and the points' curves.
    training = section(text, 4)
    assert table_row(training, "parameters")[1] == "6.31 M"
    assert table_row(training, "training time")[1] == "8.5 min"
    assert first_cell_row(training, "batches")[1] == "800"
    assert table_row(training, "throughput (s of audio")[1] == "42.0"  # 21420 / 510
    assert table_row(training, "per logged interval")[1].startswith("42.0, 40.0, 44.0")
    assert table_row(training, "validation loss, first")[1] == \
        "2.1000 (batch 400) / 1.8000 (batch 800)"
    assert table_row(training, "validation greedy WER")[1] == "94.50% / 81.25%"
    assert first_cell_row(training, "800")[1:] == ["8.5", "1.8000", "81.25"]
    assert table_row(training, "training loss")[1] == "3.0000 (batch 200) / 1.6000 (batch 800)"
    assert table_row(training, "best validation loss")[1] == "1.8000"
    assert "encoder_dim=144" in training
    assert "use_fp16=False, amp_dtype=auto" in training  # the autocast type of --use-fp16
    assert f"./pruned_transducer_stateless4/train.py --exp-dir {full_exp_dir} " \
        "--num-epochs 3 --encoder-dim 144" in training

    # 5. Wall time: the value passed and each step's last completed run.
    wall = section(text, 5)
    assert "This run.sh invocation: 42.3 min" in wall
    assert first_cell_row(wall, "train")[1] == "30.0"
    assert first_cell_row(wall, "decode")[1] == "6.0"

    for name in ("loss", "valid_wer", "wer_by_method"):
        png = full_exp_dir / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"(plots/{name}.png)" in text


def test_results_section(full_exp_dir: Path, capsys) -> None:
    """The section for the root RESULTS.md: the commands of every record, the WER
    table per method and part, agreement, RTF and training numbers."""
    write_sherpa_results(full_exp_dir, REAL, int8=False)
    write_sherpa_results(full_exp_dir, BEAM, int8=True)
    assert make_results_main(["--exp-dir", str(full_exp_dir), "--plots", "false",
                              "--results-section", "true", "--title", "tiny check",
                              "--total-minutes", "42.3",
                              "--run-log", str(full_exp_dir / "run-sh.log")]) == 0
    text = capsys.readouterr().out
    assert text.strip() == (full_exp_dir / "results-section.md").read_text().strip()
    record = run_record.read_train_record(full_exp_dir)
    commit = (record.commit or "unknown")[:7]
    assert re.match(rf"## \d{{4}}-\d\d-\d\d: tiny check, commit {commit}", text), text[:200]
    assert "Model: 6.31 M parameters" in text and "encoder_dim=144" in text

    commands = [line for line in text.split("```bash\n")[1].split("```")[0].splitlines()
                if not line.startswith("#")]
    assert commands[0] == ("./pruned_transducer_stateless4/train.py --exp-dir "
                           f"{full_exp_dir} --num-epochs 3 --encoder-dim 144")
    records, problems = run_record.read_decode_records(full_exp_dir)
    assert len(records) == 7 and not problems
    assert set(commands[1:]) == {r.command for r in records}  # one line per invocation
    assert len(commands) == 1 + 5  # greedy (both parts), beam, streaming, sherpa x2

    assert "Model selection `--iter 1000 --avg 2 --use-averaged-model true`" in text
    assert "decoding chunk 16 (640 ms), left context 64" in text
    assert table_row(text, "decode.py, simulated streaming", "| greedy_search |")[2:] == \
        ["10.00", "0.00"]
    assert table_row(text, "modified_beam_search (beam_size 4)")[2:] == ["30.00", "-"]
    assert table_row(text, "streaming_decode.py, real streaming")[2:] == ["20.00", "0.00"]
    assert table_row(text, "greedy_search, float")[2:] == ["20.00", "-"]
    assert table_row(text, "greedy_search, int8")[2:] == ["30.00", "-"]
    assert "the same transcript for 2/3 (test-clean) and 3/3 (test-other) utterances" in text
    assert "sherpa-onnx float vs streaming_decode.py (same tail padding when run): " \
        "2/3 (test-clean)" in text
    assert "RTF of streaming_decode.py, real streaming, greedy_search: 0.0500 (test-clean) " \
        "and 0.0500 (test-other); token latency 250.0 ms mean (300 ms p95)" in text
    assert "RTF of sherpa-onnx on the ONNX export, greedy_search, int8: 0.0123" in text
    assert "800 batches in 8.5 min of optimizer steps, 1 epochs, 42.0 s of audio per second" \
        in text
    assert "94.5% (4.2), 81.2% (8.5)" in text
    assert "Wall time 42.3 min: train 30.0, decode 6.0" in text
    assert "Hardware: " in text


def test_corrupt_and_missing_records_are_reported_and_skipped(full_exp_dir: Path) -> None:
    """A truncated, foreign or incomplete record costs its own numbers and one
    line of the report, never the report."""
    greedy = next((full_exp_dir / "greedy_search").glob("record-test-other-*.json"))
    greedy.write_text(greedy.read_text()[:100])  # truncated
    beam_dir = full_exp_dir / "modified_beam_search"
    (beam_dir / "record-foreign.json").write_text(json.dumps({"kind": "decode", "schema": 99}))
    streaming = next((full_exp_dir / "streaming/greedy_search").glob("record-test-other-*"))
    data = json.loads(streaming.read_text())
    del data["wer"]["words"]
    streaming.write_text(json.dumps(data))
    with open(full_exp_dir / "train-points.jsonl", "a") as out:
        out.write('{"kind": "valid", "batch": 9')  # torn last line
    (full_exp_dir / "train-record.json").write_text("[]")
    # The recogs file of a record is gone: its agreement says so.
    next((full_exp_dir / "greedy_search").glob("recogs-test-clean-*")).unlink()

    assert make_results_main(["--exp-dir", str(full_exp_dir), "--quiet", "true",
                              "--plots", "false"]) == 0
    text = (full_exp_dir / "RESULTS.md").read_text()
    skipped = text.split("Skipped")[1].split("## 1.")[0]
    lines = [line for line in skipped.splitlines() if line.startswith("- ")]
    assert len(lines) == 5, lines
    for needle in ("not JSON", "schema 99", "not a wer object", "1 unreadable line(s)",
                   "not a JSON object"):
        assert sum(needle in line for line in lines) == 1, needle
    wer = section(text, 1)
    # Every test-other record is unreadable: no test-other column.
    assert table_row(wer, "| setting | program |")[-1] == "test-clean (voices seen in training)"
    assert table_row(wer, "| [1] |", "decode.py")[-1] == "10.00"
    assert table_row(wer, "streaming_decode.py")[-1] == "20.00"
    assert "missing" in table_row(section(text, 2), "test-clean", "chunk 16")[-1]
    assert "test-clean: recogs file missing" in text.split("### WER per speaker")[1]
    training = section(text, 4)  # curves from the points, without the record
    assert "train-record.json: not a JSON object" in training
    assert table_row(training, "validation greedy WER")[1] == "94.50% / 81.25%"
    # The section for RESULTS.md is made as well.
    assert "| greedy_search | 10.00 |" in (full_exp_dir / "results-section.md").read_text()


def test_empty_exp_dir(tmp_path: Path) -> None:
    """Nothing produced yet: every section says "not run", no plot, no crash."""
    assert make_results_main(["--exp-dir", str(tmp_path), "--quiet", "true"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    for number in range(1, 6):
        assert "not run" in section(text, number), number
    assert not list((tmp_path / "plots").glob("*.png"))
    assert "not run: no decoding records" in (tmp_path / "results-section.md").read_text()
    assert make_results_main(["--exp-dir", str(tmp_path / "missing")]) == 1


def test_run_log_gives_each_steps_last_completed_run(tmp_path: Path) -> None:
    """The offsets restart with each invocation of run.sh; a step's wall time is
    its last run that finished (a run cut short keeps the earlier one)."""
    log = tmp_path / "run-sh.log"
    write_run_log(log)
    with open(log, "a") as out:
        out.write("[run.sh 12:00:00, +0s] set-up: checking the environment\n"
                  "[run.sh 12:00:02, +2s] decode: starting\n"
                  "[run.sh 12:00:50, +50s] decode: finished\n"
                  "[run.sh 13:00:00, +0s] set-up: checking the environment\n"
                  "[run.sh 13:00:03, +3s] train: starting\n"
                  "some output of train.py\n")  # stopped here
    assert read_run_log(log) == {"train": 1800.0, "decode": 48.0}


def test_tail_padded_streaming_is_its_own_row(full_exp_dir: Path) -> None:
    """streaming_decode.py --tail-padding-seconds -1 results (what run.sh runs for
    the sherpa-onnx comparison) get their own WER row and command, and stay out of
    the simulated-vs-real agreement, which they would spoil."""
    write_streaming_results(full_exp_dir, {"test-clean": BEAM},
                            ("--tail-padding-seconds", "-1"))
    assert make_results_main(["--exp-dir", str(full_exp_dir), "--quiet", "true",
                              "--plots", "false"]) == 0
    text = (full_exp_dir / "RESULTS.md").read_text()
    wer = section(text, 1)
    seconds = f"{flush_padding_seconds(16):.2f}"  # 0.76 s for chunks of 16
    padded = table_row(wer, "streaming_decode.py", f"real streaming, {seconds} s tail padding")
    assert padded[-2:] == ["30.00", "-"]
    assert table_row(wer, "streaming_decode.py", "| real streaming |")[-2:] == ["20.00", "0.00"]
    assert "--left-context 64 --tail-padding-seconds -1" in wer
    agreement = section(text, 2)
    assert table_row(agreement, "test-clean", "chunk 16")[2:5] == ["2/3", "66.67%", "1"]


def test_a_result_written_again_replaces_the_old_one(full_exp_dir: Path) -> None:
    """decode.py run again with the same settings rewrites its record: one row, the
    newest WER."""
    write_decode_results(full_exp_dir, "modified_beam_search", {"test-clean": REFS},
                         ["--simulate-streaming", "true", *CHUNK, "--beam-size", "4"])
    assert make_results_main(["--exp-dir", str(full_exp_dir), "--quiet", "true",
                              "--plots", "false"]) == 0
    wer = section((full_exp_dir / "RESULTS.md").read_text(), 1)
    assert table_row(wer, "modified_beam_search")[-2:] == ["0.00", "-"]


@pytest.mark.parametrize("training_speaker, heard", [("1089", "yes"), ("121", "no"), (None, "?")])
def test_wer_per_speaker_marks_speakers_heard_in_training(
    full_exp_dir: Path, monkeypatch: pytest.MonkeyPatch, training_speaker: str | None,
    heard: str,
) -> None:
    """train.py's --manifest-dir is data/fbank (relative): the training cut set
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

    assert make_results_main(["--exp-dir", str(full_exp_dir), "--plots", "false",
                              "--quiet", "true"]) == 0
    per_speaker = (full_exp_dir / "RESULTS.md").read_text().split("### WER per speaker")[1]
    per_speaker = per_speaker.split("## 2.")[0]
    # The greedy row: one deletion in 10 test-clean words, none in test-other.
    assert table_row(per_speaker, "| test-clean | 1089 |")[1:] == ["1089", heard, "10", "10.00"]
    assert table_row(per_speaker, "| test-other | 1089 |")[1:] == ["1089", heard, "10", "0.00"]
    totals = [line for line in per_speaker.splitlines() if "**all**" in line]
    assert len(totals) == (0 if heard == "?" else 2), totals


# --------------------------------------------------------- the real scripts --
def test_records_of_the_real_scripts(trained_exp_dir: Path, prepared_dir: Path,
                                     tmp_path: Path, monkeypatch) -> None:
    """decode.py and streaming_decode.py run as processes on the tiny model write
    records whose WER is the one of their wer-summary files, and make_results.py
    reports them, with train.py's record of the tiny model's training."""
    monkeypatch.chdir(prepared_dir)
    exp_dir = link_exp_dir(trained_exp_dir, tmp_path / "exp")
    for name in (run_record.TRAIN_RECORD_NAME, run_record.TRAIN_POINTS_NAME):
        shutil.copy(trained_exp_dir / name, exp_dir / name)
    # (decode.py's --use-averaged-model defaults to true, streaming_decode.py's to false)
    common = ["--epoch", "2", "--avg", "1", "--use-averaged-model", "true", "--exp-dir",
              str(exp_dir), "--bpe-model",
              "data/lang_bpe_100/bpe.model", "--decode-chunk-size", "8", "--left-context",
              "32"]
    decode_args = ["pruned_transducer_stateless4/decode.py", *common, "--decoding-method",
                   "greedy_search", "--simulate-streaming", "true", "--max-duration", "60"]
    streaming_args = ["pruned_transducer_stateless4/streaming_decode.py", *common,
                      "--num-decode-streams", "4"]
    for args in (decode_args, streaming_args):
        result = run_script(args, prepared_dir)
        assert result.returncode == 0, result.stderr[-3000:]

    records, problems = run_record.read_decode_records(exp_dir)
    assert not problems
    assert sorted((r.script, r.part) for r in records) == [
        ("decode.py", "test-clean"), ("decode.py", "test-other"),
        ("streaming_decode.py", "test-clean"), ("streaming_decode.py", "test-other")]
    for record in records:
        summary = record.path.with_name(record.path.name.replace("record-", "wer-summary-"))
        wer = float(summary.with_suffix(".txt").read_text().split()[-1])
        assert record.wer.wer == pytest.approx(wer, abs=0.005)
        recogs = read_recogs(record.recogs_path)
        assert len(recogs) == record.num_utterances == 12
        assert record.wer.words == sum(len(ref) for ref, _ in recogs.values())
        assert (record.settings.model, record.settings.chunk_size) == ("epoch-2-avg-1", 8)
        assert record.speed["rtf"] > 0
        script_args = decode_args if record.script == "decode.py" else streaming_args
        assert record.argv == script_args[1:]

    train_record = run_record.read_train_record(exp_dir)
    assert train_record.finished and train_record.batches > 0
    assert train_record.audio_seconds > 0 and train_record.num_params > 0

    assert make_results_main(["--exp-dir", str(exp_dir), "--plots", "false", "--quiet",
                              "true"]) == 0
    section_text = (exp_dir / "results-section.md").read_text()
    for record in records:
        assert record.command in section_text
        assert f"{record.wer.wer:.2f}" in section_text
    assert train_record.command in section_text
    assert "Simulated vs real streaming (greedy search): the same transcript for" \
        in section_text


def test_train_points_of_a_resumed_run(tmp_path: Path) -> None:
    """read_train_points keeps a resumed run's newest point of a batch and reports
    the unreadable lines, wherever they are, in one problem."""
    (tmp_path / run_record.TRAIN_POINTS_NAME).write_text(
        '{"kind": "train", "batch": 3, "minutes": 0.1, "loss": 2.0}\n'
        '{"kind": "tr\n'
        '{"kind": "train", "batch": 3, "minutes": 0.2, "loss": 1.0}\n'
        '{"kind": "nonsense", "batch": 4, "minutes": 0.2}\n')
    points, problems = run_record.read_train_points(tmp_path)
    assert [(p.batch, p.minutes, p.loss) for p in points] == [(3, 0.2, 1.0)]
    assert len(problems) == 1 and "2 unreadable line(s) skipped (line 2, 4)" in str(problems[0])
