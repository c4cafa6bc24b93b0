"""``fsseg ARGS``: a tool's ``main``, or LightningCLI (``FssegCLI``, imported only then), and the one
place errors reach the user (``fsseg.cli.errors``: one ``error:`` line and exit code 2 for bad input,
the traceback and exit code 1 for a bug; ``--debug`` shows the traceback of either)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fsseg.cli.commands import SUBCOMMANDS, TOOLS, tool_main
from fsseg.cli.errors import DEBUG_ENV, UsageError, is_user_error, one_line, user_facing
from fsseg.cli.help import main_help
from fsseg.cli.quiet import quiet_frameworks, set_quiet_levels

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "lightning_configs"


def run_cli(args: list[str] | None = None, run: bool = True, raise_argument_errors: bool = False):
    """Run LightningCLI in-process (``args`` as on the command line; None: ``sys.argv``).

    ``raise_argument_errors``: a parse error raises jsonargparse's ``ArgumentError`` (``main`` prints
    it as one line) instead of printing usage and a multi-line report and exiting."""
    # `fsseg predict --ckpt_path ... --data.support_dir s/ --data.query_dir q/` works without --config:
    # the predict subcommand starts from lightning_configs/predict.yaml when it is there.
    predict_cfg = REPO_CONFIGS / "predict.yaml"
    parser_kwargs: dict = {sub: {} for sub in SUBCOMMANDS}
    if predict_cfg.exists():
        parser_kwargs["predict"]["default_config_files"] = [str(predict_cfg)]
    if raise_argument_errors:
        parser_kwargs["exit_on_error"] = False
        for sub in SUBCOMMANDS:
            parser_kwargs[sub]["exit_on_error"] = False
    from fsseg.cli.lightning_cli import FssegCLI
    from fsseg.runs import release_shared_run

    set_quiet_levels()
    try:
        cli = FssegCLI(
            parser_kwargs=parser_kwargs,
            model_class=None,
            datamodule_class=None,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )
    finally:
        release_shared_run()
    if run:
        finish_wandb()
    return cli


def finish_wandb() -> None:
    """Close the W&B run a subcommand opened, so the next run in this process gets its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def dispatch(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help"):
        print(main_help())
        return
    if args[0] in TOOLS:
        tool_main(args[0])(args[1:])
        return
    if args[0] not in SUBCOMMANDS and not args[0].startswith("-"):
        raise UsageError(f"unknown command {args[0]!r}; choose one of {', '.join([*SUBCOMMANDS, *TOOLS])} "
                         "(fsseg --help)")
    if any(a in ("-h", "--help") for a in args):
        run_cli(args, run=True)  # LightningCLI prints help and exits
        return
    run_cli(args, raise_argument_errors=True)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")
    verbose = "--verbose" in args
    args = [a for a in args if a not in ("--debug", "--verbose")]
    if not verbose:
        quiet_frameworks()
    import warnings

    # main() hands LightningCLI the command line itself (after taking --debug out of it)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        dispatch(args)
    except SystemExit as e:
        # Tools stop on bad input with SystemExit("<message>"): the same one-line `error:` and exit code 2
        if isinstance(e.code, str):
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(2)
        raise
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the one place errors reach the user
        if debug:
            raise
        if is_user_error(e):
            print(f"error: {one_line(user_facing(e))}", file=sys.stderr)
            sys.exit(2)
        import traceback

        traceback.print_exc()
        print(f"error: unexpected {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
              "(this looks like a bug in fsseg; the traceback is above)", file=sys.stderr)
        sys.exit(1)
