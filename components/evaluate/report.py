"""``report.md``: the evaluation as a person reads it (also the KFP UI's Markdown artifact).

A table of sets (WER, CER, counts), the champion decision, and the worst utterances of each
set; the tables are tabulate's ``pipe`` format (GitHub Markdown).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from components import storage
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
) -> str:
    """The Markdown report: a table of sets, the champion decision, the worst utterances."""
    lines = [
        f"# Evaluation of `{model_uri}`",
        "",
        "WER and CER after the shared text normalisation (lower case, punctuation dropped), "
        "counted by jiwer over each whole set.",
        "",
        _sets_table(results),
        "",
        f"Mean WER over the sets: **{percent(mean_wer(results))}**",
        "",
    ]
    if champion is not None:
        lines += _champion_section(results, champion)
    for name, result in results.items():
        lines += [f"## Worst utterances: {name}", "", _worst_table(result), ""]
    if champion_results:
        lines += [f"Champion hypotheses: `{CHAMPION_DIR}/<set>/{HYPOTHESES_NAME}`.", ""]
    return "\n".join(lines)
