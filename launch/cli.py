"""The `rlsys` command. Subcommands take `--config FILE` and dotted `key.sub=value` overrides;
everything else about a run lives in the config tree (rlsys/config/schema.py)."""
from __future__ import annotations

import argparse
import sys

from launch.ablate import add_arguments as ablate_arguments
from launch.train import add_arguments as train_arguments
from launch.train import config_from_args
from rlsys.config import ConfigError, documented_yaml, to_yaml


def _with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", help="YAML file mirroring the config tree (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.n=8")
    return parser


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="rlsys", description="Online RL for multimodal LLMs.")
    sub = top.add_subparsers(dest="command", required=True)
    train_arguments(sub.add_parser("train", help="train (no arguments: the embedded default)"))
    cfg = sub.add_parser("config", help="inspect configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    _with_config(cfg_sub.add_parser("show", help="print the resolved config"))
    cfg_sub.add_parser("reference", help="print every field with its documentation")
    build = sub.add_parser("build-tiny", help="build (or rebuild) the warm-started embedded model")
    _with_config(build)
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    ev = _with_config(sub.add_parser("eval", help="held-out accuracy and format rate with vLLM"))
    ev.add_argument("--model", help="model dir (default: model.path of the config)")
    ev.add_argument("--data", help="prompts file (default: data.test of the config)")
    ro = _with_config(sub.add_parser("rollout", help="record rollouts of the initial policy for offline replay"))
    ro.add_argument("--max-prompts", type=int, default=None,
                    help="only the first N training prompts (default: all)")
    _with_config(sub.add_parser("sft", help="supervised fine-tuning on demonstrations (sft.data) before RL; "
                                "writes a HF checkpoint for model.path="))
    _with_config(sub.add_parser("train-rm", help="train a scalar multimodal reward model on preference pairs "
                                "(train_rm.data, Bradley-Terry); writes the dir reward.components takes"))
    ablate_arguments(sub.add_parser("ablate", help="sampling ablation: online, then offline and mixed "
                                    "replaying it; writes table.md + accuracy.png"))
    return top


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "ablate":  # three arm configs of its own, validated there
        from launch.ablate import ablate_cli

        return ablate_cli(args, parser)
    try:
        if args.command == "config" and args.config_command == "reference":
            print(documented_yaml())
            return 0
        cfg = config_from_args(args)
    except ConfigError as err:
        print(f"rlsys: config error: {err}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(to_yaml(cfg), end="")
        return 0
    if args.command == "train":
        from launch.train import run_training

        return run_training(cfg)
    if args.command == "build-tiny":
        from launch.evaluate import build_embedded_cli

        return build_embedded_cli(cfg, force=args.force)
    if args.command == "eval":
        from launch.evaluate import evaluate_cli

        return evaluate_cli(cfg, model=args.model, data=args.data)
    if args.command == "sft":
        from launch.sft import run_sft

        return run_sft(cfg)
    if args.command == "train-rm":
        from launch.train_rm import run_train_rm

        return run_train_rm(cfg)
    if args.command == "rollout":
        from launch.rollout import rollout_cli

        return rollout_cli(cfg, max_prompts=args.max_prompts)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
