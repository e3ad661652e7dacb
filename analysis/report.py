"""`clsharelora report RUN_DIR... --out DIR [--title T]`: figures, tables and one report page.

Writes under DIR:
  figures/curves_<score>_<setting>.png, figures/heatmap_<score>_<setting>.png
  comparison.md / comparison.csv          one table per (stream, model) setting
  seeds.md / seeds.csv / paired_differences.csv / paired_summary.csv   when a strategy has several seeds
  item_level.csv                           strategy vs LoRA on the same items: item-bootstrap intervals, McNemar
  scores_long.csv                          every stored score point, tidy (for your own plots)
  report.md                                everything, figures linked
  report.html                              the same page, self-contained (figures inlined as base64)

Given one study directory (`clsharelora study`), the study report of analysis/study.py instead.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from clsharelora import atomic
from clsharelora.errors import DataError, DiskFull, UserError

from . import tables
from .curves import Z95, plot_forgetting_curves
from .heatmaps import plot_heatmaps
from .items import (RunItems, chance_sentence, forgetting_intervals, item_level_sentences, item_level_table,
                    task_options)
from .runs import SCORES, Run, by_setting, by_strategy, load_runs, tidy
from .seeds import paired_differences, seed_table, summarize_differences

DEFINITIONS = (
    "Metrics (recomputed from each run's score matrix R by `clsharelora.metrics`; R[i][j] = score on task j "
    "after experience i, row 0 = before training): **ACC** = mean of the last row; **BWT** = mean over "
    "earlier tasks of R[T][i] − R[i][i] (Lopez-Paz & Ranzato 2017); **FWT** = mean over i ≥ 2 of "
    "R[i−1][i] − R[0][i]; **Forgetting** = mean over earlier tasks of best earlier score − final score "
    "(Chaudhry et al. 2018; for NLL, final − lowest earlier, so positive = worse); **Plasticity** = mean "
    "over tasks of R[i][i] − R[i−1][i], how much each task was learned by its own experience (for NLL "
    "R[i−1][i] − R[i][i], so positive = learned for both scores): read forgetting next to it, since an "
    "adapter that learns less also has less to forget. For accuracy a negative "
    "BWT means forgetting; for NLL (nats/token, lower is better) a positive BWT does. Incomplete runs are "
    "measured only over the experiences they finished (\"so far\"); undefined values show as —. "
    "Seeds: mean ± sample std and a 95% Student-t interval; paired differences are matched by seed."
)


@dataclass
class Page:
    """The report as a list of blocks, rendered both to Markdown and to self-contained HTML."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, heads: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", heads, rows))

    def image(self, path: Path, rel: str, alt: str) -> None:
        self.blocks.append(("img", path, rel, alt))

    def markdown(self, base: Path | None = None) -> str:
        """The page as Markdown; image links are relative to the report folder, or to `base` when the page
        is written elsewhere (`--doc`)."""
        out = [f"# {self.title}\n"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"{'#' * b[1]} {b[2]}\n")
            elif b[0] == "p":
                out.append(b[1] + "\n")
            elif b[0] == "table":
                out.append(tables.to_markdown(b[1], b[2]))
            elif b[0] == "img":
                link = b[2] if base is None else os.path.relpath(Path(b[1]).resolve(), base.resolve())
                out.append(f"![{b[3]}]({link})\n")
        return "\n".join(out)

    def html(self) -> str:
        def inline(text: str) -> str:
            text = html.escape(text)
            text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
            return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for b in self.blocks:
            if b[0] == "h":
                body.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                body.append(f"<p>{inline(b[1])}</p>")
            elif b[0] == "table":
                head = "".join(f"<th>{html.escape(h)}</th>" for h in b[1])
                rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in b[2])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif b[0] == "img":
                data = base64.b64encode(Path(b[1]).read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(b[3])}" src="data:image/png;base64,{data}"></figure>')
        style = (
            "body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
            "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f2f2f2}"
            "td:first-child,th:first-child{text-align:left}img{max-width:100%;height:auto}"
            "figure{margin:1em 0}code{background:#f4f4f4;padding:0 3px}"
        )
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(self.title)}</title><style>{style}</style></head>\n<body>\n"
            + "\n".join(body)
            + "\n</body></html>\n"
        )


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(parts)).strip("-")


def build_report(runs: Sequence[Run], out: Path, title: str) -> Page:
    """Write every figure and table for `runs` under `out` and return the page that embeds them."""
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    page = Page(title)
    page.para(scope_line(runs))
    page.para(DEFINITIONS)

    page.heading(2, "Runs")
    runs_rows = [[r.name, r.stream, r.model, r.label, str(r.seed),
                  r.status + (" — SYNTHETIC (test fixture, not a result)" if r.synthetic else ""), str(r.path)]
                 for r in runs]
    page.table(["run", "stream", "model", "strategy", "seed", "status", "directory"], runs_rows)
    protocols = sorted({(task, proto) for r in runs for task, proto in r.protocols.items()})
    if protocols:  # "lm-eval:<task>": string-identical to that lm-eval task; "clsharelora:<name>": our own
        page.para("**Evaluation protocols**: " + "; ".join(f"{task}: {proto}" for task, proto in protocols))
    synthetic = [r for r in runs if r.synthetic]
    if synthetic:
        page.para("**Synthetic runs** (written by a test fixture from given matrices, not by training; never "
                  "results): " + "; ".join(r.name for r in synthetic))
    incomplete = [r for r in runs if r.started and not r.complete]
    if incomplete:
        page.para(
            "**Incomplete runs** (drawn up to their last finished experience, measured only over it): "
            + "; ".join(f"{r.name}: {r.status}" for r in incomplete)
        )
    empty = [r for r in runs if not r.started]
    if empty:
        page.para("**Runs without any score yet** (left out of figures and tables): "
                  + "; ".join(r.name for r in empty))
    runs = [r for r in runs if r.started]
    if not runs:
        raise DataError("none of the given runs has any score yet (all results.json matrices are empty)")

    comparisons, seed_frames, pair_frames, pair_summaries, md_sections, item_frames = [], [], [], [], [], []
    for (stream, model), group in by_setting(runs).items():
        slug = _slug(stream, model)
        page.heading(2, f"Stream {stream} · model {model}")
        for sentence in reference_regime_sentences(group) + chance_lines(group):
            page.para(sentence)
        comp = tables.comparison_table(group)
        comparisons.append(comp)
        page.heading(3, "Comparison")
        page.table(*tables.comparison_cells(comp))
        md_sections.append(f"## Stream {stream} · model {model}\n\n" + tables.comparison_markdown(comp))

        scores = [s for s in SCORES if any(s in r.matrices for r in group)]
        page.heading(3, "Forgetting curves")
        for score in scores:
            path = plot_forgetting_curves(group, score, fig_dir / f"curves_{score}_{slug}.png")
            page.image(path, f"figures/{path.name}", f"forgetting curves, {score}, {stream} on {model}")
        page.heading(3, "Score matrices")
        for score in scores:
            sequential = [r for r in group if not r.is_reference] or group  # joint training has no matrix
            path = plot_heatmaps(sequential, score, fig_dir / f"heatmap_{score}_{slug}.png")
            page.image(path, f"figures/{path.name}", f"score matrix heatmaps, {score}, {stream} on {model}")

        item_frames.append(_item_level(page, group, slug))
        if any(len(g) > 1 for g in by_strategy(group).values()):
            st = seed_table(group).assign(stream=stream, model=model)
            seed_frames.append(st)
            page.heading(3, "Across seeds")
            page.table(*tables.seeds_cells(st))
            diffs = paired_differences(group)
            if len(diffs):
                summ = summarize_differences(diffs).assign(stream=stream, model=model)
                pair_frames.append(diffs.assign(stream=stream, model=model))
                pair_summaries.append(summ)
                page.heading(3, "Paired differences (matched by seed)")
                page.para("Positive difference = higher value for the strategy than for the baseline; "
                          "read the sign with the metric (e.g. BWT accuracy: higher is better; "
                          "forgetting: lower is better; plasticity: higher is better).")
                page.table(*tables.differences_cells(summ))

    pd.concat(comparisons, ignore_index=True).to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(f"# {title}: comparison\n\n" + "\n".join(md_sections), encoding="utf-8")
    if seed_frames:
        seeds = pd.concat(seed_frames, ignore_index=True)
        seeds.to_csv(out / "seeds.csv", index=False)
        text = f"# {title}: across seeds\n\n" + tables.seeds_markdown(seeds)
        if pair_summaries:
            summ = pd.concat(pair_summaries, ignore_index=True)
            summ.to_csv(out / "paired_summary.csv", index=False)
            pd.concat(pair_frames, ignore_index=True).to_csv(out / "paired_differences.csv", index=False)
            text += "\n## Paired differences (matched by seed)\n\n" + tables.differences_markdown(summ)
        (out / "seeds.md").write_text(text, encoding="utf-8")
    items = [f for f in item_frames if f is not None and len(f)]
    if items:
        pd.concat(items, ignore_index=True).to_csv(out / "item_level.csv", index=False)
    tidy(runs).to_csv(out / "scores_long.csv", index=False)
    return page


def scope_line(runs: Sequence[Run]) -> str:
    """One line under the title: what runs like these can show and what they cannot, from their own sizes."""
    seeds = max(len(g) for g in by_strategy(runs).values())
    n = np.concatenate([r.n_items[np.isfinite(r.n_items)].ravel() for r in runs if r.n_items.size] or [np.zeros(0)])
    n = n[n > 0]
    sizes = (f"n = {int(n.min())}–{int(n.max())} scored items per task" if n.size and n.min() != n.max()
             else f"n = {int(n.min())} scored items per task" if n.size else "an unrecorded number of items")
    half = (f", so one accuracy's 95% interval is up to ±{100 * Z95 * math.sqrt(0.25 / n.min()):.0f} points wide"
            if n.size else "")
    return (f"**What this report can show**: that every strategy trains and is scored end to end, and the NLL "
            f"forgetting signal with its 95% interval over the scored items. **What it cannot**: accuracy "
            f"differences between strategies: {seeds} seed(s) per strategy and {sizes}{half}; "
            f"{'no' if seeds == 1 else 'little'} training noise (seeds, task orders) is measured (`clsharelora "
            "study` does that, docs/studies.md).")


def reference_label(group: Sequence[Run]) -> str:
    """The strategy the others are compared with: LoRA when present, else the first."""
    labels = list(by_strategy([r for r in group if not r.is_reference]))
    return "lora" if "lora" in labels else labels[0]


def reference_regime_sentences(group: Sequence[Run]) -> list[str]:
    """Does the reference forget at all (per task and overall, 95% interval over the scored items)? Where it
    does not, "forgets less than the reference" is moot and the comparison is one of backward transfer."""
    reference = reference_label(group)
    out = []
    for run in [r for r in group if r.label == reference and r.complete]:
        items = RunItems.load(run)
        if items is None:
            continue
        for score in [s for s in SCORES if s in run.matrices]:
            try:
                rows = forgetting_intervals(items, score, seed=run.seed)
            except DataError:          # a task without per-item accuracy (scored by NLL only)
                continue
            if not rows:
                continue
            per = "; ".join(f"{t} {v:+.4f} ({lo:+.4f}..{hi:+.4f})" for t, v, lo, hi in rows if t != "all")
            _, v, lo, hi = rows[-1]
            what = (f"its {score} forgetting (seed {run.seed}) is {v:+.4f} (95% item interval {lo:+.4f}..{hi:+.4f}; "
                    f"per task: {per})")
            if not any(low > 0 for _, _, low, _ in rows):
                out.append(f"**{reference} does not measurably forget here ({score})**: {what}. \"Forgets less "
                           f"than {reference}\" is moot on this score: a lower forgetting below means more backward "
                           "transfer, not less forgetting.")
            else:   # name where: one task's rise can sit under an overall interval that includes 0 (or is < 0)
                which = ", ".join("overall" if t == "all" else t for t, _, low, _ in rows if low > 0)
                out.append(f"{reference} forgets ({score}), resolved above zero for: {which}: {what}.")
    return out


def chance_lines(group: Sequence[Run]) -> list[str]:
    """Multiple-choice tasks whose final accuracy (mean over a strategy's complete runs) is at or below chance."""
    done = [r for r in group if r.complete and "accuracy" in r.matrices and not r.is_reference]
    options = task_options({t for r in done for t in r.tasks})
    out = []
    for task in sorted(options):
        means = {}
        for label, runs in by_strategy(done).items():
            values = [r.matrices["accuracy"][-1, r.tasks.index(task)] for r in runs if task in r.tasks]
            values = [v for v in values if not np.isnan(v)]
            if values:
                means[label] = float(np.mean(values))
        sentence = chance_sentence(task, means, options)
        if sentence:
            out.append(sentence)
    return out


def _item_level(page: Page, group: Sequence[Run], slug: str):
    """Item-level section of one setting: each strategy against LoRA (or the first strategy) on runs of the
    same seed, from the per-item results the runs stored; None when no pair has items."""
    labels = list(by_strategy([r for r in group if not r.is_reference]))
    if len(labels) < 2:
        return None
    reference = reference_label(group)
    table = item_level_table(group, reference)
    if not len(table):
        return None
    page.heading(3, f"Differences against {reference}: beyond the noise of the scored items?")
    page.para("Each run stored its per-item results (items/row_<i>.npz), so every metric is recomputed on "
              "bootstrap resamples of the scored items, the same resample for both runs of a pair (same seed, "
              "same items). An interval that excludes 0 means the difference is larger than what scoring other "
              "items of the same benchmarks could produce. This covers evaluation noise only: with one seed "
              "per strategy it says nothing about training noise (another seed or task order can move a "
              "metric more); `make study` measures that (docs/results/cpu-study.md).")
    for sentence in item_level_sentences(table):
        page.para(sentence)
    final = table[table["kind"] == "final row"]
    if len(final):
        page.table(["strategy", "seed", "task", "final NLL diff", "95% item interval", "accuracy diff", "McNemar p"],
                   [[r["label"], str(r["seed"]), r["what"], tables.signed(r["difference"]),
                     f"{tables.signed(r['low'])}..{tables.signed(r['high'])}",
                     "—" if pd.isna(r["accuracy_difference"]) else tables.signed(r["accuracy_difference"]),
                     "—" if pd.isna(r["mcnemar_p"]) else f"{r['mcnemar_p']:.3g}"] for _, r in final.iterrows()])
    return table.assign(setting=slug)


def _write_pages(page: Page, args) -> None:
    """report.md and report.html under --out; with --doc the Markdown page there instead (a results doc in
    the repository: no HTML with inlined figures beside it)."""
    if args.command:
        page.blocks.insert(0, ("p", f"Generated by `{args.command}`; every number and figure below comes from "
                                    "the run directories, none is typed by hand."))
    if args.doc:
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        args.doc.write_text(page.markdown(args.doc.parent), encoding="utf-8")
        return
    (args.out / "report.md").write_text(page.markdown(), encoding="utf-8")
    (args.out / "report.html").write_text(page.html(), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: returns 0 on success, the UserError's exit code (2) with a one-line message otherwise."""
    parser = argparse.ArgumentParser(
        prog="clsharelora report",
        description="Plots, tables and a report page from run directories (never re-runs a model).",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, or folders holding them")
    parser.add_argument("--out", required=True, type=Path, help="output directory (created)")
    parser.add_argument("--title", default="Continual-learning report", help="report title")
    parser.add_argument("--reference", help="a study's reference strategy for paired comparisons (default: its first)")
    parser.add_argument("--doc", type=Path, help="also write the page as this Markdown file (links relative to it), "
                                                 "e.g. docs/results/cpu-study.md")
    parser.add_argument("--command", help="the command that produced the report, written at the top of the page")
    args = parser.parse_args(argv)
    try:
        if args.out.exists() and not args.out.is_dir():
            raise UserError(f"--out {args.out} is a file; give a directory (existing or to be created)")
        from .study import build_study_report, is_study

        if len(args.run_dirs) == 1 and is_study(args.run_dirs[0]):
            page = build_study_report(Path(args.run_dirs[0]), args.out, args.title, args.reference)
            _write_pages(page, args)
            print(f"report: {args.doc or args.out / 'report.html'} (study {args.run_dirs[0]})")
            return 0
        skipped: list[Path] = []
        runs = load_runs(args.run_dirs, skipped)
        for p in skipped:
            print(f"note: skipped {p} (a file, not a run directory)", file=sys.stderr)
        args.out.mkdir(parents=True, exist_ok=True)
        page = build_report(runs, args.out, args.title)
        _write_pages(page, args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if atomic.is_no_space(exc):   # a full disk: where, and the space left there (exit 2, like the runs)
            print(f"error: no space left on the disk writing the report under {args.out} "
                  f"({atomic.free_space(args.out)} there); free some space and run report again", file=sys.stderr)
            return DiskFull.exit_code
        print(f"error: cannot write the report under {args.out}: {exc}", file=sys.stderr)
        return 1
    print(f"report: {args.out / 'report.html'} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
