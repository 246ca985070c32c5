"""The decoding methods, each declared once, and the options of their searches.

A row of DECODING_METHODS says, for one method:

* `key`: the search settings in the result file names, as icefall writes them
  (e.g. "beam_size_{beam_size}"); its fields are the search options the
  method reads, so they are declared here once;
* `offline`: its search over whole utterances (decode.py, pretrained.py);
* `streaming`: its search over one chunk of a batch of streams
  (streaming_decode.py, the server), or None, with `streaming_key` and
  `streaming_suffix` its names in icefall's streaming_decode.py files and
  `stream_state` the search state a DecodeStream keeps for it;
* `graph`: the decoding graph it needs: None, "trivial" (built from the
  vocabulary) or "LG" (prepare.sh stage 5's LG.fst and words.txt in
  --lang-dir, with its n-gram LM; such a method gives word ids);
* `uses_context`: hotwords (--context-file) bias it;
* `sherpa_onnx`: sherpa-onnx's OnlineRecognizer has it under this name.

`add_search_arguments` declares --decoding-method (or pretrained.py's
--method) with the methods a script offers as its choices, and the options
those methods read; `result_key` names the results of a run.  Adding a
method means adding its row and search function here (the search itself in
beam_search.py or streaming_beam_search.py) and its test.

Search functions are imported when a search first runs: jit_pretrained.py
takes its options from this table and must run greedy search on cpu_jit.pt
with torch alone.
"""

import argparse
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pruned_transducer_stateless4.context_graph import add_context_arguments, context_key

# What a results key is for: decode.py (full context or simulated streaming),
# streaming_decode.py, sherpa_onnx_decode.py.
OFFLINE, STREAMING, SHERPA_ONNX = "offline", "streaming", "sherpa_onnx"


@dataclass
class SearchInputs:
    """What an offline search needs besides the encoder output.

    Attributes:
      options: the parsed search options (beam_size, beam, ...).
      graph: the decoding graph (shared.fsa_search.DecodingGraph) of a
        method with `graph`, else None.
      generator: random numbers of the n-best searches' path sampling.
      context_graph: hotwords (context_graph.ContextGraph), or None.
    """

    options: Any
    graph: Any = None
    generator: Any = None
    context_graph: Any = None


# (model, encoder_out (N, T, C), encoder_out_lens (N,), inputs) -> token ids
# (word ids for an LG method) of each utterance.
OfflineSearch = Callable[[Any, Any, Any, SearchInputs], list[list[int]]]
# (model, encoder_out (N, chunk, C), encoder_out_lens (N,), StreamBatch,
# StreamingSearchConfig) -> None: advances the batch's search state.
StreamingSearch = Callable[[Any, Any, Any, Any, Any], None]


@dataclass(frozen=True)
class DecodingMethod:
    name: str
    key: str
    offline: OfflineSearch
    streaming: StreamingSearch | None = None
    streaming_key: str | None = None
    streaming_suffix: str | None = None
    stream_state: str | None = None  # "greedy", "beam" or "lattice"
    graph: str | None = None  # None, "trivial" or "LG"
    uses_context: bool = False
    sherpa_onnx: bool = False

    @property
    def options(self) -> tuple[str, ...]:
        """The search options the method reads (the fields of its key)."""
        return tuple(field for _, field, _, _ in string.Formatter().parse(self.key) if field)

    @property
    def gives_words(self) -> bool:
        return self.graph == "LG"


# ------------------------------------------------------ offline searches ----
def _fast_options(options: Any) -> dict[str, Any]:
    return dict(beam=options.beam, max_states=options.max_states,
                max_contexts=options.max_contexts)


def _greedy_search(model, encoder_out, encoder_out_lens, inputs: SearchInputs):
    from pruned_transducer_stateless4.beam_search import greedy_search_batch

    return greedy_search_batch(model, encoder_out, encoder_out_lens,
                               max_sym_per_frame=inputs.options.max_sym_per_frame)


def _beam_search(model, encoder_out, encoder_out_lens, inputs: SearchInputs):
    from pruned_transducer_stateless4.beam_search import beam_search

    return [beam_search(model, encoder_out[i : i + 1, : int(encoder_out_lens[i])],
                        beam=inputs.options.beam_size)
            for i in range(encoder_out.size(0))]


def _modified_beam_search(model, encoder_out, encoder_out_lens, inputs: SearchInputs):
    from pruned_transducer_stateless4.beam_search import modified_beam_search

    return modified_beam_search(model, encoder_out, encoder_out_lens,
                                beam=inputs.options.beam_size,
                                context_graph=inputs.context_graph)


def _fast_beam_search(model, encoder_out, encoder_out_lens, inputs: SearchInputs):
    from pruned_transducer_stateless4.beam_search import fast_beam_search_one_best

    return fast_beam_search_one_best(model, inputs.graph, encoder_out, encoder_out_lens,
                                     **_fast_options(inputs.options))


def _fast_beam_search_nbest(model, encoder_out, encoder_out_lens, inputs: SearchInputs):
    from pruned_transducer_stateless4.beam_search import fast_beam_search_nbest

    options = inputs.options
    return fast_beam_search_nbest(model, inputs.graph, encoder_out, encoder_out_lens,
                                  num_paths=options.num_paths, nbest_scale=options.nbest_scale,
                                  generator=inputs.generator, **_fast_options(options))


def _fast_beam_search_LG(model, encoder_out, encoder_out_lens, inputs: SearchInputs):
    from pruned_transducer_stateless4.beam_search import fast_beam_search_LG

    return fast_beam_search_LG(model, inputs.graph, encoder_out, encoder_out_lens,
                               ngram_lm_scale=inputs.options.ngram_lm_scale,
                               **_fast_options(inputs.options))


def _fast_beam_search_nbest_LG(model, encoder_out, encoder_out_lens, inputs: SearchInputs):
    from pruned_transducer_stateless4.beam_search import fast_beam_search_nbest_LG

    options = inputs.options
    return fast_beam_search_nbest_LG(
        model, inputs.graph, encoder_out, encoder_out_lens, num_paths=options.num_paths,
        nbest_scale=options.nbest_scale, ngram_lm_scale=options.ngram_lm_scale,
        generator=inputs.generator, **_fast_options(options))


# ---------------------------------------------------- streaming searches ----
def _streaming_greedy_search(model, encoder_out, encoder_out_lens, batch, config) -> None:
    from pruned_transducer_stateless4 import streaming_beam_search

    streaming_beam_search.greedy_search(model, encoder_out, encoder_out_lens, batch,
                                        config.max_sym_per_frame)


def _streaming_modified_beam_search(model, encoder_out, encoder_out_lens, batch,
                                    config) -> None:
    from pruned_transducer_stateless4 import streaming_beam_search

    streaming_beam_search.modified_beam_search(model, encoder_out, encoder_out_lens, batch,
                                               config.beam_size, config.temperature,
                                               config.context_graph)


def _streaming_fast_beam_search(model, encoder_out, encoder_out_lens, batch, config) -> None:
    from pruned_transducer_stateless4 import streaming_beam_search

    streaming_beam_search.fast_beam_search(model, encoder_out, encoder_out_lens, batch,
                                           config.fast)


# ----------------------------------------------------------------- table ----
_FAST_KEY = "beam_{beam}_max_contexts_{max_contexts}_max_states_{max_states}"
_NBEST_KEY = "_num_paths_{num_paths}_nbest_scale_{nbest_scale}"
_LM_KEY = "_ngram_lm_scale_{ngram_lm_scale}"

DECODING_METHODS: dict[str, DecodingMethod] = {method.name: method for method in [
    DecodingMethod(
        "greedy_search", key="greedy_search_max_sym_per_frame_{max_sym_per_frame}",
        offline=_greedy_search, streaming=_streaming_greedy_search,
        streaming_key="greedy_search", streaming_suffix="max-sym-per-frame-{max_sym_per_frame}",
        stream_state="greedy", sherpa_onnx=True),
    DecodingMethod("beam_search", key="beam_size_{beam_size}", offline=_beam_search),
    DecodingMethod(
        "modified_beam_search", key="beam_size_{beam_size}", offline=_modified_beam_search,
        streaming=_streaming_modified_beam_search, streaming_key="num_active_paths_{beam_size}",
        streaming_suffix="modified_beam_search-beam-size-{beam_size}", stream_state="beam",
        uses_context=True, sherpa_onnx=True),
    DecodingMethod(
        "fast_beam_search", key=_FAST_KEY, offline=_fast_beam_search,
        streaming=_streaming_fast_beam_search, streaming_key=_FAST_KEY,
        streaming_suffix="beam-{beam}-max-contexts-{max_contexts}-max-states-{max_states}",
        stream_state="lattice", graph="trivial"),
    DecodingMethod("fast_beam_search_nbest", key=_FAST_KEY + _NBEST_KEY,
                   offline=_fast_beam_search_nbest, graph="trivial"),
    DecodingMethod("fast_beam_search_LG", key=_FAST_KEY + _LM_KEY,
                   offline=_fast_beam_search_LG, graph="LG"),
    DecodingMethod("fast_beam_search_nbest_LG", key=_FAST_KEY + _NBEST_KEY + _LM_KEY,
                   offline=_fast_beam_search_nbest_LG, graph="LG"),
]}


def methods(streaming: bool = False, graph: Iterable[str | None] | None = None,
            sherpa_onnx: bool = False) -> list[str]:
    """Names of the methods, in table order, that have a streaming search
    (with `streaming`), need one of the graphs `graph` (None: any), and that
    sherpa-onnx has (with `sherpa_onnx`)."""
    graphs = None if graph is None else set(graph)
    return [m.name for m in DECODING_METHODS.values()
            if (not streaming or m.streaming is not None)
            and (graphs is None or m.graph in graphs)
            and (not sherpa_onnx or m.sherpa_onnx)]


def get_method(name: str) -> DecodingMethod:
    try:
        return DECODING_METHODS[name]
    except KeyError:
        raise ValueError(f"unknown decoding method {name}; choose one of "
                         f"{', '.join(DECODING_METHODS)}") from None


# --------------------------------------------------------------- options ----
@dataclass(frozen=True)
class SearchOption:
    flags: tuple[str, ...]
    type: Callable[[str], Any]
    default: Any
    help: str


SEARCH_OPTIONS: dict[str, SearchOption] = {
    "beam_size": SearchOption(("--beam-size", "--num-active-paths", "--max-active-paths"), int,
                              4, "hypotheses kept per frame"),
    "beam": SearchOption(("--beam",), float, 20.0,
                         "arcs scoring below the best by more than this are pruned "
                         "(log-probability units)"),
    "max_contexts": SearchOption(("--max-contexts",), int, 8,
                                 "decoder contexts kept per frame and utterance"),
    "max_states": SearchOption(("--max-states",), int, 64,
                               "states kept per frame and utterance"),
    "num_paths": SearchOption(("--num-paths",), int, 200, "size of the n-best list"),
    "nbest_scale": SearchOption(("--nbest-scale",), float, 0.5,
                                "lattice scores are multiplied by this before sampling paths "
                                "(smaller: more diverse paths)"),
    "ngram_lm_scale": SearchOption(("--ngram-lm-scale",), float, 0.01,
                                   "weight of the LG graph's (n-gram LM) scores"),
    "max_sym_per_frame": SearchOption(("--max-sym-per-frame",), int, 1,
                                      "at most this many tokens per frame"),
}


def add_search_arguments(
    parser: argparse.ArgumentParser,
    names: Iterable[str],
    option: str = "--decoding-method",
    options: Iterable[str] | None = None,
) -> None:
    """Declares the method option (choices: `names`, default greedy_search,
    dest decoding_method) and the search options those methods read, each
    with the methods that use it in its help; --context-file and
    --context-score when one of them takes hotwords.

    Args:
      names: the methods the script offers (see methods()).
      option: --decoding-method, or --method in pretrained.py as in icefall.
      options: only these search options (and no hotword options), for a
        script whose searches read fewer (jit_pretrained.py, sherpa-onnx).
    """
    offered = [get_method(name) for name in names]
    parser.add_argument(option, dest="decoding_method", default="greedy_search",
                        choices=[m.name for m in offered],
                        help="Search method (decoding_methods.py).")
    used = [name for name in SEARCH_OPTIONS if any(name in m.options for m in offered)]
    if options is not None:
        used = [name for name in used if name in set(options)]
    for name in used:
        spec = SEARCH_OPTIONS[name]
        users = ", ".join(m.name for m in offered if name in m.options)
        parser.add_argument(*spec.flags, dest=name, type=spec.type, default=spec.default,
                            help=f"{users}: {spec.help}.")
    if options is None and any(m.uses_context for m in offered):
        add_context_arguments(parser)


def search_settings(params: Any) -> dict[str, Any]:
    """The options params.decoding_method's search reads, e.g. {"beam_size": 4}
    for modified_beam_search, with the hotwords if they bias it: what a run
    record stores (shared/run_record.py), so that two results of one method
    differ in it only if their searches differ."""
    values = _values(params)
    method = get_method(values["decoding_method"])
    found = {name: values[name] for name in method.options if name in values}
    if method.uses_context and values.get("context_file"):
        found.update(context_file=str(values["context_file"]),
                     context_score=values.get("context_score"))
    return found


# ----------------------------------------------------------- result keys ----
def result_key(params: Any, run: str = OFFLINE) -> str:
    """KEY of the result files (recogs-PART-KEY-SUFFIX.txt, ...) of a run.

    Args:
      params: the parsed options (decoding_method and its search options).
      run: OFFLINE (decode.py: e.g. beam_size_4), STREAMING
        (streaming_decode.py: e.g. num_active_paths_4, as icefall's
        streaming_decode.py) or SHERPA_ONNX (sherpa_onnx_decode.py:
        METHOD-float or METHOD-int8, then -hotwords-SCORE with hotwords).
    """
    values = _values(params)
    method = get_method(values["decoding_method"])
    if run == SHERPA_ONNX:
        key = f"{method.name}-{'int8' if values['int8'] else 'float'}"
        if values.get("hotwords_file") is not None:
            key += f"-hotwords-{values['hotwords_score']}"
        return key
    if run == STREAMING:
        if method.streaming_key is None:
            raise ValueError(f"{method.name} has no streaming search")
        key = method.streaming_key.format(**values)
    else:
        key = method.key.format(**values)
    return key + (context_key(values) if method.uses_context else "")


def streaming_suffix(params: Any) -> str:
    """The search part of streaming_decode.py's file-name suffix."""
    values = _values(params)
    method = get_method(values["decoding_method"])
    if method.streaming_suffix is None:
        raise ValueError(f"{method.name} has no streaming search")
    return method.streaming_suffix.format(**values)


def _values(params: Any) -> Mapping[str, Any]:
    if isinstance(params, Mapping):
        return params
    return vars(params)

