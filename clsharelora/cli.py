"""`clsharelora` command line: run, compare, report, list, bench.

User mistakes (bad YAML, unknown names, missing data, impossible values) print one `error:` line and exit 2;
nothing is written before the inputs are validated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError
from .pathsafe import check_inside, check_name

EPILOG = """examples:
  clsharelora run --stream streams/demo.yaml --strategy sharelora --model smollm2-135m --out runs/demo-sharelora
  clsharelora run --stream streams/paper.yaml --strategy lora --model llama2-7b --set adapter.r=64 --out runs/l2-lora
  clsharelora run ... --resume          # continue a killed run from its last checkpoint
  clsharelora run ... --dry-run         # meta-device model: parameter counts, memory plan, stream; no weights
  clsharelora compare --stream streams/demo.yaml --strategies lora,sharelora --out runs/demo
  clsharelora report runs/demo/* --out reports/demo
"""


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML run config (keys as in `clsharelora run --print-config`)")
    p.add_argument("--stream", help="stream YAML path or name in streams/ (default: streams/demo.yaml)")
    p.add_argument("--model", help="registry name (clsharelora list), HF hub id or local path")
    p.add_argument("--cl", help="continual-learning method: naive (default), replay, ewc, ...")
    p.add_argument("--seed", type=int)
    p.add_argument("--data-root", help="benchmark data root (default: $CLSHARELORA_DATA or ../shared/data)")
    p.add_argument("--device", help="auto (default) | cpu | cuda | cuda:N")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set adapter.r=64 --set train.max_steps=100 (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="build the model on the meta device and print parameter counts, memory plan and stream")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clsharelora", description=__doc__.splitlines()[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train a stream with one strategy, scoring every task after each experience",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    _add_run_options(run)
    run.add_argument("--strategy", help="adapter strategy: sharelora (default), lora, vera, ...")
    run.add_argument("--variant", help="ShareLoRA variant: share_a | share_b | share_ab")
    run.add_argument("--out", help="run directory (default: runs/<name>)")
    run.add_argument("--name", help="run name (default: <stream>-<strategy>[-<variant>][-<cl>]; variant and CL "
                                    "method appear when they are not the defaults)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    run.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    run.add_argument("--shared-row0", metavar="DIR",
                     help="folder where runs share the untrained model's scores (row 0) when their settings and "
                          "untrained function are identical; compare and study pass it (docs/evaluation.md)")

    compare = sub.add_parser("compare", help="run several strategies on the same stream, model and seed")
    _add_run_options(compare)
    compare.add_argument("--strategies", default="lora,sharelora",
                         help="comma list of ADAPTER[:VARIANT][+CL], e.g. lora,sharelora:share_a,lora+replay")
    compare.add_argument("--out", required=True, help="parent directory; one run directory per strategy")
    compare.add_argument("--resume", action="store_true", help="resume runs that exist, start the others")
    compare.add_argument("--jobs", type=int, default=1,
                         help="strategies run at once, each in its own process with the CPUs split between them "
                              "(logs in OUT/.compare/); default 1: one after the other in this process")

    study = sub.add_parser("study", help="a grid of strategies x seeds x task orders, resumable (docs/studies.md)")
    study.add_argument("--config", required=True, help="study YAML (configs/study-*.yaml)")
    study.add_argument("--out", help="study directory (default: runs/study-<name>)")
    study.add_argument("--jobs", type=int, default=1, help="cells run at once; the CPUs are split between them")
    study.add_argument("--resume", action="store_true", help="continue the study in --out")
    study.add_argument("--dry-run", action="store_true", help="print the grid and a compute estimate; run nothing")
    study.add_argument("--flops", type=float, help="sustained FLOP/s assumed by --dry-run's estimate")
    study.add_argument("--no-progress", action="store_true", help="no progress bar")

    report = sub.add_parser("report", help="plots, tables and report.md/.html from run directories")
    report.add_argument("args", nargs=argparse.REMAINDER, help="RUN_DIR... --out DIR (see clsharelora report -h)")

    lst = sub.add_parser("list", help="known models, strategies, streams and tasks")
    lst.add_argument("--verbose", "-v", action="store_true",
                     help="also every strategy's options with defaults and help (imports the plug-ins)")

    bench = sub.add_parser("bench", help="benchmarks (make bench)")
    bench.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _config_from_args(args, *, adapter: str | None = None, variant: str | None = None, cl: str | None = None,
                      out: str | None = None, name: str | None = None):
    from . import config as cfgmod
    from . import registry
    from .benchmarks.stream import load_stream

    data = cfgmod.load_yaml(args.config) if args.config else {}
    for key in ("stream", "model", "seed", "device"):
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
    if args.data_root is not None:
        data["data_root"] = args.data_root
    if adapter:
        data["adapter"] = _switch(data.get("adapter"), adapter, "adapter")
    if variant:
        data["adapter"] = {**_as_block(data.get("adapter") or "sharelora"), "variant": variant}
    if cl:
        data["cl"] = _switch(data.get("cl"), cl, "cl")
    if out:
        data["out"] = out
    if name:
        data["name"] = name
    for assignment in args.overrides:
        cfgmod.apply_override(data, assignment)
    config = cfgmod.from_dict(data)
    # option and stream errors are reported before torch is imported (prepare creates the strategies and
    # loads the stream again); only then is a strategy named on the command line imported, so that a
    # plug-in failing to import is still an error naming its file
    registry.check_option_names(config.adapter, "adapter")
    registry.check_option_names(config.cl, "cl")
    load_stream(config.stream)
    for kind, named in (("adapter", adapter), ("cl", cl)):
        if named:
            registry.get(named, kind)
    return config


def _switch(block, name: str, kind: str) -> dict:
    """Select strategy `name`, keeping the options of the config's block that it also understands
    (so `compare --strategies lora,sharelora` gives both the config's r, alpha and targets).

    The one rule for the rest: an option is dropped only when the block names its strategy explicitly and
    that strategy knows the option (`adapter: {name: sharelora, variant: share_a}` switched to lora drops
    `variant`); an option that neither strategy knows is an error with a "did you mean", as with --set."""
    from . import registry
    from .errors import did_you_mean

    block = _as_block(block)
    known = registry.option_defaults(name, kind)
    owner = registry.option_defaults(block["name"], kind) if block.get("name") else {}
    for key in block:
        if key != "name" and key not in known and key not in owner:
            where = f"{kind} strategy {block['name']!r}" if block.get("name") else f"{kind} strategy {name!r}"
            raise UserError(f"unknown option {kind}.{key} for {where}{did_you_mean(key, {**known, **owner})}; "
                            f"known options: {', '.join(sorted({**known, **owner}))}")
    return {"name": name, **{k: v for k, v in block.items() if k != "name" and k in known}}


def _as_block(value) -> dict:
    if value is None:
        return {}
    return {"name": value} if isinstance(value, str) else dict(value)


def _cmd_run(args) -> int:
    config = _config_from_args(args, adapter=args.strategy, variant=args.variant, cl=args.cl, out=args.out,
                               name=args.name)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    if args.dry_run:
        from .dry_run import dry_run, length_policy_lines

        print(dry_run(config))
        print("\n".join(length_policy_lines(config)))
        return 0
    from .training.runner import run

    run_dir = run(config, resume=args.resume, progress=not args.no_progress, shared_row0=args.shared_row0)
    print(f"results: {run_dir / 'results.json'}")
    return 0


def parse_strategy_spec(spec: str) -> tuple[str, str | None, str | None]:
    """'sharelora:share_b+replay' -> ('sharelora', 'share_b', 'replay')."""
    spec = spec.strip()
    if not spec:
        raise UserError("--strategies: empty entry")
    head, _, cl = spec.partition("+")
    adapter, _, variant = head.partition(":")
    return adapter, variant or None, cl or None


def _cmd_compare(args) -> int:
    specs = [parse_strategy_spec(s) for s in args.strategies.split(",")]
    configs = []
    labels = []
    for spec, (adapter, variant, cl) in zip(args.strategies.split(","), specs):
        label = adapter + (f"-{variant}" if variant else "") + (f"-{cl}" if cl else "")
        check_name(label, "strategy label", f"from --strategies entry {spec.strip()!r}")
        if label in labels:
            raise UserError(f"--strategies: {spec.strip()!r} gives the run folder {label!r} a second time; "
                            "give each strategy once")
        labels.append(label)
        check_inside(Path(args.out) / label, args.out, f"run folder of {spec.strip()!r}:")
        configs.append(_config_from_args(args, adapter=adapter, variant=variant, cl=cl or args.cl,
                                         out=str(Path(args.out) / label), name=label))
    check_inside(Path(args.out) / SHARED_ROW0, args.out, "the runs' shared row-0 folder")
    if args.dry_run:
        from .dry_run import dry_run, length_policy_lines

        for config in configs:
            print(dry_run(config))
        print("\n".join(length_policy_lines(configs[0])))   # the same data and tokenizer for every strategy
        return 0
    from .training.rundir import holds_run
    from .training.runner import prepare, run

    def resume(config) -> bool:  # --resume continues the runs that exist and starts the others
        return args.resume and holds_run(Path(config.out))

    if args.jobs != 1:
        from .training.run_pool import split_cpus

        jobs, threads = split_cpus(args.jobs)     # a bad --jobs is refused before anything is written
    for config in configs:  # validate every run before starting the first
        prepare(config, resume=resume(config))
    if args.jobs == 1:
        for config in configs:
            run_dir = run(config, resume=resume(config), progress=not args.no_progress,
                          shared_row0=Path(args.out) / SHARED_ROW0)
            print(f"results: {run_dir / 'results.json'}")
        return 0
    return _compare_in_processes(configs, Path(args.out), jobs, threads, resume, progress=not args.no_progress)


#: under a compare's --out: the folder where its runs share row 0 (training/shared_row0.py)
SHARED_ROW0 = Path(".compare") / "row0"


def _compare_in_processes(configs, out: Path, jobs: int, threads: int, resume, *, progress: bool) -> int:
    """`compare --jobs N`: every strategy a `clsharelora run --config` child (the pool `study` uses), its
    resolved config and log under OUT/.compare/ (hidden, so `report OUT/*` sees only run directories)."""
    import dataclasses

    import yaml
    from tqdm.auto import tqdm

    from . import atomic
    from .benchmarks.stream import load_stream
    from .training.results import scored_rows
    from .training.run_pool import RunJob, run_pool

    side = out / ".compare"
    todo = []
    for config in configs:
        config = dataclasses.replace(config, out=str(Path(config.out).resolve()))
        path = side / f"{Path(config.out).name}.yaml"
        atomic.write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
        todo.append(RunJob(Path(config.out).name, path, Path(config.out), side / f"{Path(config.out).name}.log",
                           shared_row0=(out / SHARED_ROW0).resolve()))
    by_dir = {job.run_dir: config for job, config in zip(todo, configs)}
    rows = {job.run_dir: len(load_stream(config.stream).experiences) + 1 for job, config in zip(todo, configs)}
    # One bar over the score rows of every run (before training + after each experience), read from each
    # run's results.json as it goes: a bar over whole runs would sit at 0 for the first quarter hour.
    bar = tqdm(total=sum(rows.values()), desc="compare", unit="row", disable=not progress, dynamic_ncols=True)
    print(f"compare: {len(todo)} runs, {jobs} at a time x {threads} thread(s); logs in {side}", file=sys.stderr,
          flush=True)
    failed = []
    finished: set[Path] = set()

    def tick():
        scored = sum(rows[d] if d in finished else min(rows[d], scored_rows(d)) for d in rows)
        bar.update(scored - bar.n)

    def done(job, code, seconds):
        finished.add(job.run_dir)
        tick()
        if code != 0:
            failed.append(f"error: run {job.key} failed (exit {code}, see {job.log})")
        else:
            print(f"results: {job.run_dir / 'results.json'} ({seconds:.0f} s)", flush=True)

    try:
        run_pool(todo, jobs=jobs, threads=threads, resume=lambda job: resume(by_dir[job.run_dir]),
                 on_start=lambda running: bar.set_postfix_str(", ".join(running)[:80]), on_done=done, on_tick=tick)
    finally:
        bar.close()
    for line in failed:
        print(line, file=sys.stderr)
    return 1 if failed else 0


def _cmd_study(args) -> int:
    from .study.grid import load_study

    study = load_study(args.config)
    if args.dry_run:
        from .study.estimate import estimate

        print(estimate(study, args.flops))
        return 0
    from .study.runner import run_study

    out = args.out or str(Path("runs") / f"study-{study.name}")
    code = run_study(args.config, out, jobs=args.jobs, resume=args.resume, progress=not args.no_progress)
    print(f"study: {out} (status.tsv; report with `clsharelora report {out} --out reports/{Path(out).name}`)")
    return code


def _cmd_list(args) -> int:
    """Names come from static reads (plug-in files by `ast`, the task table, the model table): no torch."""
    from . import registry
    from .evaluation.tasks import task_names
    from .models.names import known_models
    from .paths import PROJECT_ROOT

    print("models:     " + ", ".join(known_models()) + "  (or any HF id / local path)")
    print("adapters:   " + ", ".join(registry.listed("adapter")))
    print("cl methods: " + ", ".join(registry.listed("cl")))
    print("streams:    " + ", ".join(sorted(p.stem for p in (PROJECT_ROOT / "streams").glob("*.yaml"))))
    print("tasks:      " + ", ".join(task_names()))
    if args.verbose:
        for kind in registry.KINDS:
            for name in registry.known(kind):
                print()
                print(registry.describe_class(registry.get(name, kind)))
    return 0


def _quiet_third_party_warnings() -> None:
    """Import-time and deprecation chatter from dependencies hides our own output; keep real warnings."""
    import warnings

    warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: list[str] | None = None) -> int:
    _quiet_third_party_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from .hardware import apply_cpu_threads

        apply_cpu_threads()  # before torch loads: threads that fit the affinity mask and cgroup CPU quota
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "compare":
            return _cmd_compare(args)
        if args.command == "list":
            return _cmd_list(args)
        if args.command == "study":
            return _cmd_study(args)
        if args.command == "report":
            from clsharelora.analysis.report import main as report_main

            return report_main(args.args)
        if args.command == "bench":
            from clsharelora.bench.run import main as bench_main

            return bench_main(args.args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
