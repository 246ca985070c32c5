"""Unit tests of the decoding methods against exhaustive search on toy models.

The toy model is a real Decoder + Joiner with random weights and a random
"encoder output"; its distributions are made sharp by scaling the joiner's
output layer, so that the best transcript is well separated.  Exhaustive
search enumerates every alignment (with the same topology as the method under
test) and scores it with the same log-probabilities.
"""

import itertools
import math
import random

import jiwer
import kaldialign
import kaldifst
import pytest
import torch
import torch.nn as nn

from pruned_transducer_stateless4 import beam_search as bs
from pruned_transducer_stateless4.decoder import Decoder
from pruned_transducer_stateless4.joiner import Joiner
from shared import fsa_search as fs
from shared.fsa_search import DecodingGraph, load_decoding_graph, trivial_graph
from shared.metrics import word_error_rate, write_error_stats

BLANK = 0
torch.set_num_threads(1)


class ToyModel(nn.Module):
    """Exposes .decoder and .joiner, all the decoding methods use."""

    def __init__(self, vocab_size: int, context_size: int, sharpness: float, seed: int,
                 blank_bias: float = 0.0, dim: int = 8):
        super().__init__()
        torch.manual_seed(seed)
        self.decoder = Decoder(vocab_size, dim, BLANK, context_size)
        self.joiner = Joiner(dim, dim, dim, vocab_size)
        with torch.no_grad():
            self.joiner.output_linear.weight.mul_(sharpness)
            self.joiner.output_linear.bias.mul_(sharpness)
            self.joiner.output_linear.bias[BLANK] += blank_bias
        self.eval()


class _LookupDecoder(nn.Module):
    def __init__(self, vocab_size: int, context_size: int):
        super().__init__()
        self.blank_id = BLANK
        self.context_size = context_size
        self.vocab_size = vocab_size

    def forward(self, y: torch.Tensor, need_pad: bool = False) -> torch.Tensor:
        index = torch.zeros(y.shape[:-1], dtype=torch.int64)
        for i in range(self.context_size):
            index = index * self.vocab_size + y[..., i]
        num_contexts = self.vocab_size ** self.context_size
        return nn.functional.one_hot(index, num_contexts).float().unsqueeze(-2)


class _LookupJoiner(nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.encoder_proj = nn.Identity()
        self.decoder_proj = nn.Identity()

    def forward(self, encoder_out, decoder_out, project_input: bool = False):
        table = encoder_out.unflatten(-1, (-1, self.vocab_size))  # (..., contexts, V)
        return (table * decoder_out.unsqueeze(-1)).sum(-2)


class TableModel(nn.Module):
    """A transducer whose "encoder output" is its own table of logits:
    encoder_out[n, t] holds, for every decoder context (as a base-V number),
    the V logits.  So any distribution can be written down exactly."""

    def __init__(self, vocab_size: int, context_size: int):
        super().__init__()
        self.decoder = _LookupDecoder(vocab_size, context_size)
        self.joiner = _LookupJoiner(vocab_size)


def sharp_table(num_frames: int, vocab_size: int, context_size: int, seed: int,
                margin: float = 5.0) -> torch.Tensor:
    """(1, T, V**c * V) logits: random, plus `margin` on one symbol per row,
    blank for half of the rows, a random token for the others."""
    gen = torch.Generator().manual_seed(seed)
    rows = num_frames * vocab_size ** context_size
    logits = torch.randn(rows, vocab_size, generator=gen)
    winner = torch.randint(1, vocab_size, (rows,), generator=gen)
    winner[torch.rand(rows, generator=gen) < 0.5] = BLANK
    logits[torch.arange(rows), winner] += margin
    return logits.view(1, num_frames, -1)


def log_prob_table(model: nn.Module, encoder_out: torch.Tensor) -> dict:
    """{(t, context): [log p(v) for v in vocab]} for one utterance (1, T, C)."""
    vocab_size = model.joiner.output_linear.out_features
    context_size = model.decoder.context_size
    contexts = list(itertools.product(range(vocab_size), repeat=context_size))
    with torch.no_grad():
        dec = model.joiner.decoder_proj(
            model.decoder(torch.tensor(contexts), need_pad=False)).squeeze(1)
        enc = model.joiner.encoder_proj(encoder_out[0])
        table = {}
        for t in range(enc.size(0)):
            logits = model.joiner(enc[t].expand_as(dec), dec, project_input=False)
            for context, row in zip(contexts, logits.log_softmax(-1).tolist()):
                table[(t, context)] = row
    return table


def exhaustive(table: dict, num_frames: int, vocab_size: int, context_size: int,
               max_sym_per_frame: int | None = None) -> dict[tuple, list[float]]:
    """Scores of every alignment, grouped by token sequence.

    max_sym_per_frame=None: one symbol per frame (blank or a token; the
    topology of modified beam search and fast beam search).  An integer K:
    up to K tokens then a blank at each frame (standard RNN-T, beam_search).
    """
    results: dict[tuple, list[float]] = {}

    def visit(t: int, seq: tuple, score: float) -> None:
        if t == num_frames:
            results.setdefault(seq, []).append(score)
            return
        context = ((BLANK,) * context_size + seq)[-context_size:]
        row = table[(t, context)]
        if max_sym_per_frame is None:
            visit(t + 1, seq, score + row[BLANK])
            for v in range(1, vocab_size):
                visit(t + 1, seq + (v,), score + row[v])
            return
        # Standard topology: emit k tokens at frame t, then blank.
        stack = [(seq, score, 0)]
        while stack:
            cur_seq, cur_score, k = stack.pop()
            cur_context = ((BLANK,) * context_size + cur_seq)[-context_size:]
            cur_row = table[(t, cur_context)]
            visit(t + 1, cur_seq, cur_score + cur_row[BLANK])
            if k < max_sym_per_frame:
                for v in range(1, vocab_size):
                    stack.append((cur_seq + (v,), cur_score + cur_row[v], k + 1))

    visit(0, (), 0.0)
    return results


def log_sum(scores: list[float]) -> float:
    peak = max(scores)
    return peak + math.log(sum(math.exp(s - peak) for s in scores))


def ranked(results: dict, combine, length_norm_ctx: int | None = None) -> list[tuple]:
    """Sequences sorted by combined score (best first), as (score, seq)."""
    out = []
    for seq, scores in results.items():
        score = combine(scores)
        if length_norm_ctx is not None:
            score /= len(seq) + length_norm_ctx
        out.append((score, seq))
    return sorted(out, reverse=True)


def toy_cases(vocab_size, context_size, num_frames, sharpness, seeds, blank_bias=0.0):
    for seed in seeds:
        model = ToyModel(vocab_size, context_size, sharpness, seed, blank_bias)
        torch.manual_seed(1000 + seed)
        encoder_out = torch.randn(1, num_frames, 8)
        yield seed, model, encoder_out, log_prob_table(model, encoder_out)


# ----------------------------------------------------------- hypothesis list


def test_hypothesis_list_merges_equal_sequences_by_log_add():
    hyps = bs.HypothesisList()
    hyps.add(bs.Hypothesis([0, 0, 3], math.log(0.2)))
    hyps.add(bs.Hypothesis([0, 0, 3], math.log(0.3)))
    hyps.add(bs.Hypothesis([0, 0, 4], math.log(0.4)))
    assert len(hyps) == 2
    best = hyps.get_most_probable()
    assert best.ys == [0, 0, 3] and best.log_prob == pytest.approx(math.log(0.5))
    assert [h.ys for h in hyps.topk(1)] == [[0, 0, 3]]
    assert len(hyps.filter(math.log(0.45))) == 1
    hyps.remove(best)
    assert (0, 0, 3) not in hyps and len(hyps) == 1


# ------------------------------------------------------------ greedy search


def test_greedy_search_one_utterance_equals_batch():
    model = ToyModel(6, 2, 3.0, seed=0)
    encoder_out = torch.randn(3, 9, 8)
    lens = torch.tensor([9, 6, 4])
    for max_sym in (1, 3):
        batch = bs.greedy_search_batch(model, encoder_out, lens, max_sym_per_frame=max_sym)
        single = [bs.greedy_search(model, encoder_out[i : i + 1, : lens[i]], max_sym)
                  for i in range(3)]
        assert batch == single


def test_beam_search_with_beam_1_equals_greedy():
    # Sharp distributions (the arg-max has probability > 0.9 at every step):
    # greedy's choices are then the best extensions, and beam 1 keeps them.
    model = TableModel(5, 2)
    tested = 0
    for seed in range(12):
        encoder_out = sharp_table(12, 5, 2, seed)
        greedy = bs.greedy_search(model, encoder_out, max_sym_per_frame=8)
        if greedy != bs.greedy_search(model, encoder_out, max_sym_per_frame=20):
            continue  # the table has a token cycle; greedy stops it at the cap
        beam = bs.beam_search(model, encoder_out, beam=1, max_sym_per_frame=8)
        assert beam == greedy, seed
        tested += 1
    assert tested >= 4


# ------------------------------------------------------- beam search (Graves)


def test_beam_search_agrees_with_exhaustive_search():
    tested = 0
    for seed, model, encoder_out, table in toy_cases(3, 2, 4, sharpness=2.0, seeds=range(8),
                                                     blank_bias=1.0):
        results = exhaustive(table, 4, 3, 2, max_sym_per_frame=2)
        best = ranked(results, log_sum)
        if best[0][0] - best[1][0] < 0.1:
            continue  # no clear winner
        tested += 1
        hyp = bs.beam_search(model, encoder_out, beam=16, max_sym_per_frame=2, length_norm=False)
        assert tuple(hyp) == best[0][1], seed
    assert tested >= 3


# -------------------------------------------------------- modified beam search


@pytest.mark.parametrize("length_norm", [False, True])
def test_modified_beam_search_is_exact_with_a_large_beam(length_norm):
    vocab_size, context_size, num_frames = 3, 2, 5
    encoder_outs, expected = [], []
    models = []
    for _, model, encoder_out, table in toy_cases(vocab_size, context_size, num_frames, 2.0,
                                                  seeds=range(4)):
        results = exhaustive(table, num_frames, vocab_size, context_size)
        best = ranked(results, log_sum, context_size if length_norm else None)
        assert best[0][0] > best[1][0] + 1e-6
        hyp = bs.modified_beam_search(model, encoder_out, torch.tensor([num_frames]),
                                      beam=64, length_norm=length_norm)
        assert tuple(hyp[0]) == best[0][1]
        models.append(model)
        encoder_outs.append(encoder_out)
        expected.append(best[0][1])


def test_modified_beam_search_batch_equals_single_utterances():
    model = ToyModel(6, 2, 3.0, seed=1)
    encoder_out = torch.randn(3, 8, 8)
    lens = torch.tensor([8, 5, 2])
    batch = bs.modified_beam_search(model, encoder_out, lens, beam=4)
    single = [bs.modified_beam_search(model, encoder_out[i : i + 1, : lens[i]], lens[i : i + 1],
                                      beam=4)[0] for i in range(3)]
    assert batch == single


# ------------------------------------------------------------ fast beam search

LARGE = dict(beam=1000.0, max_states=10000, max_contexts=10000)


def test_beam_search_imports_icefall_fast_beam_search_names():
    """icefall's recipes import the fast_beam_search functions from
    beam_search.py: there they are fsa_search's functions (imported, not
    copies)."""
    for name in ("fast_beam_search", "fast_beam_search_one_best", "fast_beam_search_LG",
                 "fast_beam_search_nbest", "fast_beam_search_nbest_LG"):
        assert getattr(bs, name) is getattr(fs, name), name


def test_fast_beam_search_is_exact_viterbi_with_large_beams():
    vocab_size, context_size, num_frames = 3, 2, 5
    for seed, model, encoder_out, table in toy_cases(vocab_size, context_size, num_frames, 2.0,
                                                     seeds=range(4)):
        results = exhaustive(table, num_frames, vocab_size, context_size)
        best = ranked(results, max)
        lattice = fs.fast_beam_search(model, trivial_graph(vocab_size), encoder_out,
                                      torch.tensor([num_frames]), **LARGE)[0]
        path = lattice.best_path()
        assert tuple(path.tokens) == best[0][1], seed
        assert path.score == pytest.approx(best[0][0], abs=1e-4)
        # The unpruned lattice holds every alignment: its total score per
        # sequence is the log-sum over that sequence's alignments.
        seqs = [list(seq) for seq in results]
        totals = lattice.total_scores(seqs)
        expected = torch.tensor([log_sum(results[tuple(s)]) for s in seqs], dtype=torch.float64)
        torch.testing.assert_close(totals, expected, atol=1e-4, rtol=0)
        # ... and its backward score at the start is the log-sum of all paths.
        all_scores = [s for scores in results.values() for s in scores]
        assert float(lattice.backward_scores()[0]) == pytest.approx(log_sum(all_scores), abs=1e-4)
        # nbest with many paths finds the sequence with the best total score.
        best_sum = ranked(results, log_sum)[0][1]
        gen = torch.Generator().manual_seed(seed)
        assert tuple(fs.nbest_best_sequence(lattice, 300, 1.0, generator=gen)) == best_sum


def test_fast_beam_search_nbest_with_one_path_is_the_best_path():
    model = ToyModel(7, 2, 2.0, seed=3)
    encoder_out = torch.randn(4, 10, 8)
    lens = torch.tensor([10, 9, 6, 3])
    graph = trivial_graph(7)
    one_best = fs.fast_beam_search_one_best(model, graph, encoder_out, lens, 8.0, 16, 4)
    nbest = fs.fast_beam_search_nbest(model, graph, encoder_out, lens, 8.0, 16, 4, num_paths=1)
    assert nbest == one_best
    # A lattice pruned to a single path: every sample is that path.
    lattice = fs.fast_beam_search(model, graph, encoder_out[:1], lens[:1], 8.0, 1, 1)[0]
    assert lattice.num_arcs == 10
    assert fs.nbest_best_sequence(lattice, 20) == lattice.best_path().tokens


def test_fast_beam_search_random_paths_follow_the_distribution():
    model = ToyModel(3, 1, 1.0, seed=5)
    encoder_out = torch.randn(1, 3, 8)
    lattice = fs.fast_beam_search(model, trivial_graph(3), encoder_out, torch.tensor([3]),
                                  **LARGE)[0]
    gen = torch.Generator().manual_seed(0)
    paths = lattice.random_paths(4000, 1.0, gen)
    counts: dict[tuple, int] = {}
    for arcs in paths:
        counts[tuple(arcs)] = counts.get(tuple(arcs), 0) + 1
    log_z = float(lattice.backward_scores()[0])
    for arcs, count in counts.items():
        prob = math.exp(float(lattice.arc_score[list(arcs)].double().sum()) - log_z)
        assert abs(count / 4000 - prob) < 4 * math.sqrt(prob * (1 - prob) / 4000) + 1e-3


def test_fast_beam_search_batch_and_chunks_equal_single_utterances():
    model = ToyModel(8, 2, 2.0, seed=2)
    encoder_out = torch.randn(3, 12, 8)
    lens = torch.tensor([12, 7, 4])
    graph = trivial_graph(8)
    config = fs.FastBeamSearchConfig(beam=6.0, max_states=8, max_contexts=4)
    batch = fs.fast_beam_search(model, graph, encoder_out, lens, 6.0, 8, 4)
    single = [fs.fast_beam_search(model, graph, encoder_out[i : i + 1, : lens[i]],
                                  lens[i : i + 1], 6.0, 8, 4)[0] for i in range(3)]
    # Streaming: chunks of 5 frames, partial results along the way.
    streams = [fs.FastBeamSearchStream(graph, context_size=2) for _ in range(3)]
    for start in range(0, 12, 5):
        chunk_lens = (lens - start).clamp(min=0, max=5)
        fs.FastBeamSearchStreams(model, streams, config).advance(
            encoder_out[:, start : start + 5], chunk_lens)
        for stream, n in zip(streams, chunk_lens.tolist()):
            assert stream.best_path(final=False).score > -math.inf or n == 0
    for a, b, stream in zip(batch, single, streams):
        c = stream.lattice()
        # Same path; its score only up to float rounding (a batch sums the
        # same arc scores in another order than a single utterance does).
        paths = [lattice.best_path() for lattice in (a, b, c)]
        assert len({str((p.tokens, p.words, p.timestamps, p.arcs)) for p in paths}) == 1
        assert paths[1].score == pytest.approx(paths[0].score, rel=1e-6)
        assert paths[2].score == pytest.approx(paths[0].score, rel=1e-6)
        for x, y in ((a, b), (a, c)):
            assert x.num_states == y.num_states and x.num_arcs == y.num_arcs
            torch.testing.assert_close(x.arc_score, y.arc_score)
            assert torch.equal(x.arc_dst, y.arc_dst) and torch.equal(x.arc_label, y.arc_label)


def test_fast_beam_search_pruning_limits():
    model = ToyModel(20, 2, 0.5, seed=4)
    encoder_out = torch.randn(2, 15, 8)
    lens = torch.tensor([15, 11])
    lattices = fs.fast_beam_search(model, trivial_graph(20), encoder_out, lens, 5.0, 6, 3)
    for lattice in lattices:
        counts = lattice.state_offsets[1:] - lattice.state_offsets[:-1]
        # trivial graph: states == contexts
        assert int(counts.max()) <= 3
        for t in range(lattice.num_frames):
            a0, a1 = int(lattice.arc_offsets[t]), int(lattice.arc_offsets[t + 1])
            totals = lattice.state_score[lattice.arc_src[a0:a1]] + lattice.arc_score[a0:a1]
            assert float(totals.max() - totals.min()) <= 5.0 + 1e-4


# --------------------------------------------------------- LG-constrained search


def compile_graph(tmp_path, text: str) -> DecodingGraph:
    fst = kaldifst.compile(text)
    path = tmp_path / "G.fst"
    fst.write(str(path))
    return load_decoding_graph(path)


def test_graph_accepting_one_word_sequence_forces_the_output(tmp_path):
    # Words 1 = tokens (1 2), 2 = token (3); the graph accepts "1 2" only.
    graph = compile_graph(tmp_path, "0 1 1 0 0.5\n1 2 2 1 0\n2 3 3 2 0.2\n3 0.1\n")
    for seed in range(3):
        model = ToyModel(5, 2, 3.0, seed=seed)
        encoder_out = torch.randn(2, 9, 8)
        lens = torch.tensor([9, 6])
        free = fs.fast_beam_search_one_best(model, trivial_graph(5), encoder_out, lens)
        assert free != [[1, 2, 3], [1, 2, 3]]  # the model alone says something else
        words = fs.fast_beam_search_LG(model, graph, encoder_out, lens, ngram_lm_scale=0.01)
        assert words == [[1, 2], [1, 2]]
        tokens = fs.fast_beam_search_one_best(model, graph, encoder_out, lens)
        assert tokens == [[1, 2, 3], [1, 2, 3]]
        nbest = fs.fast_beam_search_nbest_LG(model, graph, encoder_out, lens, num_paths=5)
        assert nbest == [[1, 2], [1, 2]]
    # Too few frames for the three tokens: no final state, empty result.
    assert fs.fast_beam_search_LG(model, graph, encoder_out[:1, :2], torch.tensor([2])) == [[]]


def backoff_graph() -> DecodingGraph:
    """A small back-off 'LM' over tokens 1..3: state 0 = start, 1 = after
    token 1, 2 = unigram state; epsilon arcs are back-off links."""
    arcs = [  # src, dst, label, word, score
        (0, 1, 1, 11, -0.5), (0, 2, 0, 0, -1.0),
        (1, 0, 2, 12, -0.3), (1, 1, 1, 11, -2.0), (1, 2, 0, 0, -0.7),
        (2, 1, 1, 11, -1.0), (2, 2, 2, 12, -1.5), (2, 1, 3, 13, -2.0),
    ]
    src, dst, label, word, score = zip(*arcs)
    return DecodingGraph.from_arcs(
        arc_src=torch.tensor(src), arc_dst=torch.tensor(dst), arc_label=torch.tensor(label),
        arc_word=torch.tensor(word), arc_score=torch.tensor(score),
        final_score=torch.tensor([-0.1, -math.inf, -0.5]), start_state=0,
    )


def graph_viterbi(graph: DecodingGraph, tokens: tuple) -> tuple[float, tuple]:
    """Best graph score of a token sequence (back-off links before each
    token, folded final scores) and the words of that path."""
    best = {graph.start_state: (0.0, ())}
    for token in tokens:
        new: dict[int, tuple[float, tuple]] = {}
        for state, (score, words) in best.items():
            cur, cur_score = state, score
            while cur >= 0:
                for a in range(int(graph.state_arc_begin[cur]), int(graph.state_arc_end[cur])):
                    if int(graph.arc_label[a]) == token:
                        s = cur_score + float(graph.arc_score[a])
                        w = words + ((int(graph.arc_word[a]),) if int(graph.arc_word[a]) else ())
                        d = int(graph.arc_dst[a])
                        if d not in new or s > new[d][0]:
                            new[d] = (s, w)
                cur_score += float(graph.backoff_score[cur]) if graph.backoff_state[cur] >= 0 \
                    else 0.0
                cur = int(graph.backoff_state[cur])
        best = new
    finals = [(score + float(graph.final_score[s]), words) for s, (score, words) in best.items()]
    return max(finals, default=(-math.inf, ()))


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_fast_beam_search_with_backoff_graph_agrees_with_exhaustive_search(scale):
    graph = backoff_graph()
    assert graph.max_backoff_depth >= 1
    vocab_size, context_size, num_frames = 4, 2, 5
    for seed, model, encoder_out, table in toy_cases(vocab_size, context_size, num_frames, 1.5,
                                                     seeds=range(3)):
        results = exhaustive(table, num_frames, vocab_size, context_size)
        candidates = []
        for seq, scores in results.items():
            graph_score, words = graph_viterbi(graph, seq)
            if graph_score > -math.inf:
                candidates.append((max(scores) + scale * graph_score, seq, words))
        candidates.sort(reverse=True)
        assert candidates[0][0] > candidates[1][0] + 1e-5
        lattice = fs.fast_beam_search(model, graph, encoder_out, torch.tensor([num_frames]),
                                      ngram_lm_scale=scale, **LARGE)[0]
        path = lattice.best_path()
        assert path.score == pytest.approx(candidates[0][0], abs=1e-4), seed
        assert tuple(path.tokens) == candidates[0][1]
        assert tuple(path.words) == candidates[0][2]


# ----------------------------------------------------------------- metrics


def unique_alignment(ref: list[str], hyp: list[str]) -> bool:
    """True if exactly one minimum-cost (Levenshtein) alignment exists."""
    n, m = len(ref), len(hyp)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    count = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        for j in range(m + 1):
            if i == 0 and j == 0:
                count[i][j] = 1
                continue
            options = []
            if i > 0:
                options.append((cost[i - 1][j] + 1, count[i - 1][j]))
            if j > 0:
                options.append((cost[i][j - 1] + 1, count[i][j - 1]))
            if i > 0 and j > 0:
                options.append((cost[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]),
                                count[i - 1][j - 1]))
            best = min(c for c, _ in options)
            cost[i][j] = best
            count[i][j] = sum(k for c, k in options if c == best)
    return count[n][m] == 1


def jiwer_alignment(output, index: int = 0) -> list[tuple[str, str]]:
    pairs = []
    ref, hyp = output.references[index], output.hypotheses[index]
    for chunk in output.alignments[index]:
        if chunk.type in ("equal", "substitute"):
            pairs += list(zip(ref[chunk.ref_start_idx:chunk.ref_end_idx],
                              hyp[chunk.hyp_start_idx:chunk.hyp_end_idx]))
        elif chunk.type == "delete":
            pairs += [(w, "*") for w in ref[chunk.ref_start_idx:chunk.ref_end_idx]]
        else:
            pairs += [("*", w) for w in hyp[chunk.hyp_start_idx:chunk.hyp_end_idx]]
    return pairs


def test_wer_and_alignments_equal_jiwer_on_random_strings(tmp_path):
    rng = random.Random(0)
    words = ["A", "B", "C", "D", "E", "F"]
    refs, hyps = [], []
    compared = 0
    for _ in range(300):
        ref = [rng.choice(words) for _ in range(rng.randint(1, 9))]
        hyp = [rng.choice(words) for _ in range(rng.randint(0, 9))]
        refs.append(" ".join(ref))
        hyps.append(" ".join(hyp))
        output = jiwer.process_words(" ".join(ref), " ".join(hyp) or "")
        ours = kaldialign.align(ref, hyp, "*")
        errors = sum(r != h for r, h in ours)
        assert errors == output.substitutions + output.deletions + output.insertions
        if unique_alignment(ref, hyp):
            compared += 1
            assert ours == jiwer_alignment(output)
            stats = tmp_path / "errs.txt"
            wer = write_error_stats(stats, "x", [("utt", " ".join(ref), " ".join(hyp))])
            assert wer == pytest.approx(output.wer)
            line = stats.read_text().splitlines()[1]
            assert line.startswith(f"Errors: {output.insertions} insertions, "
                                   f"{output.deletions} deletions, "
                                   f"{output.substitutions} substitutions")
    assert compared >= 50
    assert word_error_rate(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps))
    results = [(f"u{i}", r, h) for i, (r, h) in enumerate(zip(refs, hyps))]
    assert write_error_stats(tmp_path / "all.txt", "x", results) == pytest.approx(
        jiwer.wer(refs, hyps))


# ------------------------------------------------------ the method table


def test_every_method_of_the_table_searches_a_batch(tmp_path):
    """Each row of decoding_methods.py, with the options add_search_arguments
    declares: its offline search gives one result per utterance (token ids,
    or word ids of its graph for an LG method), the streaming one on the same
    frames the same tokens as the offline one for greedy search."""
    import argparse

    from pruned_transducer_stateless4.decoding_methods import (
        DECODING_METHODS,
        SearchInputs,
        add_search_arguments,
    )

    parser = argparse.ArgumentParser()
    add_search_arguments(parser, DECODING_METHODS)
    options = parser.parse_args(["--beam", "4", "--max-states", "8", "--max-contexts", "4",
                                 "--num-paths", "4", "--beam-size", "2"])
    model = ToyModel(6, 2, 3.0, seed=0)
    encoder_out = torch.randn(3, 9, 8)
    lens = torch.tensor([9, 6, 4])
    # Words 1 = tokens (1 2), 2 = token (3).
    word_graph = compile_graph(tmp_path, "0 1 1 0 0.5\n1 2 2 1 0\n0 0 3 2 0.2\n0 0.1\n")
    for method in DECODING_METHODS.values():
        graph = {None: None, "trivial": trivial_graph(6), "LG": word_graph}[method.graph]
        inputs = SearchInputs(options, graph, torch.Generator().manual_seed(0))
        results = method.offline(model, encoder_out, lens, inputs)
        assert len(results) == 3, method.name
        symbols = {1, 2} if method.gives_words else set(range(1, 6))
        assert all(isinstance(s, int) and s in symbols for r in results for s in r), method.name
        assert set(method.options) <= set(vars(options)), method.name


def test_result_keys_keep_icefall_names():
    """The result files of the default options (RESULTS.md and make_results.py
    find them by these names)."""
    import argparse

    from pruned_transducer_stateless4.decoding_methods import (
        SHERPA_ONNX,
        STREAMING,
        add_search_arguments,
        methods,
        result_key,
        streaming_suffix,
    )

    parser = argparse.ArgumentParser()
    add_search_arguments(parser, methods())
    defaults = vars(parser.parse_args([]))
    keys = {name: result_key({**defaults, "decoding_method": name}) for name in methods()}
    assert keys == {
        "greedy_search": "greedy_search_max_sym_per_frame_1",
        "beam_search": "beam_size_4",
        "modified_beam_search": "beam_size_4",
        "fast_beam_search": "beam_20.0_max_contexts_8_max_states_64",
        "fast_beam_search_nbest":
            "beam_20.0_max_contexts_8_max_states_64_num_paths_200_nbest_scale_0.5",
        "fast_beam_search_LG": "beam_20.0_max_contexts_8_max_states_64_ngram_lm_scale_0.01",
        "fast_beam_search_nbest_LG": "beam_20.0_max_contexts_8_max_states_64_num_paths_200_"
                                     "nbest_scale_0.5_ngram_lm_scale_0.01",
    }
    streaming = {name: (result_key({**defaults, "decoding_method": name}, STREAMING),
                        streaming_suffix({**defaults, "decoding_method": name}))
                 for name in methods(streaming=True)}
    assert streaming == {
        "greedy_search": ("greedy_search", "max-sym-per-frame-1"),
        "modified_beam_search": ("num_active_paths_4", "modified_beam_search-beam-size-4"),
        "fast_beam_search": ("beam_20.0_max_contexts_8_max_states_64",
                             "beam-20.0-max-contexts-8-max-states-64"),
    }
    hotwords = {**defaults, "decoding_method": "modified_beam_search", "int8": True,
                "hotwords_file": "h.txt", "hotwords_score": 1.5}
    assert result_key(hotwords, SHERPA_ONNX) == "modified_beam_search-int8-hotwords-1.5"
    with_context = {**defaults, "decoding_method": "modified_beam_search", "context_file": "h"}
    assert result_key(with_context) == "beam_size_4_context_score_2.0"
