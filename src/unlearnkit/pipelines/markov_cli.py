"""The IMU seed's four commands, with the seed's flag names and defaults (specs/markov_imu.md §5):

    unlearnkit markov generate-data  [data flags] --data_dir data --seed 42
    unlearnkit markov train          [data + model flags] --seed 42 --batch_size 128 --epochs 5 --learning_rate 5e-4
                                     --model_type pretrain|retain [--only_forget1]
    unlearnkit markov unlearn-imu    [data + model + pretraining flags] --loss_type IMU --seed 42 --batch_size 4
                                     --learning_rate 5e-4 --alpha 0.002 --max_iterations 50 --use_retrain_eval
    unlearnkit markov unlearn        ... --loss_type NPO|SimNPO_KL|... --beta 1

Each command builds the same `MarkovConfig` that `unlearnkit run markov` validates and drives the same cached
stages, so the same flags give the same models and numbers. `--config FILE` reads flag values from a YAML file
(shipped: configs/markov/<command>.yaml, which hold the seed README's commands); flags given on the command line
win. The seed's three seeds map to --seed of each command; the later commands also take --data_seed and
--training_seed (default 42, as in the seed README) to find the data and models that the earlier ones built.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from pathlib import Path

from .._registry import METHODS
from ..config import ConfigError, build, load_yaml
from .markov import METHODS_OF_THE_SEED, MarkovConfig

SEED_ALIASES = {"ga": "grad_ascent", "gd": "grad_descent"}
WEIGHTED = {"imu"}  # the losses that --alpha affects
BETA = ("npo", "npo_kl", "npo_rt", "simnpo", "simnpo_kl", "simnpo_rt")


def loss_name(loss_type: str) -> str:
    """The seed's --loss_type spelling (NPO, SimNPO_KL, grad_diff_KL_forget, IMU, ...; case-insensitive) -> our
    registry key. Unknown -> ConfigError listing the valid ones."""
    norm = loss_type.strip().lower().replace("-", "_")
    if norm in SEED_ALIASES:
        return SEED_ALIASES[norm]
    by_squashed = {n.replace("_", ""): n for n in METHODS_OF_THE_SEED}
    if norm.replace("_", "") in by_squashed:
        return by_squashed[norm.replace("_", "")]
    raise ConfigError(f"unknown loss type '{loss_type}'; valid (case-insensitive): "
                      f"{', '.join(METHODS_OF_THE_SEED)} (also GA, GD)")


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state_size", type=int, default=10)
    for chain in ("retain", "forget1", "forget2"):
        p.add_argument(f"--seq_length_{chain}", type=int, default=20)
    p.add_argument("--num_retain_sequences", type=int, default=10000)
    p.add_argument("--num_forget_sequences1", type=int, default=5000)
    p.add_argument("--num_forget_sequences2", type=int, default=5000)
    p.add_argument("--data_dir", default="data", help="a copy of the generated data is written here")
    p.add_argument("--test_size", type=float, default=0.2)
    p.add_argument("--leakage", type=float, default=0.2)
    p.add_argument("--config", help="YAML file (or a shipped name, e.g. train) with flag values")


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--activation", default="softmax")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--only_forget1", action="store_true")
    p.add_argument("--data_seed", type=int, default=42, help="the seed the data was generated with")


def _unlearn_flags(p: argparse.ArgumentParser, default_loss: str | None) -> None:
    p.add_argument("--pretraining_batch_size", type=int, default=128)
    p.add_argument("--pretraining_epochs", type=int, default=5)
    p.add_argument("--pretraining_learning_rate", type=float, default=5e-4)
    p.add_argument("--training_seed", type=int, default=42, help="the seed the original model was trained with")
    p.add_argument("--loss_type", default=default_loss, help="required (here or in --config)")
    p.add_argument("--seed", type=int, default=42, help="the unlearning seed")
    p.add_argument("--unlearning_epochs", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--learning_rate", type=float, default=5e-4)
    p.add_argument("--alpha", type=float, default=None, help="IMU's L1 weight (default 1e-4)")
    p.add_argument("--beta", type=float, default=0.0, help="NPO / SimNPO beta (must be > 0 for them)")
    p.add_argument("--top_data", type=float, default=1.0)
    p.add_argument("--max_iterations", type=int, default=50)
    p.add_argument("--use_retrain_eval", action="store_true")
    p.add_argument("--forget_set", default="both", choices=("forget1", "forget2", "both"))
    p.add_argument("--output_dir", default="runs/markov")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unlearnkit markov", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("generate-data", help="generate (or load) the three-chain data set")
    _data_flags(p)
    p.add_argument("--seed", type=int, default=42)
    p = sub.add_parser("train", help="train the original (pretrain) or the retrained (retain) model")
    _data_flags(p)
    _model_flags(p)
    p.add_argument("--seed", type=int, default=42, help="the training seed")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--learning_rate", type=float, default=5e-4)
    p.add_argument("--model_type", choices=("pretrain", "retain"), help="required (here or in --config)")
    for name, loss in (("unlearn-imu", "IMU"), ("unlearn", None)):
        p = sub.add_parser(name, help=f"unlearn with {'IMU' if loss else 'any loss type'} (cached models needed)")
        _data_flags(p)
        _model_flags(p)
        _unlearn_flags(p, loss)
    return parser


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:  # flag values from YAML, then the command line again on top
        path = Path(args.config)
        if not path.suffix:
            from . import PRESET_DIR

            path = PRESET_DIR / "markov" / f"{args.config}.yaml"
        values = load_yaml(path)
        sub = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001
        known = {a.dest for a in sub._actions}  # noqa: SLF001
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"config file '{path}': unknown flag(s) {unknown}; valid: {sorted(known - {'help'})}")
        sub.set_defaults(**values)
        args = parser.parse_args(argv)
    for flag in ("model_type", "loss_type"):  # required, but may come from --config, so checked after the merge
        if flag in vars(args) and getattr(args, flag) is None:
            raise ConfigError(f"unlearnkit markov {args.command} needs --{flag}")
    return args


def config_from_flags(args: argparse.Namespace) -> MarkovConfig:
    """The MarkovConfig that the seed command's flags describe."""
    data = {k: getattr(args, k) for k in ("state_size", "seq_length_retain", "seq_length_forget1",
                                          "seq_length_forget2", "num_retain_sequences", "num_forget_sequences1",
                                          "num_forget_sequences2", "test_size", "leakage")}
    data["seed"] = args.seed if args.command == "generate-data" else args.data_seed
    values: dict = {"data": data}
    if args.command == "generate-data":
        return build(MarkovConfig, values)
    values["model"] = {k: getattr(args, k) for k in ("n_embd", "n_layer", "n_head", "activation", "dropout")}
    values["only_forget1"] = args.only_forget1
    if args.command == "train":
        values["pretrain"] = {"batch_size": args.batch_size, "epochs": args.epochs, "lr": args.learning_rate}
        values["seeds"] = [args.seed]
        return build(MarkovConfig, values)
    name = loss_name(args.loss_type)
    if name in BETA and args.beta <= 0:
        raise ConfigError(f"--beta {args.beta} with --loss_type {args.loss_type}: NPO and SimNPO divide by beta; "
                          "give beta > 0 (the seed's experiments use --beta 1)")
    params: dict = {}
    if name in BETA:
        params["beta"] = args.beta
    if name == "imu":
        params.update(alpha=1e-4 if args.alpha is None else args.alpha, top_data=args.top_data)
    elif args.alpha is not None:
        warnings.warn(f"--alpha {args.alpha} has no effect with --loss_type {args.loss_type} (recorded only)",
                      UserWarning, stacklevel=2)
    values.update(
        pretrain={"batch_size": args.pretraining_batch_size, "epochs": args.pretraining_epochs,
                  "lr": args.pretraining_learning_rate},
        seeds=[args.training_seed], forget_set=args.forget_set, methods=[name], method={name: params},
        unlearn={"lr": args.learning_rate, "batch_size": args.batch_size, "max_iterations": args.max_iterations,
                 "epochs": args.unlearning_epochs, "seed": args.seed},
        metrics=["markov_loss", "markov_kl_true"] + (["markov_kl_retrain"] if args.use_retrain_eval else []),
        output_dir=args.output_dir)
    return build(MarkovConfig, values)


def main(argv: Sequence[str]) -> int:
    from ..data.markov import load_or_generate, save
    from .markov import MarkovRunner, run_markov

    args = _parse(argv)
    cfg = config_from_flags(args)
    if args.command == "generate-data":
        from ..cache import cache_root

        data, hit = load_or_generate(cfg.data, cache_root())
        target = Path(args.data_dir) / f"markov-{data.hash}.npz"
        save(data, target)
        print(f"data {data.hash}: {'loaded from cache' if hit else 'generated'}; written to {target}")
    elif args.command == "train":
        runner = MarkovRunner(cfg)
        stage = runner.trained(cfg.seeds[0], args.model_type)
        print(f"{args.model_type} model: cache key {stage.key}")
    else:
        METHODS.get(cfg.methods[0])
        result = run_markov(cfg, build_models=False)
        final = [r for r in result.rows if r["label"] == cfg.methods[0]][-1]["metrics"]
        print("\n".join(f"{k:24s} {v:.6f}" for k, v in final.items()))
        print(f"results: {result.output_dir / 'results.jsonl'}\nreport:  {result.report}")
    return 0


__all__ = ["build_parser", "config_from_flags", "loss_name", "main"]
