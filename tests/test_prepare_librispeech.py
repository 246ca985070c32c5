"""prepare.sh stages 1, 3 and 4 on a tiny LibriSpeech-shaped tree of real speech."""

import gzip
import json
from pathlib import Path

import pytest
import sentencepiece as spm
from lhotse import load_manifest

from tests.helpers import make_librispeech_tree, run_script

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a bird in the hand is worth two in the bush",
    "all that glitters is not gold",
    "the early bird catches the worm",
    "time flies like an arrow",
    "actions speak louder than words",
]


@pytest.fixture(scope="module")
def librispeech_dir(tmp_path_factory) -> Path:
    work_dir = tmp_path_factory.mktemp("librispeech")
    make_librispeech_tree(
        work_dir / "download",
        {
            "train-clean-100": [("103", "1240", s) for s in SENTENCES[:4]]
            + [("1034", "121119", s) for s in SENTENCES[4:]],
            "test-clean": [("1089", "134686", SENTENCES[0])],
        },
    )
    return work_dir


def run_prepare(work_dir: Path, stage: int, stop_stage: int, *extra: str):
    return run_script(["prepare.sh", "--corpus", "librispeech", "--stage", str(stage),
                       "--stop-stage", str(stop_stage), "--vocab-sizes", "30", *extra], work_dir)


def test_stages_1_3_4_on_librispeech_layout(librispeech_dir: Path, monkeypatch):
    # Manifests hold paths relative to the directory prepare.sh ran in, as icefall's do.
    monkeypatch.chdir(librispeech_dir)
    result = run_prepare(librispeech_dir, 1, 1)
    assert result.returncode == 0, result.stderr
    recordings = load_manifest(
        librispeech_dir / "data/manifests/librispeech_recordings_train-clean-100.jsonl.gz")
    supervisions = load_manifest(
        librispeech_dir / "data/manifests/librispeech_supervisions_train-clean-100.jsonl.gz")
    assert len(recordings) == 6
    assert {s.speaker for s in supervisions} == {"103", "1034"}
    assert supervisions["103-1240-0001"].text == SENTENCES[1].upper()
    assert all(r.sampling_rate == 16000 for r in recordings)

    result = run_prepare(librispeech_dir, 3, 4)
    assert result.returncode == 0, result.stderr
    cuts_path = librispeech_dir / "data/fbank/librispeech_cuts_train-clean-100.jsonl.gz"
    cuts = load_manifest(cuts_path)
    # originals plus 0.9x and 1.1x speed-perturbed copies
    assert len(cuts) == 18
    assert sum(1 for c in cuts if c.id.endswith("_sp0.9")) == 6
    features = cuts[0].load_features()
    assert features.shape[1] == 80 and abs(features.shape[0] - cuts[0].duration * 100) <= 2
    test_cuts = load_manifest(librispeech_dir / "data/fbank/librispeech_cuts_test-clean.jsonl.gz")
    assert len(test_cuts) == 1  # test parts are not perturbed

    lang_dir = librispeech_dir / "data/lang_bpe_30"
    sp = spm.SentencePieceProcessor(model_file=str(lang_dir / "bpe.model"))
    assert sp.piece_to_id("<blk>") == 0 and sp.get_piece_size() <= 30
    tokens = (lang_dir / "tokens.txt").read_text().split("\n")
    assert tokens[0] == "<blk> 0"
    assert sp.decode(sp.encode(SENTENCES[2].upper())) == SENTENCES[2].upper()
    assert len((lang_dir / "transcript_words.txt").read_text().splitlines()) == 6

    # Re-running is a no-op: outputs untouched.
    mtimes = {p: p.stat().st_mtime_ns for p in (librispeech_dir / "data").rglob("*") if p.is_file()}
    for stage, stop_stage in ((1, 1), (3, 4)):
        result = run_prepare(librispeech_dir, stage, stop_stage)
        assert result.returncode == 0, result.stderr
        assert "skipping" in result.stderr
    assert mtimes == {p: p.stat().st_mtime_ns
                      for p in (librispeech_dir / "data").rglob("*") if p.is_file()}


def test_corrupt_and_empty_audio_are_named(tmp_path: Path):
    corpus = make_librispeech_tree(tmp_path / "download",
                                   {"dev-clean": [("84", "121123", s) for s in SENTENCES[:3]]})
    chapter = corpus / "dev-clean/84/121123"
    (chapter / "84-121123-0001.flac").write_bytes(b"not audio at all")
    (chapter / "84-121123-0002.flac").write_bytes(b"")
    result = run_prepare(tmp_path, 1, 1)
    assert result.returncode == 1
    assert "84-121123-0001.flac" in result.stderr
    assert "84-121123-0002.flac" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data/manifests/librispeech_recordings_dev-clean.jsonl.gz").exists()


def test_missing_inputs_give_one_clear_line(tmp_path: Path):
    result = run_prepare(tmp_path, 1, 1)
    assert result.returncode == 1
    assert "run ./prepare.sh --stage 0" in result.stderr and "Traceback" not in result.stderr
    result = run_prepare(tmp_path, 4, 4)
    assert result.returncode == 1 and "--stage 1" in result.stderr
    result = run_script(["prepare.sh", "--no-such-option", "1"], tmp_path)
    assert result.returncode == 1 and "unknown option --no-such-option" in result.stderr


def test_supervision_manifest_is_plain_lhotse_jsonl(librispeech_dir: Path):
    path = librispeech_dir / "data/manifests/librispeech_supervisions_test-clean.jsonl.gz"
    if not path.exists():
        assert run_prepare(librispeech_dir, 1, 1).returncode == 0
    with gzip.open(path, "rt") as f:
        record = json.loads(f.readline())
    assert record["id"] == "1089-134686-0000" and record["text"] == SENTENCES[0].upper()
