"""Show a tokenized sample as text, marking the tokens that carry loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_GREEN = "\x1b[32m"
_DIM = "\x1b[2m"
_RESET = "\x1b[0m"


def render_sample(sample: Mapping[str, Sequence[int]], tokenizer: Any, *, color: bool = True) -> str:
    """Return a header line and the sample's full text with the supervised tokens marked.

    The full sequence is ``input_ids`` plus the last label when it is supervised (labels are shifted, so token ``j``
    carries loss iff ``labels[j - 1] != -100``). With ``color`` the supervised tokens are green and the rest dim;
    without it the supervised tokens are wrapped in ``[[`` and ``]]``. Special tokens stay visible.
    """
    input_ids = [int(t) for t in sample["input_ids"]]
    labels = [int(t) for t in sample["labels"]]
    tokens = input_ids + ([labels[-1]] if labels and labels[-1] != -100 else [])
    supervised = [j > 0 and labels[j - 1] != -100 for j in range(len(tokens))]

    # Decode runs of tokens with the same status; each run's text is the difference between decoded prefixes, so
    # multi-byte characters and tokenizers that strip a leading space at the start of a decode stay intact.
    runs: list[tuple[bool, int, int]] = []
    for j, sup in enumerate(supervised):
        if runs and runs[-1][0] == sup:
            runs[-1] = (sup, runs[-1][1], j + 1)
        else:
            runs.append((sup, j, j + 1))

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    pieces: list[str] = []
    previous = ""
    for sup, start, end in runs:
        prefix = decode(tokens[:end])
        text = prefix[len(previous) :] if prefix.startswith(previous) else decode(tokens[start:end])
        previous = prefix
        if color:
            pieces.append(f"{_GREEN if sup else _DIM}{text}{_RESET}")
        else:
            pieces.append(f"[[{text}]]" if sup else text)

    num_supervised = sum(supervised)
    legend = "green" if color else "[[...]]"
    header = f"{len(tokens)} tokens, {num_supervised} supervised (shown {legend})"
    return header + "\n" + "".join(pieces)
