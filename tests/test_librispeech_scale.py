"""LibriSpeech at scale: the shuffled training cut sets of prepare.sh stage 3
(on a tiny LibriSpeech-shaped tree of real speech) and icefall's filter of
training cuts."""

import argparse
import itertools
import re
from pathlib import Path

import pytest
from lhotse import load_manifest
from lhotse.testing.dummies import dummy_cut, dummy_supervision

from pruned_transducer_stateless4.asr_datamodule import (
    LibriSpeechAsrDataModule,
    TrainingCutFilter,
)
from pruned_transducer_stateless4.training import encoder_frames
from tests.helpers import make_librispeech_tree, run_script

PARTS = ("train-clean-100", "train-clean-360", "train-other-500")
SENTENCES = ["time flies like an arrow", "actions speak louder than words",
             "the early bird catches the worm"]


@pytest.fixture(scope="module")
def all_parts_dir(tmp_path_factory) -> Path:
    """Three utterances in each 960 h training part, manifests and fbank
    (with speed perturbation) made by prepare.sh stages 1 and 3."""
    work_dir = tmp_path_factory.mktemp("librispeech_960")
    make_librispeech_tree(work_dir / "download", {
        part: [(str(100 + i), "200", sentence) for sentence in SENTENCES]
        for i, part in enumerate(PARTS)
    })
    for stage in (1, 3):
        result = run_script(["prepare.sh", "--corpus", "librispeech", "--stage", str(stage),
                             "--stop-stage", str(stage)], work_dir)
        assert result.returncode == 0, result.stderr[-3000:]
    return work_dir


def part_of(cut) -> str:
    return next(part for part in PARTS if f"/{part}/" in cut.recording.sources[0].source)


def factor_of(cut) -> str:
    match = re.search(r"_sp(\d\.\d)$", cut.id)
    return match.group(1) if match else "1.0"


def runs(labels: list[str]) -> int:
    """Number of maximal blocks of equal consecutive labels."""
    return sum(1 for _ in itertools.groupby(labels))


@pytest.mark.slow
def test_train_all_shuf_interleaves_parts_and_perturbation_factors(all_parts_dir: Path,
                                                                    monkeypatch):
    monkeypatch.chdir(all_parts_dir)  # manifests hold paths relative to it
    fbank = all_parts_dir / "data/fbank"
    shuffled = list(load_manifest(fbank / "librispeech_cuts_train-all-shuf.jsonl.gz"))
    by_part = {part: list(load_manifest(fbank / f"librispeech_cuts_{part}.jsonl.gz"))
               for part in PARTS}
    # exactly the cuts of the three parts (3 utterances x 3 speed factors each)
    assert sorted(c.id for c in shuffled) == sorted(c.id for cuts in by_part.values()
                                                    for c in cuts)
    assert len(shuffled) == 27
    # Concatenated parts would form 3 blocks of one part and, within each,
    # 3 blocks of one speed factor (icefall's order of a perturbed cut set).
    assert runs([part_of(c) for c in shuffled]) >= 12
    assert runs([factor_of(c) for c in shuffled]) >= 12
    # every part and factor shows up in the first third already
    first = shuffled[:9]
    assert {part_of(c) for c in first} == set(PARTS)
    assert {factor_of(c) for c in first} == {"0.9", "1.0", "1.1"}
    # beyond icefall: each part alone is shuffled too
    for cuts in by_part.values():
        assert runs([factor_of(c) for c in cuts]) >= 5, [c.id for c in cuts]
    features = shuffled[0].load_features()  # features still found after shuffling
    assert features.shape[1] == 80


@pytest.mark.slow
def test_full_libri_reads_the_shuffled_cut_set(all_parts_dir: Path, monkeypatch):
    monkeypatch.chdir(all_parts_dir)
    args = argparse.Namespace(manifest_dir=Path("data/fbank"))
    cuts = LibriSpeechAsrDataModule(args).train_all_shuf_cuts()
    expected = load_manifest(Path("data/fbank/librispeech_cuts_train-all-shuf.jsonl.gz"))
    assert [c.id for c in cuts] == [c.id for c in expected]


@pytest.mark.slow
def test_stage_3_rerun_keeps_train_all_shuf(all_parts_dir: Path):
    path = all_parts_dir / "data/fbank/librispeech_cuts_train-all-shuf.jsonl.gz"
    before = path.stat().st_mtime_ns
    result = run_script(["prepare.sh", "--corpus", "librispeech", "--stage", "3",
                         "--stop-stage", "3"], all_parts_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train-all-shuf.jsonl.gz is up to date" in result.stdout + result.stderr
    assert path.stat().st_mtime_ns == before


# ----------------------------------------------------------- the filter ----
def _cut(index: int, duration: float, words: int):
    text = " ".join(["word"] * words)
    return dummy_cut(index, duration=duration, supervisions=[
        dummy_supervision(index, duration=duration, text=text)])


def test_filter_drops_exactly_the_bad_cuts_and_counts_them():
    cut_filter = TrainingCutFilter(
        encode=lambda text: [1] * len(text.split()),  # one token per word
        encoder_frames=encoder_frames)  # what train.py filters with
    cuts = {
        "short": _cut(0, 0.99, 2),
        "min": _cut(1, 1.0, 2),
        "max": _cut(2, 20.0, 10),
        "long": _cut(3, 20.01, 10),
        # 1.0 s = 100 feature frames -> 24 encoder frames
        "24_tokens": _cut(4, 1.0, 24),
        "25_tokens": _cut(5, 1.0, 25),
        "normal": _cut(6, 5.0, 12),
    }
    assert cuts["min"].num_frames == 100
    assert encoder_frames(100) == 24
    kept = {name for name, cut in cuts.items() if cut_filter(cut)}
    assert kept == {"min", "max", "24_tokens", "normal"}
    counts = cut_filter.count(list(cuts.values()))
    assert (counts.kept, counts.too_short, counts.too_long, counts.fewer_frames_than_tokens) \
        == (4, 1, 1, 1)
    assert counts.kept_seconds == pytest.approx(1.0 + 20.0 + 1.0 + 5.0)
    assert counts.summary(1.0, 20.0) == (
        "kept 4 training cuts (0.01 h), dropped 3: 1 shorter than 1 s, 1 longer than 20 s, "
        "1 with fewer encoder frames than BPE tokens")


def test_training_logs_the_filter_counts(trained_exp_dir: Path, prepared_dir: Path):
    log = "".join(p.read_text() for p in (trained_exp_dir / "log").glob("log-train-*"))
    match = re.search(r"training cut filter: kept (\d+) training cuts .*dropped (\d+)", log)
    assert match, log[-2000:]
    manifest = prepared_dir / "data/fbank/librispeech_cuts_train-clean-100.jsonl.gz"
    total = len(load_manifest(manifest))
    assert int(match.group(1)) + int(match.group(2)) == total
