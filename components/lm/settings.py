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
DEFAULT_ORDER = 6
"""Sub-word tokens are short: six of them span two or three words."""
DEFAULT_HELDOUT_EVERY = 20
