"""The ``train_lm`` KFP component: a thin wrapper over :mod:`components.lm.core`."""

from kfp import dsl

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train_lm(
    dataset_dir: str,
    tokenizer_dir: str,
    data_root: str,
    card: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
    extra_sources: list = [],  # noqa: B006 (KFP default)
    order: int = 6,
    heldout_every: int = 20,
) -> str:
    """Train a token-level n-gram language model over the training text (and more text).

    Written once per text, tokenizer and settings under DATA_ROOT/lms/<digest>; a rerun finds
    it complete. No model ("") for order 0, or without a tokenizer (a character model).

    Args:
        dataset_dir: the training data's tarred dataset directory (only its text is read).
        tokenizer_dir: the train-tokenizer output directory of the ASR model's tokenizer; "": none.
        data_root: where lms/ lives (gs://bucket/prefix).
        card: the step's card: counts per order, discounts, held-out perplexity, files.
        metrics: the held-out perplexity and the model's size.
        extra_sources: more text: NeMo manifests or tarred dataset directories.
        order: the n-gram order, in tokens; 0: no language model.
        heldout_every: hold out about one utterance in this many for the perplexity; 0: none.

    Returns:
        The lm.nemo URI, for NeMo decoding's ngram_lm_model ("" when none).
    """
    import json

    from components.lm import core

    sources = [dataset_dir, *extra_sources]
    nemo, result = core.lm_for_pipeline(sources, tokenizer_dir, data_root, order, heldout_every)
    with open(card.path, "w", encoding="utf-8") as out:
        json.dump(result, out, sort_keys=True, indent=2)
    if nemo:
        card.metadata.update(out_dir=result["out_dir"], nemo=nemo, order=order)
        if result.get("heldout_perplexity") is not None:
            metrics.log_metric("heldout_perplexity", result["heldout_perplexity"])
        metrics.log_metric("ngrams", sum(result["ngrams"]))
        metrics.log_metric("tokens", result["tokens"])
    return nemo
