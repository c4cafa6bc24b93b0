"""The ``fsseg`` command line: LightningCLI (``fit|validate|test|predict``) plus tools (``TOOLS``).

    fsseg fit --config lightning_configs/distill_518.yaml
    fsseg fit --config lightning_configs/pascal5i_hdmnet.yaml --data.init_args.fold 0 --data.init_args.shots 1
    fsseg test --config lightning_configs/pascal5i_hsnet.yaml --ckpt_path runs/<experiment>/<run>/checkpoints/best.ckpt
    fsseg results runs/                          the paper's tables from the run folders
    fsseg predict --ckpt_path .../best.ckpt --data.support_dir s/ --data.query_dir q/ [--output_dir out/]
    fsseg params [--backbone dinov2_vitb14]      parameter table of every variant
    fsseg export --ckpt_path ... --support_dir s/ --output_dir export/     ONNX + safetensors
    fsseg demo-ui [--ckpt_path ...]              Gradio web demo (pip install 'fsseg[demo]')

The model class and the data module are chosen in the YAML (``class_path``); ``--print_config``
shows every default. fit/validate/test write one folder per run, ``runs/<experiment>/<run name>/``
(``fsseg.runs``: config, checkpoints, metrics.csv, panels, results, the W&B run); ``--ckpt_path last``
and ``--resume NAME`` continue a run in its folder and W&B run.

With ``--ckpt_path`` the model is rebuilt from the checkpoint (its architecture, trained weights and
frozen-file records, ``fsseg.modules.checkpoints``); ``--model.*`` arguments given on the command
line override the checkpoint's values (e.g. a moved ``--model.init_args.dinov2_checkpoint``).

Quiet by default: Lightning's information lines and tips, framework deprecation notices and the
CUDA-toolkit probe are not shown, and each warning is one line ``warning: <message>``; ``--verbose``
shows everything as the frameworks print it.

Errors: a bad input or configuration prints one line ``error: <message>`` and exits with code 2;
``--debug`` (or ``FSSEG_DEBUG=1``) shows the traceback instead. Unexpected errors (bugs) always
show their traceback and exit with 1.

The package, one idea a file (only ``lightning_cli`` imports torch and Lightning, when a Lightning
subcommand runs, so ``fsseg --help`` and the tools' ``--help`` answer without them):

    commands.py         the subcommands and the TOOLS table
    help.py             fsseg --help
    dispatch.py         main(): a tool or LightningCLI; errors reach the user here; run_cli()
    errors.py           one-line errors, jsonargparse reports unwrapped
    quiet.py            framework messages hidden unless --verbose
    lightning_cli.py    FssegCLI: fsseg's options, run folders, the model rebuilt from --ckpt_path
    checkpoint_args.py  which model settings the checkpoint decides, which the command line
    predict_options.py  fsseg predict's output folder and switches
"""

from fsseg.cli.commands import SUBCOMMANDS, TOOLS
from fsseg.cli.dispatch import main, run_cli
from fsseg.cli.errors import UsageError, one_line
from fsseg.cli.help import main_help, tool_help
from fsseg.cli.predict_options import default_predict_dir

__all__ = ["SUBCOMMANDS", "TOOLS", "UsageError", "default_predict_dir", "main", "main_help", "one_line", "run_cli",
           "tool_help"]
