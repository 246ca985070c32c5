"""Stage 5 of prepare.sh on a tiny corpus: words.txt, lexicon, L, the ARPA LM,
G, LG, and the tensor format of shared/fsa_search.py.

The corpus and its sentencepiece model are made in a temporary directory with
stage 4's settings (<blk> = 0, <sos/eos> = 1, <unk> = 2). Graphs are checked by
walking their tensors with a small Viterbi search written here, independent of
the code under test, and LM scores against the ARPA file read here.
"""

import math
import os
import random
import sys
from pathlib import Path

import kaldifst
import pytest
import sentencepiece as spm
import torch

from local import lg_graph
from shared.fsa_search import (
    DecodingGraph,
    load_decoding_graph,
    read_word_table,
    trivial_graph,
    word_ids_to_words,
)
from tests.helpers import import_script

PROJECT_DIR = Path(__file__).resolve().parent.parent

# Several words are prefixes of others (THE/THEY/THEM/THERE, CAT/CATS, ...),
# the case that needs care when words are emitted on graph arcs.
CORPUS_WORDS = (
    "THE THEY THEM THERE THESE CAT CATS SAT ON MAT DOG DOGS RAN TO HOUSE HOUSES "
    "BIG SMALL RED READ A AN AND"
).split()
NUM_SENTENCES = 80
# Small enough that sentencepiece spells THE/THEM, CAT/CATS, DOG/DOGS so that
# the shorter word's spelling is a prefix of the longer one's.
VOCAB_SIZE = 30


def run_main(script: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """main() of local/`script` in-process, on the command line `argv`."""
    monkeypatch.setattr(sys, "argv", [script, *argv])
    return import_script(PROJECT_DIR / "local" / script).main()


@pytest.fixture(scope="module")
def lang_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lang dir as stage 4 leaves it, then stage 5 run on it."""
    lang_dir = tmp_path_factory.mktemp("lang_bpe")
    rng = random.Random(0)
    sentences = [
        " ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(2, 7)))
        for _ in range(NUM_SENTENCES)
    ]
    (lang_dir / "transcript_words.txt").write_text("\n".join(sentences) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(lang_dir / "transcript_words.txt"),
        model_prefix=str(lang_dir / "bpe"),
        model_type="unigram",
        vocab_size=VOCAB_SIZE,
        character_coverage=1.0,
        user_defined_symbols=["<blk>", "<sos/eos>"],
        unk_id=2,
        bos_id=-1,
        eos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(lang_dir / "bpe.model"))
    (lang_dir / "tokens.txt").write_text(
        "".join(f"{sp.id_to_piece(i)} {i}\n" for i in range(sp.get_piece_size()))
    )
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert run_main("prepare_lang_bpe.py", ["--lang-dir", str(lang_dir)], monkeypatch) == 0
        assert run_main("prepare_lm.py", ["--lang-dir", str(lang_dir), "--order", "3"],
                        monkeypatch) == 0
        assert run_main("compile_lg.py", ["--lang-dir", str(lang_dir)], monkeypatch) == 0
    return lang_dir


@pytest.fixture(scope="module")
def sp(lang_dir: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(lang_dir / "bpe.model"))


@pytest.fixture(scope="module")
def sentences(lang_dir: Path) -> list[str]:
    return (lang_dir / "transcript_words.txt").read_text().splitlines()


@pytest.fixture(scope="module")
def lg(lang_dir: Path) -> DecodingGraph:
    return load_decoding_graph(lang_dir / "LG.fst", "cpu")


def read_table(path: Path) -> dict[str, int]:
    return {line.split()[0]: int(line.split()[1]) for line in path.read_text().splitlines()}


# ----------------------------------------------------- independent checkers


def best_path(graph: DecodingGraph, tokens: list[int]) -> tuple[float, list[int]] | None:
    """Viterbi over the graph tensors: the best (score, word ids) of a path
    that consumes exactly `tokens` and ends in a final state, or None."""
    active: dict[int, tuple[float, list[int]]] = {graph.start_state: (0.0, [])}
    for token in tokens:
        reached: dict[int, tuple[float, list[int]]] = {}
        for state, (score, words) in active.items():
            # The state itself, then each state down its back-off chain.
            while state >= 0:
                begin = int(graph.state_arc_begin[state])
                end = int(graph.state_arc_end[state])
                for arc in range(begin, end):
                    if int(graph.arc_label[arc]) != token:
                        continue
                    dst = int(graph.arc_dst[arc])
                    new_score = score + float(graph.arc_score[arc])
                    if dst not in reached or reached[dst][0] < new_score:
                        reached[dst] = (new_score, [*words, int(graph.arc_word[arc])])
                score += float(graph.backoff_score[state])
                state = int(graph.backoff_state[state])
        active = reached
    endings = [
        (score + float(graph.final_score[state]), words)
        for state, (score, words) in active.items()
        if graph.final_score[state] > -math.inf
    ]
    return max(endings, key=lambda ending: ending[0], default=None)


def read_arpa(path: Path) -> tuple[dict[int, int], dict[tuple, float], dict[tuple, float]]:
    """(counts in the header, log10 probs, log10 back-off weights)."""
    header: dict[int, int] = {}
    log_probs: dict[tuple, float] = {}
    backoffs: dict[tuple, float] = {}
    section = None
    lines = path.read_text().splitlines()
    assert lines[0] == "\\data\\" and lines[-1] == "\\end\\"
    for line in lines[1:-1]:
        if not line:
            continue
        if line.startswith("ngram "):
            order, count = line.removeprefix("ngram ").split("=")
            header[int(order)] = int(count)
        elif line.startswith("\\") and line.endswith("-grams:"):
            section = int(line[1:].split("-")[0])
        else:
            fields = line.split("\t")
            ngram = tuple(fields[1].split())
            assert len(ngram) == section, line
            log_probs[ngram] = float(fields[0])
            if len(fields) == 3:
                backoffs[ngram] = float(fields[2])
    return header, log_probs, backoffs


def arpa_log10_prob(
    log_probs: dict[tuple, float], backoffs: dict[tuple, float], history: tuple, word: str
) -> float:
    """ARPA semantics: the listed probability, else back-off weight + lower order."""
    if (*history, word) in log_probs:
        return log_probs[(*history, word)]
    return backoffs.get(history, 0.0) + arpa_log10_prob(log_probs, backoffs, history[1:], word)


def arpa_sentence_log_prob(arpa: Path, words: list[str], order: int = 3) -> float:
    """Natural-log probability of "<s> words </s>" under the ARPA LM."""
    _, log_probs, backoffs = read_arpa(arpa)
    padded = ["<s>", *words, "</s>"]
    total = 0.0
    for i in range(1, len(padded)):
        history = tuple(padded[max(0, i - order + 1) : i])
        total += arpa_log10_prob(log_probs, backoffs, history, padded[i])
    return total * math.log(10)


def check_graph_invariants(graph: DecodingGraph) -> None:
    """The layout promised by shared/fsa_search.py."""
    num_arcs, num_states = graph.num_arcs, graph.num_states
    for name in ("arc_src", "arc_dst", "arc_label", "arc_word"):
        tensor = getattr(graph, name)
        assert tensor.dtype == torch.int64 and tensor.shape == (num_arcs,), name
    assert graph.arc_score.dtype == torch.float32 and graph.arc_score.shape == (num_arcs,)
    for name in ("final_score", "backoff_score"):
        tensor = getattr(graph, name)
        assert tensor.dtype == torch.float32 and tensor.shape == (num_states,), name
    for name in ("state_arc_begin", "state_arc_end", "backoff_state"):
        tensor = getattr(graph, name)
        assert tensor.dtype == torch.int64 and tensor.shape == (num_states,), name
    assert 0 <= graph.start_state < num_states
    assert bool((graph.arc_label >= 1).all()), "arcs must be epsilon-free and blank-free"
    assert bool((graph.arc_src[1:] >= graph.arc_src[:-1]).all())
    same_src = graph.arc_src[1:] == graph.arc_src[:-1]
    assert bool((graph.arc_label[1:][same_src] >= graph.arc_label[:-1][same_src]).all())
    assert int(graph.state_arc_begin[0]) == 0 and int(graph.state_arc_end[-1]) == num_arcs
    assert torch.equal(graph.state_arc_begin[1:], graph.state_arc_end[:-1])
    for state in range(num_states):
        begin, end = int(graph.state_arc_begin[state]), int(graph.state_arc_end[state])
        assert bool((graph.arc_src[begin:end] == state).all())
    no_backoff = graph.backoff_state < 0
    assert bool(torch.isneginf(graph.backoff_score[no_backoff]).all())
    assert bool(torch.isfinite(graph.backoff_score[~no_backoff]).all())
    assert graph.max_backoff_depth == 0 or not bool(no_backoff.all())


# -------------------------------------------------------------------- tests


def test_words_and_lexicon_are_consistent(
    lang_dir: Path, sp: spm.SentencePieceProcessor, sentences: list[str]
) -> None:
    words_lines = (lang_dir / "words.txt").read_text().splitlines()
    symbols = [line.split()[0] for line in words_lines]
    assert [int(line.split()[1]) for line in words_lines] == list(range(len(words_lines)))
    assert symbols[:4] == ["<eps>", "!SIL", "<SPOKEN_NOISE>", "<UNK>"]
    assert symbols[-3:] == ["#0", "<s>", "</s>"]
    transcript_vocabulary = sorted({word for line in sentences for word in line.split()})
    assert symbols[4:-3] == transcript_vocabulary

    token2id = read_table(lang_dir / "tokens.txt")
    lexicon = [line.split() for line in (lang_dir / "lexicon.txt").read_text().splitlines()]
    assert [entry[0] for entry in lexicon] == [*transcript_vocabulary, "<UNK>"]
    for word, *pieces in lexicon:
        expected = [sp.id_to_piece(sp.unk_id())] if word == "<UNK>" else sp.encode(
            word, out_type=str
        )
        assert pieces == expected, word
        assert all(token2id[piece] != 0 for piece in pieces)
    spellings = [pieces for _, *pieces in lexicon]
    assert any(
        len(short) < len(long) and long[: len(short)] == short
        for short in spellings for long in spellings
    ), "the corpus should have a word whose spelling is a prefix of another's"

    # L maps each word's token ids to its word id, and nothing else.
    lexicon_graph = load_decoding_graph(lang_dir / "L.fst")
    check_graph_invariants(lexicon_graph)
    word2id = read_table(lang_dir / "words.txt")
    for word, *pieces in lexicon:
        path = best_path(lexicon_graph, [token2id[piece] for piece in pieces])
        assert path is not None and [w for w in path[1] if w] == [word2id[word]]
    l_disambig = kaldifst.StdVectorFst.read(str(lang_dir / "L_disambig.fst"))
    loop_arcs = list(kaldifst.ArcIterator(l_disambig, l_disambig.start))
    disambig = [arc for arc in loop_arcs if arc.olabel == word2id["#0"]]
    assert len(disambig) == 1 and disambig[0].ilabel == max(token2id.values()) + 1


def test_arpa_is_normalized_and_accepted_by_kaldilm(lang_dir: Path) -> None:
    header, log_probs, backoffs = read_arpa(lang_dir / "G_3_gram.arpa")
    assert header == {k: sum(len(ngram) == k for ngram in log_probs) for k in (1, 2, 3)}
    vocabulary = [ngram[0] for ngram in log_probs if len(ngram) == 1 and ngram[0] != "<s>"]
    assert log_probs[("<s>",)] == -99.0
    # Every history of a listed n-gram is listed (ARPA needs it for its back-off).
    histories = {ngram[:-1] for ngram in log_probs}
    assert all(history in log_probs for history in histories if history)
    for history in sorted(histories):
        total = sum(
            10 ** arpa_log10_prob(log_probs, backoffs, history, word) for word in vocabulary
        )
        assert total == pytest.approx(1.0, abs=1e-4), history

    # kaldilm's G: OpenFst binary and text agree, and back-off arcs read #0.
    grammar = kaldifst.StdVectorFst.read(str(lang_dir / "G_3_gram.fst"))
    assert grammar.num_states > 0
    text_lines = (lang_dir / "G_3_gram.fst.txt").read_text().splitlines()
    num_arcs = sum(len(line.split()) >= 4 for line in text_lines)
    assert num_arcs == sum(1 for s in range(grammar.num_states)
                           for _ in kaldifst.ArcIterator(grammar, s))
    disambig = read_table(lang_dir / "words.txt")["#0"]
    assert any(line.split()[2:4] == [str(disambig), "0"] for line in text_lines)


def test_lg_accepts_training_sentences_with_their_words_and_lm_scores(
    lang_dir: Path, lg: DecodingGraph, sp: spm.SentencePieceProcessor, sentences: list[str]
) -> None:
    check_graph_invariants(lg)
    assert lg.max_backoff_depth == 2  # trigram -> bigram -> unigram history
    # Where a token completes one word (CAT) and continues another (CATS),
    # a state has two arcs for it: one outputs the word, one does not.
    same_token = (lg.arc_src[1:] == lg.arc_src[:-1]) & (lg.arc_label[1:] == lg.arc_label[:-1])
    assert bool((same_token & ((lg.arc_word[1:] == 0) != (lg.arc_word[:-1] == 0))).any())
    id2word = read_word_table(lang_dir / "words.txt")
    for sentence in sentences:
        path = best_path(lg, sp.encode(sentence))
        assert path is not None, sentence
        score, word_ids = path
        assert word_ids_to_words(word_ids, id2word) == sentence.split()
        expected = arpa_sentence_log_prob(lang_dir / "G_3_gram.arpa", sentence.split())
        assert score == pytest.approx(expected, abs=1e-3), sentence


def test_lg_backs_off_to_unseen_word_sequences(
    lang_dir: Path, lg: DecodingGraph, sp: spm.SentencePieceProcessor, sentences: list[str]
) -> None:
    seen = {tuple(s.split()[i : i + 2]) for s in sentences for i in range(len(s.split()) - 1)}
    unseen = next(
        [a, b] for a in CORPUS_WORDS for b in CORPUS_WORDS if (a, b) not in seen
    )
    path = best_path(lg, sp.encode(" ".join(unseen)))
    assert path is not None
    assert word_ids_to_words(path[1], read_word_table(lang_dir / "words.txt")) == unseen
    expected = arpa_sentence_log_prob(lang_dir / "G_3_gram.arpa", unseen)
    assert path[0] == pytest.approx(expected, abs=1e-3)
    # Even the empty sentence: <s> backs off to the unigram </s>, which final
    # scores must include.
    empty = best_path(lg, [])
    assert empty is not None and empty[1] == []
    assert empty[0] == pytest.approx(arpa_sentence_log_prob(lang_dir / "G_3_gram.arpa", []),
                                     abs=1e-3)


def test_lg_rejects_out_of_vocabulary_words_and_unfinished_words(
    lg: DecodingGraph, sp: spm.SentencePieceProcessor
) -> None:
    # An out-of-vocabulary word spelt with pieces that all exist.
    oov = next(
        a + b for a in CORPUS_WORDS for b in CORPUS_WORDS
        if a + b not in CORPUS_WORDS and sp.unk_id() not in sp.encode(a + b)
    )
    assert best_path(lg, sp.encode(oov)) is None
    assert best_path(lg, sp.encode(f"THE {oov} SAT")) is None
    # A sentence cut inside a multi-piece word is not complete.
    long_word = next(word for word in CORPUS_WORDS if len(sp.encode(word)) > 1)
    assert best_path(lg, sp.encode(f"THE {long_word}")) is not None
    assert best_path(lg, sp.encode(f"THE {long_word}")[:-1]) is None


def test_lg_without_backoff_links_accepts_the_same(
    lang_dir: Path, lg: DecodingGraph, sp: spm.SentencePieceProcessor, sentences: list[str],
    tmp_path: Path,
) -> None:
    word_disambig = read_table(lang_dir / "words.txt")["#0"]
    no_backoff = lg_graph.compile_lg(
        kaldifst.StdVectorFst.read(str(lang_dir / "L_disambig.fst")),
        kaldifst.StdVectorFst.read(str(lang_dir / "G_3_gram.fst")),
        word_disambig,
        remove_backoff_epsilons=True,
        minimize=True,
    )
    no_backoff.write(str(tmp_path / "LG.fst"))
    graph = load_decoding_graph(tmp_path / "LG.fst")
    check_graph_invariants(graph)
    assert graph.max_backoff_depth == 0 and graph.num_arcs > lg.num_arcs
    for sentence in sentences[:20]:
        tokens = sp.encode(sentence)
        with_links, without_links = best_path(lg, tokens), best_path(graph, tokens)
        assert with_links is not None and without_links is not None
        assert without_links[1] == with_links[1]
        assert without_links[0] == pytest.approx(with_links[0], abs=1e-3)


def test_backoff_closure_follows_chains(lg: DecodingGraph) -> None:
    states = torch.arange(lg.num_states)
    scores = torch.zeros(lg.num_states)
    closure_states, closure_scores, origin = lg.backoff_closure(states, scores)
    assert torch.equal(closure_states[: lg.num_states], states)
    for state in range(0, lg.num_states, 7):
        expected_states, expected_scores, score, current = [], [], 0.0, state
        while current >= 0:
            expected_states.append(current)
            expected_scores.append(score)
            score += float(lg.backoff_score[current])
            current = int(lg.backoff_state[current])
        mine = origin == state
        assert closure_states[mine].tolist() == expected_states
        assert closure_scores[mine].tolist() == pytest.approx(expected_scores)


def test_trivial_graph_accepts_every_token_sequence() -> None:
    vocab_size = 7
    graph = trivial_graph(vocab_size)
    check_graph_invariants(graph)
    assert graph.num_states == 1 and graph.num_arcs == vocab_size - 1
    assert graph.arc_label.tolist() == list(range(1, vocab_size))
    assert graph.max_backoff_depth == 0
    rng = random.Random(1)
    for length in (0, 1, 5, 20):
        tokens = [rng.randrange(1, vocab_size) for _ in range(length)]
        assert best_path(graph, tokens) == (0.0, [0] * length)
    assert best_path(graph, [0]) is None  # the blank is never an arc label
    assert trivial_graph(vocab_size, "cpu").to("cpu").num_arcs == vocab_size - 1


def test_rerunning_is_a_no_op_until_an_input_changes(
    lang_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = ["words.txt", "lexicon.txt", "L.fst", "L_disambig.fst", "G_3_gram.arpa",
               "G_3_gram.fst.txt", "G_3_gram.fst", "LG.fst"]
    before = {name: (lang_dir / name).stat().st_mtime_ns for name in outputs}
    for script, extra in (("prepare_lang_bpe.py", []), ("prepare_lm.py", ["--order", "3"]),
                          ("compile_lg.py", [])):
        assert run_main(script, ["--lang-dir", str(lang_dir), *extra], monkeypatch) == 0
    assert {name: (lang_dir / name).stat().st_mtime_ns for name in outputs} == before

    # A newer words.txt makes the LM stale (and only the LM step reruns here).
    newer = before["LG.fst"] + 10**9
    os.utime(lang_dir / "words.txt", ns=(newer, newer))
    assert run_main("prepare_lm.py", ["--lang-dir", str(lang_dir)], monkeypatch) == 0
    assert (lang_dir / "G_3_gram.arpa").stat().st_mtime_ns > before["G_3_gram.arpa"]
    assert (lang_dir / "lexicon.txt").stat().st_mtime_ns == before["lexicon.txt"]


def test_missing_input_fails_with_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main("prepare_lang_bpe.py", ["--lang-dir", str(tmp_path)], monkeypatch) == 1
    assert run_main("prepare_lm.py", ["--lang-dir", str(tmp_path)], monkeypatch) == 1
    assert run_main("compile_lg.py", ["--lang-dir", str(tmp_path)], monkeypatch) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "ERROR" in line]
    assert len(errors) == 3
    assert f"missing {tmp_path / 'bpe.model'}" in errors[0]
    assert "./prepare.sh --stage 4 --stop-stage 4" in errors[0]
    assert f"missing {tmp_path / 'transcript_words.txt'}" in errors[1]
    assert f"missing {tmp_path / 'L_disambig.fst'}" in errors[2]


@pytest.mark.parametrize("script", ["prepare_lang_bpe.py", "prepare_lm.py", "compile_lg.py"])
def test_scripts_are_executable(script: str) -> None:
    """prepare.sh starts them as ./local/SCRIPT."""
    path = PROJECT_DIR / "local" / script
    assert path.read_text().startswith("#!/usr/bin/env python3\n")
    assert os.access(path, os.X_OK)
