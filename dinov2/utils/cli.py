"""The shared options and ``main`` wrapper of every entry point, one exit status per kind of error.

Every entry point (``dinov2/train/train.py``, ``python -m dinov2.eval.retrieval``, ``python -m
dinov2.eval.baselines``, ``python -m dinov2.search``, the SLURM launcher) exits with:

====  ===========================================================================================
0     success (``--help`` included)
1     an unexpected failure (a bug, or the machine: out of memory, a lost process), with its traceback
2     bad input: an option, a config key or value, a missing or unreadable file (config, checkpoint,
      image, index); the message names the file, key or value
3     training stopped before its end: a non-finite loss or gradient, or ``train.stop_on_collapse``
====  ===========================================================================================

Expected failures print ``error: <message>`` on stderr (training also logs it into its log.txt), never a
traceback.

This module imports neither torch nor any other heavy library, and neither do the option modules of
the entry points: ``--help`` and usage errors answer before those load. The implementation of an
entry point is named by module path (``"package.module:function"``) and imported once the options
are parsed; that deferred import is the one place the package imports inside a function on purpose.
"""

import argparse
import importlib
import logging
import sys
from typing import Any, Callable, Optional, Sequence, Union

from dinov2.utils.config import command_line_opts, merge_config
from dinov2.utils.errors import InputError, TrainingStopped

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INPUT = 2
EXIT_STOPPED = 3

# Bad input besides the project's own InputError kinds: a path that is missing, or an output that exists.
INPUT_ERRORS = (InputError, FileNotFoundError, FileExistsError)

DEVICES = ("cpu", "cuda", "auto")

EXIT_STATUS_HELP = (
    "Exit status: 0 on success, 2 on bad input (the message names the file, key or value), "
    "3 when training stops early (non-finite loss, code collapse), 1 on an unexpected failure."
)

logger = logging.getLogger("dinov2")

MainFn = Callable[[argparse.Namespace], Any]


def positive_int(text: str) -> int:
    """An ``argparse`` type: a positive integer, else a usage error naming the value (exit status 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive integer")
    return value


def config_options(
    output_help: str = "where results are written (required)",
    device_help: Optional[str] = None,
    output_required: bool = False,
) -> argparse.ArgumentParser:
    """The options every config-driven entry point shares, as a parent parser (``parents=[...]``).

    Args:
        output_help: the help text of ``--output-dir`` for this entry point.
        device_help: the help text of ``--device``; None leaves ``--device`` out.
        output_required: make ``--output-dir`` a required option (a usage error when missing).
    Returns:
        A parser without ``-h``: ``--config-file``, ``--output-dir`` (``--output_dir``), ``--device`` (which
        sets ``train.device``) and the ``key=value`` config overrides, which take the rest of the line.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML overrides of the default config")
    parser.add_argument(
        "--output-dir", "--output_dir", default="", required=output_required, metavar="DIR", help=output_help
    )
    if device_help is not None:
        parser.add_argument("--device", choices=DEVICES, default=None, help=f"{device_help} (sets train.device)")
    parser.add_argument(
        "opts",
        help="config overrides as key=value, each naming a key of dinov2/configs/ssl_default_config.yaml "
        "(e.g. train.data_path=/data/AID hash.hash_bit=32)",
        default=None,
        nargs=argparse.REMAINDER,
    )
    return parser


def load_main(path: str) -> MainFn:
    """The function named by ``"package.module:function"``, imported now."""
    module_name, _, function = path.partition(":")
    return getattr(importlib.import_module(module_name), function)


def _start_distributed() -> bool:
    """Start the process group of a torchrun/SLURM launch (nothing in a single process); True if started here."""
    distributed = importlib.import_module("dinov2.distributed")
    if distributed.is_enabled():
        return False
    distributed.enable(overwrite=True)
    return distributed.is_enabled()


def _stop_distributed() -> None:
    importlib.import_module("torch.distributed").destroy_process_group()


def report_error(error: BaseException, log: bool = False) -> None:
    """``error: <message>`` on stderr; with ``log``, also through the ``dinov2`` logger when it is set up."""
    if log and logger.handlers:
        logger.error(str(error))
    print(f"error: {error}", file=sys.stderr)


def exit_status(error: BaseException) -> Optional[int]:
    """The exit status of an expected failure, None for any other exception."""
    if isinstance(error, TrainingStopped):
        return EXIT_STOPPED
    if isinstance(error, INPUT_ERRORS):
        return EXIT_INPUT
    return None


def run_cli(
    parser: argparse.ArgumentParser,
    main: Union[str, MainFn],
    argv: Optional[Sequence[str]] = None,
    *,
    distributed: bool = False,
    log_errors: bool = False,
) -> int:
    """Parse ``argv``, run ``main(args)`` and turn the outcome into the exit status of the table above.

    Args:
        parser: the entry point's options.
        main: the function run with the parsed options, or its ``"package.module:function"`` path,
            imported only after the options parse (so ``--help`` loads no heavy module).
        argv: the command line (``sys.argv[1:]`` when None).
        distributed: start the torch.distributed process group of a torchrun/SLURM launch before ``main``
            and destroy it afterwards (a group that already exists is left to its owner).
        log_errors: also log an expected failure, so that it ends the run's log file (training's log.txt).
    Returns:
        The exit status; any exception that is not an expected failure propagates with its traceback.
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0), or a usage error argparse has already printed (2)
        if exit_.code is None:
            return EXIT_OK
        return exit_.code if isinstance(exit_.code, int) else EXIT_FAILURE
    started = False
    try:
        if hasattr(args, "config_file") and hasattr(args, "opts"):
            # The config's keys and values are checked here, before the entry point loads torch: a bad key
            # answers at once. The entry point merges it again (with its checkpoint's keys, for the tools).
            merge_config(args.config_file, command_line_opts(args))
        main_fn = load_main(main) if isinstance(main, str) else main
        if distributed:
            started = _start_distributed()
        main_fn(args)
    except Exception as error:
        status = exit_status(error)
        if status is None:
            raise
        report_error(error, log_errors)
        return status
    finally:
        if started:
            _stop_distributed()
    return EXIT_OK
