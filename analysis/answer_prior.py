"""Does a multiple-choice score measure only the answer-letter prior of the few items trained on?

With a handful of training items a small model learns their letter frequencies, not their questions: its
gold-letter NLL on the scored items then sits near the NLL of that letter prior, and repeating the same
items (replay of a buffer that holds the whole training set) sharpens the prior and raises the NLL when the
scored items' letters are distributed differently. This prints, per seed, the training and scored letters
of each multiple-choice experience and the NLL of the training letter prior on the scored items (docs/studies.md,
"The replay anomaly").

    python -m clsharelora.analysis.answer_prior streams/study-cpu.yaml --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import collections
import math
from typing import Sequence

FLOOR = 1e-3   # a letter absent from the training items: probability floored, so its NLL stays finite


def prior_nll(train_letters: Sequence[str], scored_letters: Sequence[str], options: str = "ABCD") -> float:
    """Mean -log p(gold) on the scored items under the training items' letter frequencies."""
    counts = collections.Counter(train_letters)
    p = {k: max(counts.get(k, 0) / len(train_letters), FLOOR) for k in options}
    return sum(-math.log(p[g]) for g in scored_letters) / len(scored_letters)


def _counts(letters: Sequence[str]) -> dict[str, int]:
    return dict(sorted(collections.Counter(letters).items()))


def main(argv: Sequence[str] | None = None) -> int:
    import yaml

    from clsharelora.benchmarks.scenario import training_records
    from clsharelora.benchmarks.stream import parse_stream
    from clsharelora.data import load_benchmark
    from clsharelora.evaluation.tasks import evaluator_class
    from clsharelora.prompts import LETTERS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stream", help="stream file")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args(argv)
    with open(args.stream) as f:
        stream = parse_stream(yaml.safe_load(f), args.stream)
    for spec in stream.experiences:
        evaluator = evaluator_class(spec.task)
        options = getattr(evaluator, "max_options", None)
        if not options:          # not multiple choice
            continue
        for seed in args.seeds:
            train = [r.answer for r in training_records(spec, seed=seed)]
            scored = [r.answer for r in load_benchmark(evaluator.benchmark, "test", n=spec.eval_options.get("n"),
                                                         seed=seed)]
            print(f"{spec.name} seed {seed}: trained on {len(train)} items {_counts(train)}, "
                  f"scored {len(scored)} items {_counts(scored)}; NLL of the training letter prior on the "
                  f"scored items {prior_nll(train, scored, LETTERS[:options]):.3f} "
                  f"(uniform: {math.log(options):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
