"""prepare.sh stages 1, 3 and 4 on a tiny LibriSpeech-shaped tree of real speech."""

import gzip
import json
import re
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


@pytest.mark.slow  # runs prepare.sh stages as processes
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


@pytest.mark.slow  # runs prepare.sh stages as processes
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


@pytest.mark.slow  # runs prepare.sh stages as processes
def test_stale_outputs_are_made_again(tmp_path: Path, monkeypatch):
    """A regenerated corpus part (its .done marker newer than the manifests, as stage
    0 leaves it after another --synth-hours) makes stages 1, 3 and 4 redo that part;
    another --perturb-speed redoes stage 3.  Nothing is skipped with stale inputs."""
    make_librispeech_tree(tmp_path / "download",
                          {"train-clean-100": [("103", "1240", s) for s in SENTENCES]})
    monkeypatch.chdir(tmp_path)
    assert run_prepare(tmp_path, 1, 4).returncode == 0
    cuts_path = tmp_path / "data/fbank/librispeech_cuts_train-clean-100.jsonl.gz"
    assert len(load_manifest(cuts_path)) == 18

    result = run_prepare(tmp_path, 3, 3, "--perturb-speed", "false")
    assert result.returncode == 0, result.stderr
    assert skipped_stages(result.stderr) == set(), result.stderr
    assert len(load_manifest(cuts_path)) == 6  # originals only

    # The generator rewrote the part: drop one utterance, then write the marker.
    part_dir = tmp_path / "download/LibriSpeech/train-clean-100"
    chapter_dir = part_dir / "103/1240"
    (chapter_dir / "103-1240-0005.flac").unlink()
    trans = chapter_dir / "103-1240.trans.txt"
    trans.write_text("".join(trans.read_text().splitlines(keepends=True)[:5]))
    (part_dir / ".done").write_text("{}")
    lang_dir = tmp_path / "data/lang_bpe_30"
    result = run_prepare(tmp_path, 1, 4, "--perturb-speed", "false")
    assert result.returncode == 0, result.stderr
    assert skipped_stages(result.stderr) <= {"2"}, result.stderr  # the noise is unchanged
    assert len(load_manifest(cuts_path)) == 5
    assert len((lang_dir / "transcript_words.txt").read_text().splitlines()) == 5

    result = run_prepare(tmp_path, 1, 4, "--perturb-speed", "false")
    assert result.returncode == 0, result.stderr
    assert skipped_stages(result.stderr) == {"1", "2", "3", "4"}, result.stderr


def skipped_stages(log: str) -> set[str]:
    return set(re.findall(r"stage (\d)\b[^\n]*skipping", log))
