"""The `unlearnkit` command.

    unlearnkit run [PRESET] [key=value ...]     run a benchmark (default: the embedded `digits` quick start)
    unlearnkit validate [PRESET] [key=value ...] check a config without running anything
    unlearnkit list methods|metrics|benchmarks|models|datasets|scores|presets
    unlearnkit show method NAME                 a method's hyperparameters and defaults
    unlearnkit report DIR                       rebuild DIR/report.md from DIR/results.jsonl
    unlearnkit cache ls | rm KEY_PREFIX | clear | path
    unlearnkit markov generate-data|train|unlearn-imu|unlearn [the IMU seed's flags]

Bad input (an unknown name, a misspelled key, a value out of range, a missing file) is one line on stderr and exit
status 2, before any training starts and before any file is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._registry import RegistryError
from .config import ConfigError

LISTS = ("methods", "metrics", "benchmarks", "models", "datasets", "scores", "presets")


def _cmd_run(args: argparse.Namespace) -> int:
    from .pipelines import run
    from .report import columns_for, format_table, latest_rows, summarize

    result = run(args.preset, args.overrides)
    if not result.rows:  # a non-main process of a multi-process launch: the main process reports
        return 0
    first = result.rows[0]
    columns = columns_for(first["benchmark"], first["scenario"])
    for (bench, scenario, model), rows in summarize(latest_rows(result.rows), columns).items():
        print(f"\n{bench} / {scenario} / {model}\n")
        print(format_table(rows, columns))
    hits = sum(result.cache_hits.values())
    print(f"models: {hits} of {len(result.cache_hits)} loaded from the cache, {len(result.cache_hits) - hits} "
          "trained in this run")
    print(f"results: {result.output_dir / 'results.jsonl'}\nreport:  {result.report}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .config import dump_yaml, to_dict
    from .pipelines import load_run_config

    entry, cfg = load_run_config(args.preset, args.overrides)
    entry.tags["validate"](cfg)  # every benchmark registers the function that checks names, values and splits
    print(dump_yaml(to_dict(cfg)), end="")
    print("# valid", file=sys.stderr)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from . import _registry as R

    if args.what == "presets":
        from .pipelines import list_presets, resolve_preset

        for name in list_presets():
            first = resolve_preset(name).read_text().splitlines()[0].lstrip("# ")
            print(f"{name:24s} {first}")
        return 0
    registry = getattr(R, args.what.upper())
    for name in registry.list(args.pattern):
        entry = registry.get(name)
        tags = entry.tags
        if args.what == "methods":
            print(f"{name:20s} {tags['kind']:9s} {'/'.join(tags['tasks']):22s} {tags['paper']}")
        else:
            print(f"{name:20s} {tags.get('paper') or entry.doc}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from ._registry import METHODS
    from .config import field_docs

    entry = METHODS.get(args.name)
    print(f"{args.name}: {entry.doc}\npaper: {entry.tags['paper']}\ntasks: {', '.join(entry.tags['tasks'])}; "
          f"kind: {entry.tags['kind']}; uses: {', '.join(entry.tags['uses'])}\n")
    for name, type_, default, help_ in field_docs(entry.obj):
        print(f"  {name:14s} {type_:24s} default {default!r:10s} {help_}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .report import build_report

    if not Path(args.dir).is_dir():
        raise ConfigError(f"report directory '{args.dir}' not found")
    try:
        print(build_report(args.dir))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from .cache import ModelCache

    cache = ModelCache()
    if args.action == "path":
        print(cache.root)
    elif args.action == "ls":
        entries = cache.entries()
        for e in entries:
            spec = e.meta.get("spec") or {}
            what = spec.get("kind", "?")
            detail = spec.get("method") or spec.get("model") or ""
            print(f"{e.key}  {what:9s} {detail:14s} {e.size_bytes / 1024:8.1f} KiB  {e.meta.get('created', '')}")
        print(f"{len(entries)} entries in {cache.root}")
    elif args.action == "rm":
        if not args.key:
            raise ConfigError("cache rm needs a key prefix (see `unlearnkit cache ls`)")
        try:
            removed = cache.remove(args.key)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if not removed:
            raise ConfigError(f"no cache entry starts with '{args.key}'")
        print("\n".join(f"removed {k}" for k in removed))
    elif args.action == "clear":
        print(f"removed {cache.clear()} entries from {cache.root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unlearnkit", description="Machine unlearning benchmarks and methods.")
    sub = parser.add_subparsers(dest="command")
    for name, helptext in (("run", "run a benchmark preset"), ("validate", "check a config, run nothing")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("preset", nargs="?", default="digits", help="preset name or YAML path (default: digits)")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. scenario=class seeds=[0,1,2]")
    p = sub.add_parser("list", help="list registered components")
    p.add_argument("what", choices=LISTS)
    p.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. 'grad_*'")
    p = sub.add_parser("show", help="show a method's hyperparameters")
    p.add_argument("kind", choices=("method",))
    p.add_argument("name")
    p = sub.add_parser("report", help="rebuild report.md from results.jsonl")
    p.add_argument("dir")
    p = sub.add_parser("cache", help="inspect or clean the model cache")
    p.add_argument("action", choices=("ls", "rm", "clear", "path"))
    p.add_argument("key", nargs="?")
    return parser


COMMANDS = {"run": _cmd_run, "validate": _cmd_validate, "list": _cmd_list, "show": _cmd_show,
            "report": _cmd_report, "cache": _cmd_cache}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]  # `unlearnkit` alone runs the quick start
    if argv[0] == "markov":  # the IMU seed's own commands and flags (pipelines/markov_cli.py)
        from .pipelines.markov_cli import main as markov_main

        try:
            return markov_main(argv[1:])
        except (ConfigError, RegistryError) as err:
            print(f"unlearnkit: error: {err}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    if args.command is None:
        args = build_parser().parse_args(["run", *argv])
    if args.command == "run" and args.preset and "=" in args.preset:
        args.overrides, args.preset = [args.preset, *args.overrides], "digits"
    if args.command == "validate" and args.preset and "=" in args.preset:
        args.overrides, args.preset = [args.preset, *args.overrides], "digits"
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, RegistryError) as err:
        print(f"unlearnkit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
