"""The comparison table of one setting (stream × model): strategy, cost and CL metrics, as a raw-number
frame (for CSV) and as Markdown with units. Metrics come from `clsharelora.metrics` on the stored
matrices; an incomplete strategy is flagged and measured only over the experiences it finished."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .runs import SCORES, Run, by_strategy
from .seeds import METRICS

MIB = 2**20
METRIC_NAMES = {"acc": "ACC", "bwt": "BWT", "fwt": "FWT", "forgetting": "Forgetting", "plasticity": "Plasticity"}
SCORE_NAMES = {"accuracy": "acc", "nll": "NLL"}


def _mean(values: Sequence[float]) -> float:
    x = np.asarray(values, dtype=float)
    return float(x.mean()) if x.size and not np.isnan(x).any() else math.nan


def _lora_reference(runs: Sequence[Run]) -> float:
    """Trainable params of plain LoRA in this setting, for runs whose results lack lora_trainable_params."""
    vals = [r.cost["trainable_params"] for r in runs if r.adapter == "lora"]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def comparison_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per strategy of ONE setting, seeds averaged (see seeds.py for their spread).

    Columns: stream, model, strategy, adapter, variant, cl, seeds, status, done, T, trainable_params,
    pct_of_lora, peak_memory_mib, peak_memory_kind, train_time_s, then <score>_<metric> for every score
    and metric. Runs with no scores yet must be left out by the caller (see report.py).
    `done` is the fewest experiences any seed finished; metrics are over those (the run's "so far").
    """
    if not runs:
        raise ValueError("comparison_table needs at least one run")
    settings = {r.setting for r in runs}
    if len(settings) != 1:
        raise ValueError(f"comparison_table takes the runs of one (stream, model) setting, got {sorted(settings)}")
    if not all(r.started for r in runs):
        raise ValueError(f"comparison_table got runs with no scores yet: {[str(r.path) for r in runs if not r.started]}")
    lora_ref = _lora_reference(runs)
    rows = []
    for label, group in by_strategy(runs).items():
        k = min(r.done for r in group)
        T = group[0].T
        lora = [r.cost["lora_trainable_params"] for r in group]
        lora = [v if not math.isnan(v) and v > 0 else lora_ref for v in lora]
        pct = [100.0 * r.cost["trainable_params"] / ref if ref and not math.isnan(ref) else math.nan for r, ref in zip(group, lora)]
        row = {
            "stream": group[0].stream,
            "model": group[0].model,
            "strategy": label,
            "adapter": group[0].adapter,
            "variant": group[0].variant or "",
            "cl": group[0].cl,
            "seeds": len(group),
            "status": "complete" if k == T else f"incomplete ({k}/{T} experiences)",
            "done": k,
            "T": T,
            "trainable_params": _mean([r.cost["trainable_params"] for r in group]),
            "pct_of_lora": _mean(pct),
            "peak_memory_mib": _mean([r.cost["peak_memory_bytes"] / MIB for r in group]),
            "peak_memory_kind": "/".join(sorted({r.memory_kind or "unknown" for r in group})),
            "train_time_s": _mean([r.cost["train_time_s"] for r in group]),
        }
        if group[0].is_reference:   # joint training: final scores only, no forgetting matrix
            row.update(strategy=f"{label} (upper bound)", status=group[0].status)
            for score in SCORES:
                if all(score in r.matrices and r.done >= 1 for r in group):
                    row[f"{score}_acc"] = _mean([float(np.mean(r.matrices[score][1])) for r in group])
                    row.update({f"{score}_{m}": math.nan for m in METRICS if m != "acc"})
            rows.append(row)
            continue
        for score in SCORES:
            if not all(score in r.matrices for r in group):
                continue
            per_run = [r.metrics(score, upto=k) for r in group]
            for m in METRICS:
                row[f"{score}_{m}"] = _mean([pr[m] for pr in per_run])
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------
# Markdown


def _fmt_num(digits: int) -> Callable[[float], str]:
    return lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.{digits}f}"


def _fmt_signed(digits: int) -> Callable[[float], str]:
    return lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.{digits}f}"


def signed(v: float, digits: int = 4) -> str:
    """A difference with its sign and enough digits: one that rounds to 0 at `digits` decimals but is not 0
    is written in scientific notation (never "+0.0000" for a real difference); 0 (to 1e-12) is "0"."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if abs(v) < 1e-12:   # float noise of a mean of zeros
        return "0"
    return f"{v:+.{digits}f}" if round(abs(v), digits) > 0 else f"{v:+.2e}"


def p_text(p: float, samples: int | None = None) -> str:
    """`p = …`, or `p < 2/samples` when a resampling test saw no resample cross 0 (never "p = 0")."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "p = —"
    if p == 0 and samples:
        return f"p < {2 / samples:.2g}"
    return f"p = {p:.3g}"


def _fmt_int(v: float) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{int(round(v)):,}"


def _fmt_pct(v: float) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}%"


def table_cells(df: pd.DataFrame, columns: dict[str, tuple[str, Callable[[object], str]]]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cell strings: `columns` maps a frame column to (header, formatter); the
    same cells render as Markdown here and as HTML in report.py."""
    cols = [c for c in columns if c in df.columns]
    heads = [columns[c][0] for c in cols]
    rows = [[columns[c][1](row[c]) for c in cols] for _, row in df.iterrows()]
    return heads, rows


def to_markdown(heads: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, heads)) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"



def comparison_columns() -> dict[str, tuple[str, Callable[[object], str]]]:
    """Headers (with units) and formats of the comparison table's Markdown form."""
    cols: dict[str, tuple[str, Callable[[object], str]]] = {
        "strategy": ("strategy", str),
        "seeds": ("seeds", _fmt_int),
        "status": ("status", str),
        "trainable_params": ("trainable params", _fmt_int),
        "pct_of_lora": ("% of LoRA", _fmt_pct),
        "peak_memory_mib": ("peak memory (MiB)", _fmt_num(1)),
        "peak_memory_kind": ("memory measured as", str),
        "train_time_s": ("train time (s)", _fmt_num(1)),
    }
    for score in SCORES:
        unit = "nats/token" if score == "nll" else "fraction"
        for m in METRICS:
            fmt = _fmt_num(3) if m == "acc" else _fmt_signed(3)
            cols[f"{score}_{m}"] = (f"{METRIC_NAMES[m]} {SCORE_NAMES[score]}" + (f" ({unit})" if m == "acc" else ""), fmt)
    return cols


def comparison_cells(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    return table_cells(df, comparison_columns())


def comparison_markdown(df: pd.DataFrame) -> str:
    return to_markdown(*comparison_cells(df))


def _interval(row: pd.Series) -> str:
    if row["n"] == 0 or math.isnan(row["mean"]):
        return "— (undefined)"
    if math.isnan(row["std"]):
        return f"{row['mean']:+.4f} (one seed)"
    return f"{row['mean']:+.4f} ± {row['std']:.4f}  [{row['ci95_low']:+.4f}, {row['ci95_high']:+.4f}]"


def seeds_markdown(df: pd.DataFrame) -> str:
    return to_markdown(*seeds_cells(df))


def seeds_cells(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Seed statistics: one row per strategy, score and metric, 'mean ± std [95% CI]'."""
    out = df.assign(metric=df["metric"].map(METRIC_NAMES), summary=df.apply(_interval, axis=1) if len(df) else [])
    cols = {
        "strategy": ("strategy", str),
        "score": ("score", str),
        "metric": ("metric", str),
        "status": ("status", str),
        "n": ("seeds (n)", _fmt_int),
        "summary": ("mean ± std  [95% t-interval]", str),
    }
    return table_cells(out, cols)


def differences_markdown(df: pd.DataFrame) -> str:
    return to_markdown(*differences_cells(df))


def differences_cells(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Paired differences: strategy − baseline per metric, mean ± std [95% CI] over paired seeds."""
    out = df.assign(
        pair=df["strategy"] + " − " + df["baseline"] if len(df) else [],
        metric=df["metric"].map(METRIC_NAMES),
        summary=df.apply(_interval, axis=1) if len(df) else [],
    )
    cols = {
        "pair": ("difference", str),
        "score": ("score", str),
        "metric": ("metric", str),
        "status": ("status", str),
        "seeds": ("paired seeds", str),
        "summary": ("mean ± std  [95% t-interval]", str),
    }
    return table_cells(out, cols)
