"""`clsharelora` command line: run, compare, study, report, export, list, bench, bundle, gpu-check.

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
  clsharelora export runs/demo/sharelora/adapters/exp_4 --out merged --merge   # for lm-eval, vLLM, ...
"""


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML run config (keys as in `clsharelora run --print-config`)")
    p.add_argument("--stream", help="stream YAML path or name in streams/ (default: streams/demo.yaml)")
    p.add_argument("--model", help="registry name (clsharelora list), HF hub id or local path")
    p.add_argument("--seed", type=int, help="seed of data subsets, adapter init and training order (default: 0)")
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
    run.add_argument("--cl", help="continual-learning method: naive (default), replay, ewc, ...")
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
                         help="comma list of ADAPTER[(K=V,...)][:VARIANT][+CL[(K=V,...)]], e.g. "
                              "lora,sharelora:share_a,lora+ewc(ewc_lambda=100); a spec without +CL trains naively "
                              "whatever the config's cl: block says (docs/studies.md)")
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

    # report and bench parse their own options (analysis/report.py, bench/run.py): `main` hands them the rest
    # of the command line as it is, so `clsharelora report --help` prints report's options
    sub.add_parser("report", help="plots, tables and report.md/.html from run directories", add_help=False)

    export = sub.add_parser("export", help="a run's adapter as plain peft files, or merged into its base model "
                                           "(docs/interop.md)")
    export.add_argument("adapter", help="a run's adapter folder, RUN/adapters/exp_<i>")
    export.add_argument("--out", required=True, help="new folder to write (must not exist or be empty)")
    export.add_argument("--merge", action="store_true",
                        help="fold the adapter into the run's base model and write a plain transformers checkpoint "
                             "with its tokenizer (default: the peft adapter files, without sharelora.json)")

    lst = sub.add_parser("list", help="known models, strategies, streams and tasks")
    lst.add_argument("--verbose", "-v", action="store_true",
                     help="also every strategy's options with defaults and help (imports the plug-ins)")

    sub.add_parser("bench", help="benchmarks (make bench)", add_help=False)

    from . import bundle, gpu_check

    bundle.add_arguments(sub.add_parser("bundle", help=bundle.HELP, description=bundle.__doc__.split("\n\n")[0]))
    gpu_check.add_arguments(sub.add_parser("gpu-check", help=gpu_check.HELP,
                                           description=gpu_check.__doc__.split("\n\n")[0]))
    return parser


#: subcommands whose options their own parser reads (analysis/report.py, bench/run.py)
DELEGATED = {"report": "clsharelora.analysis.report", "bench": "clsharelora.bench.run"}


def _config_from_args(args, *, adapter: str | None = None, variant: str | None = None, cl: str | None = None,
                      out: str | None = None, name: str | None = None, spec=None):
    """defaults < --config < flags < --set < the strategy spec of compare (`spec`, strategy_specs.Spec)."""
    from . import config as cfgmod
    from . import registry
    from .benchmarks.stream import load_stream

    from .paths import resolve_builtin

    data = cfgmod.load_yaml(resolve_builtin(args.config, "configs")) if args.config else {}
    for key in ("stream", "model", "seed", "device"):
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
    if args.data_root is not None:
        data["data_root"] = args.data_root
    if adapter:
        data["adapter"] = cfgmod.switch_strategy(data.get("adapter"), adapter, "adapter")
    if variant:
        data["adapter"] = {**cfgmod.as_block(data.get("adapter") or "sharelora"), "variant": variant}
    if cl:
        data["cl"] = cfgmod.switch_strategy(data.get("cl"), cl, "cl")
    if out:
        data["out"] = out
    if name:
        data["name"] = name
    for assignment in args.overrides:
        cfgmod.apply_override(data, assignment)
    if spec is not None:
        from .strategy_specs import blocks

        data["adapter"], data["cl"] = blocks(spec, data.get("adapter"))
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




def _cmd_run(args) -> int:
    config = _config_from_args(args, adapter=args.strategy, variant=args.variant, cl=args.cl, out=args.out,
                               name=args.name)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    if args.dry_run:
        from .dry_run import dry_run, length_policy_lines

        print(dry_run(config, resume=args.resume))
        print("\n".join(length_policy_lines(config)))
        return 0
    from .training.runner import run

    run_dir = run(config, resume=args.resume, progress=not args.no_progress, shared_row0=args.shared_row0)
    print(f"results: {run_dir / 'results.json'}")
    return 0


def _compare_configs(args) -> list:
    """One run config per strategy spec, each spec meaning the same run under any config (strategy_specs);
    two specs that resolve to the same run, or to one folder, are an error before anything is created."""
    from . import config as cfgmod
    from .paths import resolve_builtin
    from .strategy_specs import check_distinct, note_ignored_cl, parse_list

    specs = parse_list(args.strategies)
    for assignment in args.overrides:
        if assignment.partition("=")[0].strip().split(".")[0] == "cl":
            raise UserError(f"--set {assignment}: compare takes each strategy's CL method and options from its "
                            "spec, e.g. --strategies lora+ewc(ewc_lambda=100),sharelora+ewc(ewc_lambda=100)")
    configs = [_config_from_args(args, out=str(Path(args.out) / s.label), name=s.label, spec=s) for s in specs]
    check_distinct([(s.text, c.adapter, c.cl) for s, c in zip(specs, configs)], "--strategies")
    folders: dict[str, str] = {}
    for s in specs:
        if s.label in folders:
            raise UserError(f"--strategies: {folders[s.label]!r} and {s.text!r} would share the run folder "
                            f"{s.label!r}; write their options the same way")
        folders[s.label] = s.text
        check_name(s.label, "strategy label", f"from --strategies entry {s.text!r}")
        check_inside(Path(args.out) / s.label, args.out, f"run folder of {s.text!r}:")
    check_inside(Path(args.out) / SHARED_ROW0, args.out, "the runs' shared row-0 folder")
    note_ignored_cl((cfgmod.load_yaml(resolve_builtin(args.config, "configs")) if args.config else {}).get("cl"),
                    "compare")
    return configs


def _cmd_compare(args) -> int:
    from .training.rundir import holds_run

    configs = _compare_configs(args)

    def resume(config) -> bool:  # --resume continues the runs that exist and starts the others
        return args.resume and holds_run(Path(config.out))

    if args.dry_run:
        from .dry_run import dry_run, length_policy_lines

        for config in configs:
            print(dry_run(config, resume=resume(config)))
        print("\n".join(length_policy_lines(configs[0])))   # the same data and tokenizer for every strategy
        return 0
    from .registry import PluginError
    from .training.runner import load_inputs, prepare, run

    if args.jobs != 1:
        from .training.run_pool import split_cpus

        jobs, threads = split_cpus(args.jobs)     # a bad --jobs is refused before anything is written
    # Validate every run before starting the first (the data once: it is theirs alike). A bad input stops
    # everything; a plug-in whose code raises costs only its own strategy, the others still run.
    failed: dict[str, str] = {}
    checked = False
    for config in configs:
        try:
            prep = prepare(config, resume=resume(config))
        except PluginError as exc:
            print(f"error: {config.name}: {exc}", file=sys.stderr, flush=True)
            failed[config.name] = str(exc)
            continue
        if not checked:
            load_inputs(prep)
            checked = True
    todo = [c for c in configs if c.name not in failed]
    if args.jobs == 1:
        done = {}
        for config in todo:
            try:
                run_dir = run(config, resume=resume(config), progress=not args.no_progress,
                              shared_row0=Path(args.out) / SHARED_ROW0)
            except UserError as exc:   # the user's plug-in or input: say it, go on with the other strategies
                print(f"error: {config.name}: {exc}", file=sys.stderr, flush=True)
                failed[config.name] = str(exc)
                continue
            done[config.name] = str(run_dir / "results.json")
            print(f"results: {done[config.name]}")
        return _compare_summary(configs, done, failed, code=2)
    done, codes = _compare_in_processes(todo, Path(args.out), jobs, threads, resume, progress=not args.no_progress)
    for name, why in codes.items():
        failed[name] = why
    return _compare_summary(configs, done, failed, code=2 if all("exit 2" in w for w in codes.values()) else 1)


def _compare_summary(configs, done: dict[str, str], failed: dict[str, str], *, code: int) -> int:
    """When a strategy failed: a table of every strategy (ok with its results, or failed and why) on stderr,
    and exit `code`; 0 when all ran."""
    if not failed:
        return 0
    width = max(len(c.name) for c in configs)
    lines = [f"compare: {len(failed)} of {len(configs)} strategies failed"]
    for c in configs:
        state, what = ("failed", failed[c.name]) if c.name in failed else ("ok", done.get(c.name, ""))
        lines.append(f"  {c.name:<{width}}  {state:<6}  {what}")
    print("\n".join(lines), file=sys.stderr)
    return code


#: under a compare's --out: the folder where its runs share row 0 (training/shared_row0.py)
SHARED_ROW0 = Path(".compare") / "row0"


def _compare_in_processes(configs, out: Path, jobs: int, threads: int, resume, *,
                          progress: bool) -> tuple[dict[str, str], dict[str, str]]:
    """`compare --jobs N`: every strategy a `clsharelora run --config` child (the pool `study` uses), its
    resolved config and log under OUT/.compare/ (hidden, so `report OUT/*` sees only run directories).
    Returns (run name -> results.json, run name -> why it failed: the child's last `error:` line and exit)."""
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
    failed: dict[str, str] = {}
    done_runs: dict[str, str] = {}
    finished: set[Path] = set()

    def tick():
        scored = sum(rows[d] if d in finished else min(rows[d], scored_rows(d)) for d in rows)
        bar.update(scored - bar.n)

    def done(job, code, seconds):
        finished.add(job.run_dir)
        tick()
        if code != 0:
            lines = [line for line in job.log.read_text(errors="replace").splitlines() if line.strip()]
            errors = [line[len("error: "):] for line in lines if line.startswith("error:")]
            why = errors[-1] if errors else lines[-1] if lines else "no output"
            failed[job.key] = f"{why} (exit {code}, log {job.log})"
            print(f"error: {job.key}: {failed[job.key]}", file=sys.stderr, flush=True)
        else:
            done_runs[job.key] = str(job.run_dir / "results.json")
            print(f"results: {job.run_dir / 'results.json'} ({seconds:.0f} s)", flush=True)

    try:
        run_pool(todo, jobs=jobs, threads=threads, resume=lambda job: resume(by_dir[job.run_dir]),
                 on_start=lambda running: bar.set_postfix_str(", ".join(running)[:80]), on_done=done, on_tick=tick)
    finally:
        bar.close()
    return done_runs, failed


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
    from .paths import builtin_names

    print("models:     " + ", ".join(known_models()) + "  (or any HF id / local path)")
    print("adapters:   " + ", ".join(registry.listed("adapter")))
    print("cl methods: " + ", ".join(registry.listed("cl")))
    print("streams:    " + ", ".join(builtin_names("streams")))
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
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        import importlib

        from .hardware import apply_cpu_threads

        try:
            apply_cpu_threads()   # as for every command (bench's --threads still wins)
            return importlib.import_module(DELEGATED[argv[0]]).main(argv[1:])
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
    args = parser.parse_args(argv)
    try:
        from .hardware import apply_cpu_threads

        apply_cpu_threads()  # before torch loads: threads that fit the affinity mask and cgroup CPU quota
        if args.command in ("run", "compare", "study", "gpu-check"):
            from .versions import check_versions

            check_versions()  # torch/transformers/peft outside the supported range: refused before any work
        if args.command == "bundle":
            from .bundle import main as bundle_main

            return bundle_main(args)
        if args.command == "gpu-check":
            from .gpu_check import main as gpu_check_main

            return gpu_check_main(args)
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "compare":
            return _cmd_compare(args)
        if args.command == "list":
            return _cmd_list(args)
        if args.command == "export":
            from .adapters.export import export

            print(f"exported: {export(args.adapter, args.out, merge=args.merge)}")
            return 0
        if args.command == "study":
            return _cmd_study(args)
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
