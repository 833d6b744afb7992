"""The ``train_lm`` KFP component: a thin wrapper over :mod:`components.lm.core`."""

from kfp import dsl

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train_lm(
    sources: list,
    tokenizer_dir: str,
    out_dir: str,
    card: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
    order: int = 6,
    heldout_every: int = 20,
) -> str:
    """Train a token-level n-gram language model over datasets' normalised text.

    Args:
        sources: NeMo manifests or tarred dataset directories (only their text is read).
        tokenizer_dir: the train-tokenizer output directory of the ASR model's tokenizer.
        out_dir: where lm.arpa, lm.nemo and card.json go (local or gs://).
        card: the step's card: counts per order, discounts, held-out perplexity, files.
        metrics: the held-out perplexity and the model's size.
        order: the n-gram order, in tokens.
        heldout_every: hold out about one utterance in this many for the perplexity; 0: none.

    Returns:
        The lm.nemo URI, for NeMo decoding's ngram_lm_model.
    """
    import json

    from components.lm import core

    result = core.train_lm(sources, tokenizer_dir, out_dir, order=order, heldout_every=heldout_every)
    with open(card.path, "w", encoding="utf-8") as out:
        json.dump(result.to_dict(), out, sort_keys=True, indent=2)
    card.metadata.update(out_dir=result.out_dir, arpa=result.arpa, nemo=result.nemo, order=result.order)
    if result.heldout_perplexity is not None:
        metrics.log_metric("heldout_perplexity", result.heldout_perplexity)
    metrics.log_metric("ngrams", sum(result.ngrams))
    metrics.log_metric("tokens", result.tokens)
    return result.nemo
