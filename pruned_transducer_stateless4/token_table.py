"""The vocabulary of a model: token ids <-> BPE pieces and text.

A model's vocabulary comes from its sentencepiece model (--bpe-model) or from
the tokens.txt table export.py writes ('symbol id' a line, the form
sherpa-onnx reads).  sentencepiece is imported only when a BPE model is used,
so that jit_pretrained.py with --tokens needs nothing but torch.
"""

from pathlib import Path

from shared.utils import RecipeError


def load_bpe_model(path: Path):
    """The sentencepiece model of prepare.sh stage 4 (a one-line error if it
    is missing)."""
    import sentencepiece as spm

    if not Path(path).is_file():
        raise FileNotFoundError(f"BPE model {path} not found; run ./prepare.sh "
                                "--stage 4 --stop-stage 4")
    return spm.SentencePieceProcessor(model_file=str(path))


def read_token_table(tokens: Path | None, bpe_model: Path | None) -> list[str]:
    """The symbols of the vocabulary, by id, from a tokens.txt table (checked:
    ids 0 .. N-1, one 'symbol id' a line) or else a sentencepiece model."""
    if tokens is not None:
        if not tokens.is_file():
            raise FileNotFoundError(f"token table {tokens} not found")
        table: dict[int, str] = {}
        for line_number, line in enumerate(tokens.read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].isdigit():
                raise RecipeError(f"{tokens}:{line_number}: expected 'symbol id', "
                                  f"got {line!r}")
            table[int(fields[1])] = fields[0]
        if sorted(table) != list(range(len(table))):
            raise RecipeError(f"{tokens}: ids are not 0 .. {len(table) - 1}")
        return [table[i] for i in range(len(table))]
    if bpe_model is None or not bpe_model.is_file():
        raise FileNotFoundError(f"BPE model {bpe_model} not found (or pass --tokens)")
    sp = load_bpe_model(bpe_model)
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


class TokenDecoder:
    """Token ids -> text, with sentencepiece or a tokens.txt table."""

    def __init__(self, bpe_model: Path | None, tokens: Path | None) -> None:
        self.sp = None
        self.symbols: list[str] = []
        if tokens is not None:
            if not tokens.is_file():
                raise FileNotFoundError(f"token table {tokens} not found")
            table = {}
            for line in tokens.read_text().splitlines():
                fields = line.split()
                if len(fields) == 2:
                    table[int(fields[1])] = fields[0]
            self.symbols = [table.get(i, "") for i in range(max(table) + 1)]
        else:
            import sentencepiece as spm

            if bpe_model is None or not bpe_model.is_file():
                raise FileNotFoundError(f"BPE model {bpe_model} not found (or pass --tokens)")
            self.sp = spm.SentencePieceProcessor(model_file=str(bpe_model))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() if self.sp is not None else len(self.symbols)

    def pieces(self, token_ids: list[int]) -> list[str]:
        """The BPE piece of each token id."""
        if self.sp is not None:
            return [self.sp.id_to_piece(i) for i in token_ids]
        return [self.symbols[i] for i in token_ids]

    def __call__(self, token_ids: list[int]) -> str:
        if self.sp is not None:
            return self.sp.decode(token_ids)
        return "".join(self.symbols[i] for i in token_ids).replace("\u2581", " ").strip()
