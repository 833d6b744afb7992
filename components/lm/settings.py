"""train-lm's names and defaults, declared once.

Light imports only: ``asrflow --help`` imports it through the CLI. The KFP component
writes the defaults out as literals (KFP copies the function's source, not this module);
tests/components/test_lm.py checks that they agree.
"""

from components import layout

STEP = "train-lm"
ARPA_NAME = layout.LM_ARPA_NAME
"""The model as a token-level ARPA file."""
NEMO_NAME = layout.LM_NEMO_NAME
"""The model as NeMo's ``NGramGPULanguageModel`` (decoding's ``ngram_lm_model``)."""
TOKENIZER = "tokenizer"
"""Units: a sub-word model's tokenizer pieces."""
LABELS = "labels"
"""Units: a character model's labels, one a character."""
DEFAULT_ORDER = 6
"""Sub-word tokens are short: six of them span two or three words."""
DEFAULT_LABEL_ORDER = 8
"""Characters are shorter still: eight span a word or two. ``make bench-lm`` (1 h of text, beam
4, weight tuned on validation): orders 4 / 6 / 8 / 10 gave validation WER 1.8 / 1.1 / 1.1 / 1.5%
and held-out perplexity 2.76 / 2.21 / 2.16 / 2.16; more text favours the higher order."""
DEFAULT_HELDOUT_EVERY = 20


def default_order(units: str) -> int:
    """The n-gram order for units ``tokenizer`` or ``labels``."""
    return DEFAULT_LABEL_ORDER if units == LABELS else DEFAULT_ORDER
