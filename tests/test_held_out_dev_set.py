"""tools/held_out_dev_set.py: dev sentences said by the held-out voices, as a cut set
that decode.py takes, on the tiny corpus and model of tests/conftest.py."""

from pathlib import Path

from lhotse import load_manifest

from local.voices import VOICES
from pruned_transducer_stateless4.experiment_results import errors_per_speaker
from tests.helpers import run_script
from tools.intelligibility import read_utterances

HELD_OUT_IDS = {str(voice.speaker_id) for voice in VOICES if voice.held_out}


def test_held_out_dev_set_is_decoded_per_held_out_voice(prepared_dir: Path,
                                                        trained_exp_dir: Path,
                                                        tmp_path: Path) -> None:
    out_dir = tmp_path / "dev-unheard"
    result = run_script(["tools/held_out_dev_set.py", "--num-utts", "4", "--out-dir",
                         str(out_dir)], prepared_dir)
    assert result.returncode == 0, result.stderr[-3000:]

    cuts = load_manifest(out_dir / "dev-unheard.jsonl.gz")
    dev_sentences = [u.text for u in read_utterances(prepared_dir / "download/LibriSpeech"
                                                     / "dev-clean")][:4]
    assert [cut.supervisions[0].text for cut in cuts] == dev_sentences
    assert {cut.supervisions[0].speaker for cut in cuts} == HELD_OUT_IDS
    assert all(cut.id.split("-")[0] == cut.supervisions[0].speaker for cut in cuts)
    features = cuts[0].load_features()
    assert features.shape[1] == 80 and features.shape[0] > 50

    result = run_script(
        ["pruned_transducer_stateless4/decode.py", "--exp-dir", str(trained_exp_dir),
         "--epoch", "2", "--avg", "1", "--use-averaged-model", "false",
         "--bpe-model", "data/lang_bpe_100/bpe.model", "--decoding-method", "greedy_search",
         "--test-sets", str(out_dir / "dev-unheard.jsonl.gz")], prepared_dir, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (recogs,) = (trained_exp_dir / "greedy_search").glob("recogs-dev-unheard-*.txt")
    words = {speaker: count for speaker, (_, count) in errors_per_speaker(recogs).items()}
    expected = {speaker: sum(len(cut.supervisions[0].text.split()) for cut in cuts
                             if cut.supervisions[0].speaker == speaker)
                for speaker in HELD_OUT_IDS}
    assert words == expected


def test_bad_options_fail_in_one_line(tmp_path: Path) -> None:
    result = run_script(["tools/held_out_dev_set.py", "--corpus-dir", str(tmp_path),
                         "--out-dir", str(tmp_path / "out")], tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "held_out_dev_set.py: error: no transcripts under")
    result = run_script(["tools/held_out_dev_set.py", "--num-utts", "0"], tmp_path)
    assert result.returncode == 1 and "--num-utts must be positive" in result.stderr
