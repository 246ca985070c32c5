"""decode.py end to end on the tiny model trained by tests/conftest.py."""

import shutil
from pathlib import Path

import pytest
import torch

from pruned_transducer_stateless4.decoding_methods import methods
from shared.metrics import read_recogs as read_word_lists
from shared.metrics import word_error_rate
from shared.utils import RecipeError
from tests.helpers import PROJECT_DIR, TINY_MODEL_ARGS, import_script, run_script

DECODE_PY = PROJECT_DIR / "pruned_transducer_stateless4/decode.py"

SEARCH_ARGS = [
    "--bpe-model", "data/lang_bpe_100/bpe.model", "--lang-dir", "data/lang_bpe_100",
    "--max-duration", "60", "--beam-size", "2", "--beam", "8", "--max-states", "16",
    "--max-contexts", "4", "--num-paths", "6", "--ngram-lm-scale", "0.3",
]


@pytest.fixture(scope="module")
def decode_exp_dir(trained_exp_dir: Path, tmp_path_factory) -> Path:
    """A fresh exp dir whose checkpoints link to the trained ones, so the
    results of these tests stay out of the shared trained_exp_dir."""
    exp_dir = tmp_path_factory.mktemp("decode_exp")
    for path in trained_exp_dir.glob("*.pt"):
        (exp_dir / path.name).symlink_to(path.resolve())
    # The tiny run saves few checkpoint-B.pt files; an epoch-N.pt file is
    # also the checkpoint of its batch count, so offer it under that name.
    for path in trained_exp_dir.glob("epoch-*.pt"):
        batch = torch.load(path, map_location="cpu", weights_only=False)["params"][
            "batch_idx_train"]
        if not (exp_dir / f"checkpoint-{batch}.pt").exists():
            (exp_dir / f"checkpoint-{batch}.pt").symlink_to(path.resolve())
    return exp_dir


@pytest.fixture
def in_recipe(prepared_dir: Path, monkeypatch) -> Path:
    monkeypatch.chdir(prepared_dir)
    torch.set_num_threads(1)
    return prepared_dir


def output_files(res_dir: Path, part: str) -> dict[str, list[Path]]:
    return {kind: sorted(res_dir.glob(f"{kind}-{part}-*.txt"))
            for kind in ("recogs", "errs", "wer-summary")}


def read_recogs(path: Path) -> dict[str, tuple[str, str]]:
    lines = [line for line in path.read_text().splitlines() if ":\ttimestamp_hyp=" not in line]
    pairs = {}
    for ref_line, hyp_line in zip(lines[::2], lines[1::2]):
        cut_id, ref = ref_line.split(":\tref=")
        hyp_id, hyp = hyp_line.split(":\thyp=")
        assert cut_id == hyp_id
        pairs[cut_id] = (ref, hyp)
    return pairs


@pytest.mark.parametrize("method", methods())
def test_decode_writes_the_three_files_for_every_method(method, in_recipe, decode_exp_dir):
    wers = import_script(DECODE_PY).main([
        "--exp-dir", str(decode_exp_dir), "--epoch", "2", "--avg", "1",
        "--use-averaged-model", "true", "--decoding-method", method,
        "--test-sets", "test-clean", *SEARCH_ARGS,
    ])
    assert set(wers) == {"test-clean"}
    res_dir = decode_exp_dir / method
    files = output_files(res_dir, "test-clean")
    assert all(len(paths) == 1 for paths in files.values()), files
    recogs = read_recogs(files["recogs"][0])
    assert len(recogs) == 12
    assert all(ref != "[]" for ref, _ in recogs.values())
    # The WER main() returns is the one of the hypotheses it wrote.
    word_lists = read_word_lists(files["recogs"][0]).values()
    assert wers["test-clean"] == pytest.approx(word_error_rate(
        [" ".join(ref) for ref, _ in word_lists], [" ".join(hyp) for _, hyp in word_lists]))
    errs = files["errs"][0].read_text()
    assert errs.startswith(f"%WER = {wers['test-clean'] * 100:.2f}")
    assert "PER-UTT DETAILS" in errs and "PER-WORD STATS" in errs
    summary = files["wer-summary"][0].read_text().splitlines()
    assert summary[0] == "settings\tWER"
    key, wer = summary[1].split("\t")
    assert float(wer) == pytest.approx(wers["test-clean"] * 100, abs=0.006)
    suffix = "epoch-2-avg-1-use-averaged-model"
    assert files["recogs"][0].name == f"recogs-test-clean-{key}-{suffix}.txt"


def test_decode_pretrained_as_epoch_999_equals_its_checkpoint(in_recipe, decode_exp_dir,
                                                              tmp_path):
    checkpoint = torch.load(decode_exp_dir / "epoch-2.pt", map_location="cpu",
                            weights_only=False)
    exp_dir = tmp_path / "exported"
    exp_dir.mkdir()
    torch.save({"model": checkpoint["model"], "params": checkpoint["params"]},
               exp_dir / "pretrained.pt")
    (exp_dir / "epoch-999.pt").symlink_to(exp_dir / "pretrained.pt")
    streaming = ["--simulate-streaming", "true", "--decode-chunk-size", "16",
                 "--left-context", "64", "--decoding-method", "greedy_search"]
    # As a script (also checks the command line), test-other given by path.
    cuts = in_recipe / "data/fbank/librispeech_cuts_test-other.jsonl.gz"
    result = run_script(
        ["pruned_transducer_stateless4/decode.py", "--exp-dir", str(exp_dir), "--epoch", "999",
         "--avg", "1", "--use-averaged-model", "0", "--test-sets", "test-clean", str(cuts),
         *streaming, *SEARCH_ARGS], in_recipe, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WER" in result.stderr
    import_script(DECODE_PY).main(["--exp-dir", str(decode_exp_dir), "--epoch", "2", "--avg", "1",
                 "--use-averaged-model", "false", "--test-sets", "test-other", *streaming,
                 *SEARCH_ARGS])
    ours = output_files(exp_dir / "greedy_search", "test-other")
    theirs = output_files(decode_exp_dir / "greedy_search", "test-other")
    assert len(ours["recogs"]) == 1
    assert "streaming-chunk-size-16-left-context-64" in ours["recogs"][0].name
    assert read_recogs(ours["recogs"][0]) == read_recogs(theirs["recogs"][0])
    assert output_files(exp_dir / "greedy_search", "test-clean")["wer-summary"]


def test_decode_icefall_pretrained_with_options_on_the_command_line(in_recipe, decode_exp_dir,
                                                                   tmp_path):
    """An icefall-format pretrained.pt ({"model": state_dict}, no options)
    linked as epoch-999.pt decodes with the model options given on the
    command line, exactly as the checkpoint it came from; without them (the
    defaults are icefall's 12 x 512) it is a one-line error."""
    checkpoint = torch.load(decode_exp_dir / "epoch-2.pt", map_location="cpu",
                            weights_only=False)
    exp_dir = tmp_path / "icefall"
    exp_dir.mkdir()
    torch.save({"model": checkpoint["model"]}, exp_dir / "pretrained.pt")
    (exp_dir / "epoch-999.pt").symlink_to(exp_dir / "pretrained.pt")
    streaming = ["--simulate-streaming", "true", "--decode-chunk-size", "16",
                 "--left-context", "64", "--decoding-method", "greedy_search",
                 "--test-sets", "test-clean"]
    import_script(DECODE_PY).main(["--exp-dir", str(exp_dir), "--epoch", "999", "--avg", "1",
                 "--use-averaged-model", "0", *TINY_MODEL_ARGS, *streaming, *SEARCH_ARGS])
    import_script(DECODE_PY).main(["--exp-dir", str(decode_exp_dir), "--epoch", "2", "--avg", "1",
                 "--use-averaged-model", "false", *streaming, *SEARCH_ARGS])
    ours = output_files(exp_dir / "greedy_search", "test-clean")["recogs"]
    theirs = [p for p in output_files(decode_exp_dir / "greedy_search", "test-clean")["recogs"]
              if "epoch-2-avg-1-streaming" in p.name]
    assert len(ours) == 1 and len(theirs) == 1, (ours, theirs)
    assert read_recogs(ours[0]) == read_recogs(theirs[0])
    with pytest.raises(RecipeError, match="does not fit the model") as error:
        import_script(DECODE_PY).main(["--exp-dir", str(exp_dir), "--epoch", "999", "--avg", "1",
                     "--use-averaged-model", "0", *streaming, *SEARCH_ARGS])
    assert "\n" not in str(error.value)
    with pytest.raises(RecipeError, match="use-averaged-model false"):
        import_script(DECODE_PY).main(["--exp-dir", str(exp_dir), "--epoch", "999", "--avg", "1",
                     *TINY_MODEL_ARGS, *streaming, *SEARCH_ARGS])


def decode_logs(res_dir: Path) -> str:
    return "".join(path.read_text() for path in sorted(res_dir.glob("log-decode-*")))


def test_decode_averaging_options(in_recipe, decode_exp_dir):
    batches = sorted(int(p.stem.split("-")[1]) for p in decode_exp_dir.glob("checkpoint-*.pt"))
    assert len(batches) >= 2, batches
    common = ["--exp-dir", str(decode_exp_dir), "--test-sets", "test-clean", *SEARCH_ARGS]
    res_dir = decode_exp_dir / "greedy_search"
    import_script(DECODE_PY).main(["--epoch", "2", "--avg", "2", "--use-averaged-model", "false",
                                   *common])
    assert "average of the models of 2 checkpoints epoch-1.pt .. epoch-2.pt" in \
        decode_logs(res_dir)
    import_script(DECODE_PY).main(["--iter", str(batches[-1]), "--avg", "1",
                                   "--use-averaged-model", "true", *common])
    assert (f"averaged model of the batches between checkpoint-{batches[-2]}.pt (batch "
            f"{batches[-2]}) and checkpoint-{batches[-1]}.pt") in decode_logs(res_dir)
    import_script(DECODE_PY).main(["--iter", str(batches[-1]), "--avg", "2",
                                   "--use-averaged-model", "false", *common])
    assert (f"2 checkpoints checkpoint-{batches[-2]}.pt .. checkpoint-{batches[-1]}.pt"
            in decode_logs(res_dir))
    # A model option typed on the command line that the checkpoint contradicts
    # is reported and ignored.
    import_script(DECODE_PY).main(["--epoch", "2", "--avg", "1", "--use-averaged-model", "false",
                 "--encoder-dim", "96", *common])
    assert "--encoder_dim=96 differs" in decode_logs(res_dir).replace("encoder-dim", "encoder_dim")
    names = {p.name for p in res_dir.glob("wer-summary-test-clean-*.txt")}
    assert {f"wer-summary-test-clean-greedy_search_max_sym_per_frame_1-{s}.txt" for s in (
        "epoch-2-avg-2", f"iter-{batches[-1]}-avg-1-use-averaged-model",
        f"iter-{batches[-1]}-avg-2", "epoch-2-avg-1")} <= names


def test_decode_errors_are_one_line(in_recipe, decode_exp_dir, tmp_path):
    exp_dir = tmp_path / "exp"
    exp_dir.mkdir()
    (exp_dir / "epoch-3.pt").write_bytes(b"not a checkpoint")
    shutil.copy(decode_exp_dir / "epoch-2.pt", exp_dir / "epoch-2.pt")
    common = ["--exp-dir", str(exp_dir), "--test-sets", "test-clean", *SEARCH_ARGS]
    cases = [
        (["--epoch", "5", "--avg", "1", "--use-averaged-model", "false"],
         "checkpoint", "does not exist"),
        (["--epoch", "3", "--avg", "1", "--use-averaged-model", "false"],
         "epoch-3.pt", "unreadable"),
        (["--epoch", "2", "--avg", "3", "--use-averaged-model", "true"],
         "--avg 3", "too large for --epoch 2"),
        (["--epoch", "2", "--avg", "1", "--use-averaged-model", "false",
          "--decoding-method", "fast_beam_search_LG", "--lang-dir", str(tmp_path / "nolang")],
         "LG.fst not found", "prepare.sh --stage 5"),
        (["--epoch", "2", "--avg", "1", "--use-averaged-model", "false", "--test-sets",
          "test-nothing"], "librispeech_cuts_test-nothing.jsonl.gz", "not found"),
        (["--epoch", "2", "--avg", "1", "--use-averaged-model", "false", "--bpe-model",
          str(tmp_path / "none.model")], "BPE model", "not found"),
    ]
    for args, *phrases in cases:
        with pytest.raises((FileNotFoundError, RecipeError)) as error:
            import_script(DECODE_PY).main([*common, *args])
        message = str(error.value)
        assert "\n" not in message and all(p in message for p in phrases), message
    # The script prints exactly one line and exits with status 1.
    result = run_script(["pruned_transducer_stateless4/decode.py", *common, "--epoch", "3",
                         "--avg", "1", "--use-averaged-model", "false"], in_recipe)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("decode.py: error: checkpoint")
    assert "Traceback" not in result.stderr
