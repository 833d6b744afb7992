"""``report.md``: the evaluation as a person reads it (also the KFP UI's Markdown artifact).

A table of sets (WER, CER, counts), the champion decision, and the worst utterances of each
set; the tables are tabulate's ``pipe`` format (GitHub Markdown).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from components import storage
from components.evaluate.decoding import Decoding
from components.evaluate.results import HYPOTHESES_NAME, SetResult, mean_wer
from components.evaluate.scoring import percent
from components.evaluate.sets import CHAMPION_DIR
from components.manifest import normalize_text

REPORT_NAME = "report.md"

_HOW_COMPARED = {
    "recorded": "its WER as recorded in the champion file, measured on these same sets",
    "re-evaluated": "re-evaluated here on the same sets",
    "same-model": "the same model file",
    "not-compared": "not compared: this model is above the promotion ceiling",
}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """A Markdown table of text cells, as given (no number parsing); ``align``: ``l``/``r`` a column."""
    from tabulate import tabulate

    sides = tuple({"l": "left", "r": "right"}[side] for side in align)
    return tabulate(rows, headers=headers, tablefmt="pipe", colalign=sides, disable_numparse=True)


def _cell(text: str) -> str:
    """Text that keeps a table row whole: pipes escaped, one line, never empty."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ") or "∅"


def _sets_table(results: Mapping[str, SetResult]) -> str:
    headers = ("Set", "Utterances", "Hours", "WER", "CER", "Subst.", "Ins.", "Del.", "Hits")
    rows = [
        (
            name,
            str(r.num_utterances),
            f"{r.hours:.2f}",
            percent(r.score.wer),
            percent(r.score.cer),
            str(r.score.substitutions),
            str(r.score.insertions),
            str(r.score.deletions),
            str(r.score.hits),
        )
        for name, r in results.items()
    ]
    return markdown_table(headers, rows, "lrrrrrrrr")


def _decoding_label(decoding: Decoding) -> str:
    label = decoding.strategy
    if decoding.beam_size:
        label += f", beam {decoding.beam_size}"
    if decoding.lm is not None:
        label += f", LM α={decoding.lm_alpha:g}"
    if decoding.boost:
        label += f", {len(decoding.boost)} key phrase(s)"
    return label


def _decodings_section(
    served_key: str, by_decoding: Mapping[str, Mapping[str, SetResult]], decodings: Mapping[str, Decoding]
) -> list[str]:
    """WER and CER of every set under every decoding (head, search, LM), the served one marked."""
    headers = ("Set", "Decoding", "Head", "Search", "WER", "CER", "Audio s/s")
    rows = []
    set_names = list(next(iter(by_decoding.values())))
    for name in set_names:
        for key, found in by_decoding.items():
            result = found[name]
            speed = "reused" if result.audio_s_per_s is None else f"{result.audio_s_per_s:.1f}"
            rows.append(
                (
                    name,
                    key + (" (served)" if key == served_key else ""),
                    decodings[key].head,
                    _decoding_label(decodings[key]),
                    percent(result.score.wer),
                    percent(result.score.cer),
                    speed,
                )
            )
    means = ", ".join(f"{key} {percent(mean_wer(found))}" for key, found in by_decoding.items())
    return [
        "## Decodings",
        "",
        markdown_table(headers, rows, "llllrrr"),
        "",
        f"Mean WER by decoding: {means}.",
        "",
    ]


def _lm_section(lm: Mapping[str, Any], boost: Mapping[str, Any] | None) -> list[str]:
    if lm.get("labels_from"):
        built_for = f"the {lm['vocab_size']} labels of `{lm['labels_from']}`"
    else:
        built_for = f"the tokenizer `{lm['tokenizer']}` ({lm['vocab_size']} tokens)"
    lines = [
        "## Language model",
        "",
        f"`{lm['uri']}`, built for {built_for}, beam {lm['beam_size']}.",
        "",
    ]
    for key, record in (lm.get("tuning") or {}).items():
        rows = [
            (f"{item['alpha']:g}" + (" (chosen)" if item["alpha"] == record["alpha"] else ""),)
            + (percent(item["wer"]),)
            for item in record["grid"]
        ]
        lines += [
            f"{key}: LM weight tuned on `{record['set']}` only, then used on every set:",
            "",
            markdown_table(("α", f"WER on {record['set']}"), rows, "rr"),
            "",
        ]
    if boost:
        lines += [_boost_line(boost), ""]
    return lines


def _boost_line(boost: Mapping[str, Any]) -> str:
    return f"Key phrases boosted (α={boost['alpha']:g}) from `{boost['file']}`: {len(boost['phrases'])}."


def _champion_section(results: Mapping[str, SetResult], champion: Mapping[str, Any]) -> list[str]:
    verdict = "promoted to champion" if champion["promoted"] else "not promoted"
    lines = ["## Champion", "", f"**{verdict}**: {champion['reason']}.", ""]
    if "previous_model" in champion:
        how = _HOW_COMPARED[champion["champion_source"]]
        lines += [f"Champion compared: `{champion['previous_model']}` ({how}).", ""]
    if champion.get("previous_sets"):
        rows = [
            (name, percent(r.score.wer), percent(champion["previous_sets"][name]["wer"]))
            for name, r in results.items()
        ]
        lines += [markdown_table(("Set", "This model WER", "Champion WER"), rows, "lrr"), ""]
    return lines


def _worst_table(result: SetResult) -> str:
    rows = [
        (
            percent(row["wer"]),
            _cell(normalize_text(row["text"])),
            _cell(normalize_text(row["pred_text"])),
            _cell(storage.basename(row["audio_filepath"])),
        )
        for row in result.worst
    ]
    return markdown_table(("WER", "Reference", "Hypothesis", "Audio"), rows, "rlll")


def render_report(
    model_uri: str,
    results: Mapping[str, SetResult],
    champion: Mapping[str, Any] | None,
    champion_results: Mapping[str, SetResult] | None,
    by_decoding: Mapping[str, Mapping[str, SetResult]] | None = None,
    decodings: Mapping[str, Decoding] | None = None,
    lm: Mapping[str, Any] | None = None,
    boost: Mapping[str, Any] | None = None,
) -> str:
    """The Markdown report: a table of sets, every decoding, the LM, the champion, the worst utterances."""
    served = next(iter(results.values())).decoding
    lines = [
        f"# Evaluation of `{model_uri}`",
        "",
        "WER and CER after the shared text normalisation (lower case, punctuation dropped), "
        "counted by jiwer over each whole set.",
        "",
        f"Main figures: the served decoding, `{served.key}`: the {served.head} head (the one NeMo "
        f"decodes with once the model is restored), {_decoding_label(served)}.",
        "",
        _sets_table(results),
        "",
        f"Mean WER over the sets: **{percent(mean_wer(results))}**",
        "",
    ]
    if by_decoding and decodings and len(by_decoding) > 1:
        lines += _decodings_section(served.key, by_decoding, decodings)
    if lm is not None:
        lines += _lm_section(lm, boost)
    elif boost:
        lines += [_boost_line(boost), ""]
    if champion is not None:
        lines += _champion_section(results, champion)
    for name, result in results.items():
        lines += [f"## Worst utterances: {name}", "", _worst_table(result), ""]
    if champion_results:
        lines += [f"Champion hypotheses: `{CHAMPION_DIR}/<set>/{HYPOTHESES_NAME}`.", ""]
    return "\n".join(lines)
