"""How many training examples a stream would drop at a max_length: tokenisation only, no model, no training.

    python -m clsharelora.benchmarks.lengths --stream streams/demo.yaml --max-length 256 [--tokenizer smollm2-135m]

Prints one line per experience (the counts results.json records as `training_data`); an experience's own
`train.max_length` in the stream wins over --max-length, as in a run.
"""

from __future__ import annotations

import argparse
import sys

from .. import models
from ..errors import UserError
from ..paths import data_root
from .scenario import encode_records, length_counts, training_records
from .stream import load_stream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stream", required=True, help="stream YAML path or name under streams/")
    parser.add_argument("--max-length", type=int, default=512, help="train.max_length of the run (default 512)")
    parser.add_argument("--tokenizer", default="smollm2-135m", help="model registry name or tokenizer path")
    parser.add_argument("--seed", type=int, default=0, help="seed of the `n` subsets (default 0)")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args(argv)
    try:
        if args.max_length < 1:
            raise UserError(f"--max-length must be a positive number of tokens, got {args.max_length}")
        stream = load_stream(args.stream)
        tokenizer = models.load_tokenizer(args.tokenizer)
        root = data_root(args.data_root)
        for spec in stream.experiences:
            records = training_records(spec, seed=args.seed, data_root=root)
            counts = length_counts(encode_records(spec, records, tokenizer, progress=False), experience=spec.name,
                                   max_length=spec.train.max_length or args.max_length)
            share = counts.dropped_too_long / max(counts.examples, 1)
            print(f"{counts.summary()} [{share:.1%} dropped]", flush=True)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
