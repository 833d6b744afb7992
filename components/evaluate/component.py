"""The ``evaluate`` KFP component: a thin wrapper over :mod:`components.evaluate.core`."""

from kfp import dsl

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def evaluate(
    model_uri: str,
    eval_sets: list,
    data_root: str,
    run_id: str,
    card: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
    report: dsl.Output[dsl.Markdown],
    champion_uri: str = "",
    champion_name: str = "",
    batch_size: int = 16,
    min_improvement: float = 0.0,
    max_wer: float = 0.9,
    validation_set: str = "",
    lm_dir: str = "",
    lm_alpha: float = 0.5,
    beam_size: int = 0,
    tune_lm_alpha: bool = False,
    lm_alpha_grid: str = "",
    boost_file: str = "",
    boost_alpha: float = 1.0,
):
    """Transcribe eval sets with a NeMo model, score WER/CER, promote it if it beats the champion.

    Args:
        model_uri: the .nemo model to evaluate (gs:// URI or local path).
        eval_sets: the eval sets, each a NeMo manifest URI, ``NAME=URI``, or an object with
            ``name`` and ``manifest``.
        data_root: the data root; outputs go to ``runs/<run_id>/eval`` under it.
        run_id: the run whose model this is.
        card: the step's card: per-set WER, CER, S/I/D counts and hours under every decoding
            (each head of the model; beam search with and without the LM); the served
            decoding; the LM and its tuning; the champion decision.
        metrics: the served decoding's WER and CER per set (``<set>_wer``) and mean WER, and
            every decoding's (``<set>_<decoding>_wer``, ``mean_<decoding>_wer``; decodings
            like ``rnnt_greedy``, ``ctc_greedy``, ``ctc_beam``, ``ctc_beam_lm``), for the KFP UI.
        report: the Markdown report: WER/CER per set and decoding, the LM tuning, the
            champion decision, the worst utterances.
        champion_uri: champion.json of the model in service; the new model replaces it only when better.
        champion_name: instead of champion_uri: ``models/<champion_name>/champion.json`` under data_root.
        batch_size: utterances per forward pass.
        min_improvement: mean-WER gain (absolute, 0.005 = half a point) needed to replace the champion.
        max_wer: promotion ceiling: a model whose mean WER is above it is never promoted, even
            when there is no champion yet.
        validation_set: the set training validated on (``NAME=MANIFEST``), scored first; an
            eval set of the same name is not scored twice. The LM weight is tuned on it.
        lm_dir: an n-gram LM: the output directory of train-lm (its lm.nemo is used) or the
            lm.nemo / lm.arpa in it (what the train-lm component returns), built for this
            model's units: its tokenizer, or a character model's labels (checked against
            train-lm's card: other units fail the step). Empty: no LM. With it, every set is
            also scored by beam search without and with the LM.
        lm_alpha: the LM weight (NeMo's ``ngram_lm_alpha``), unless tune_lm_alpha.
        beam_size: the beam of the beam searches; 0: 4 with an LM or key phrases, else no
            beam search.
        tune_lm_alpha: pick the LM weight on the validation set only (validation_set, else the
            first eval set) from lm_alpha_grid, then use it on every set; the card and the
            report show each weight's WER. Ignored without an LM (lm_dir empty).
        lm_alpha_grid: the weights tune_lm_alpha tries, comma-separated (empty:
            0.1,0.2,0.3,0.5,0.7,1).
        boost_file: key phrases (one a line, local or gs://) boosted in the beam searches
            (NeMo's boosting tree). Empty: none.
        boost_alpha: the key phrases' weight in the beam search score.
    """
    import json

    from components import layout, storage
    from components.evaluate import core
    from components.evaluate.card import EvaluateCard
    from components.evaluate.lm import DEFAULT_ALPHA_GRID, parse_alpha_grid
    from components.evaluate.sets import default_set_name, eval_set_specs, split_set_spec

    out_dir = layout.run_eval_dir(data_root, run_id)
    validation_name = None
    if validation_set:
        name, path = split_set_spec(validation_set)
        validation_name = name or default_set_name(path)
    options = core.DecodingOptions(
        lm=lm_dir or None,
        lm_alpha=lm_alpha,
        beam_size=beam_size,
        tune_lm_alpha=tune_lm_alpha and bool(lm_dir),  # the pipeline's LM step may make none
        lm_alpha_grid=parse_alpha_grid(lm_alpha_grid) if lm_alpha_grid else DEFAULT_ALPHA_GRID,
        validation_set=validation_name,
        boost=boost_file or None,
        boost_alpha=boost_alpha,
    )
    result = core.evaluate(
        model_uri,
        eval_set_specs(([validation_set] if validation_set else []) + list(eval_sets)),
        out_dir,
        champion_uri=champion_uri
        or (layout.champion_uri(data_root, champion_name) if champion_name else None),
        batch_size=batch_size,
        min_improvement=min_improvement,
        max_wer=max_wer,
        decoding=options,
    )
    with open(card.path, "w", encoding="utf-8") as out:
        json.dump(result, out, sort_keys=True, indent=2)
    found = EvaluateCard.from_dict(result)
    card.metadata.update(
        uri=found.out_dir,
        mean_wer=found.mean_wer,
        promoted=bool(found.champion and found.champion["promoted"]),
    )
    card.metadata.update(served=found.served.get("decoding", ""))
    for name, figures in found.sets.items():
        metrics.log_metric(f"{name}_wer", figures["wer"])
        metrics.log_metric(f"{name}_cer", figures["cer"])
        for key, by_decoding in figures.get("decodings", {}).items():
            metrics.log_metric(f"{name}_{key}_wer", by_decoding["wer"])
            metrics.log_metric(f"{name}_{key}_cer", by_decoding["cer"])
    metrics.log_metric("mean_wer", found.mean_wer)
    for key, mean in found.mean_wer_by_decoding.items():
        metrics.log_metric(f"mean_{key}_wer", mean)
    with open(report.path, "w", encoding="utf-8") as out:
        out.write(storage.read_text(found.report))
