"""README.md is a manual: at most 300 lines, and every command in its shell blocks runs as written.

The commands of docs/*.md, which regenerate the studies' figures, are held to the same check.

"Runs as written" is checked as far as it can be without data, weights or long runs: each command's
arguments go through the argument parser of its own entry point, and where the command has a config
(``--config-file`` and ``key=value`` options) the config is merged and validated, so that a wrong
option, an unknown config key or a missing config file fails here. ``make`` targets must exist in the
Makefile; ``torchrun`` commands are parsed by torchrun's own parser, then their script or module as
above; ``bash`` scripts must exist and pass ``bash -n``. Data folders and weights files are not checked: a fresh clone has neither.
"""

import argparse
import importlib
import importlib.util
import inspect
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import pytest

from dinov2.utils.config import merge_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 300
SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
PYTHONS = ("python", "python3", ".venv/bin/python")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class CommandError(AssertionError):
    """A README command that would not run as written."""


def shell_commands(markdown: str) -> List[Tuple[int, str]]:
    """The commands of the fenced shell blocks of a Markdown text.

    Args:
        markdown: the text.
    Returns:
        ``(line number, command)`` per command, with backslash continuations joined and comments
        (whole-line or trailing) removed.
    """
    commands = []
    in_block = False
    pending, pending_line = "", 0
    for number, line in enumerate(markdown.splitlines(), start=1):
        fence = line.strip()
        if fence.startswith("```"):
            in_block = not in_block and fence[3:].strip().lower() in SHELL_LANGUAGES
            continue
        if not in_block:
            continue
        if not pending:
            pending_line = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command = shlex.join(shlex.split(pending + line, comments=True))
        pending = ""
        if command:
            commands.append((pending_line, command))
    return commands


def _makefile_targets() -> List[str]:
    text = (ROOT / "Makefile").read_text()
    return re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.MULTILINE)


def _check_config(args: argparse.Namespace, command: str) -> None:
    """Merge and validate the config that a parsed command names."""
    config_file = getattr(args, "config_file", None)
    # "--" separates a script's own options from config overrides (scripts/collapse_study.py).
    opts = [o for o in (getattr(args, "opts", None) or []) if o != "--" and not o.startswith("train.output_dir=")]
    if config_file is None and not opts:
        return
    try:
        validate_config(merge_config(config_file or None, opts))
    except ValueError as error:
        raise CommandError(f"{command}: {error}") from error


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str], command: str) -> argparse.Namespace:
    try:
        return parser.parse_args(list(argv))
    except SystemExit as exit_:
        raise CommandError(f"{command}: its parser refuses the arguments (exit {exit_.code})") from exit_


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace):
        super().__init__("parsed")
        self.namespace = namespace


def _parse_inside(main: Callable, program: str, argv: Sequence[str], command: str) -> argparse.Namespace:
    """Run ``main`` only as far as its first ``parse_args``: the parser it builds itself parses argv."""
    real_parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        raise _Parsed(real_parse_args(parser, args, namespace))

    saved_argv = sys.argv
    argparse.ArgumentParser.parse_args = parse_then_stop
    sys.argv = [program, *argv]
    try:
        if inspect.signature(main).parameters:
            main(list(argv))
        else:
            main()
    except _Parsed as parsed:
        return parsed.namespace
    except SystemExit as exit_:
        raise CommandError(f"{command}: its parser refuses the arguments (exit {exit_.code})") from exit_
    finally:
        argparse.ArgumentParser.parse_args = real_parse_args
        sys.argv = saved_argv
    raise CommandError(f"{command}: {program} returned without parsing its arguments")


def _train(argv: Sequence[str], command: str) -> None:
    from dinov2.train import train

    _check_config(_parse(train.get_args_parser(), argv, command), command)


def _slurm_train(argv: Sequence[str], command: str) -> None:
    from dinov2.run.submit import check_args
    from dinov2.run.train import train as launcher

    args = _parse_inside(launcher.main, "dinov2/run/train/train.py", argv, command)
    try:
        check_args(args)
    except (ValueError, FileNotFoundError) as error:
        raise CommandError(f"{command}: {error}") from error
    _check_config(args, command)


def _retrieval(argv: Sequence[str], command: str) -> None:
    from dinov2.eval.retrieval import tool

    _check_config(_parse(tool.get_args_parser(), argv, command), command)


def _baselines(argv: Sequence[str], command: str) -> None:
    from dinov2.eval.baselines import tool

    _check_config(_parse(tool.get_args_parser(), argv, command), command)


def _search(argv: Sequence[str], command: str) -> None:
    from dinov2.search import cli

    _check_config(_parse(cli.get_args_parser(), argv, command), command)


def _script(path: str, argv: Sequence[str], command: str) -> None:
    script = ROOT / path
    if not script.is_file():
        raise CommandError(f"{command}: no script {path}")
    spec = importlib.util.spec_from_file_location(f"readme_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "main"):
        raise CommandError(f"{command}: {path} has no main()")
    _check_config(_parse_inside(module.main, path, argv, command), command)


# The entry points a README command may name: module (python -m) or script path -> its check.
MODULES: Dict[str, Callable[[Sequence[str], str], None]] = {
    "dinov2.eval.retrieval": _retrieval,
    "dinov2.eval.baselines": _baselines,
    "dinov2.search": _search,
}
SCRIPTS: Dict[str, Callable[[Sequence[str], str], None]] = {
    "dinov2/train/train.py": _train,
    "dinov2/run/train/train.py": _slurm_train,
}


def _python(target: str, is_module: bool, argv: Sequence[str], command: str) -> None:
    if is_module:
        if target not in MODULES:
            raise CommandError(f"{command}: no check for module {target} (known: {', '.join(MODULES)})")
        if importlib.util.find_spec(target) is None:
            raise CommandError(f"{command}: no module {target}")
        MODULES[target](argv, command)
    elif target in SCRIPTS:
        SCRIPTS[target](argv, command)
    elif target.startswith("scripts/") and target.endswith(".py"):
        _script(target, argv, command)
    else:
        raise CommandError(f"{command}: no check for script {target}")


# Programs of other projects that the docs show (their options are theirs to check).
EXTERNAL_PROGRAMS = ("curl", "huggingface-cli")


def check_command(command: str) -> None:
    """Exercise one README command as far as possible without data or a long run.

    Raises:
        CommandError: the command names an unknown program, script, module or make target, or its
            arguments or config are refused.
    """
    words = shlex.split(command)
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    if not words:
        raise CommandError(f"{command!r}: no program")
    program, argv = words[0], words[1:]
    if program == "make":
        targets = _makefile_targets()
        missing = [t for t in argv if not t.startswith("-") and t not in targets]
        if not argv or missing:
            raise CommandError(f"{command}: no Makefile target {missing or argv} (targets: {', '.join(targets)})")
    elif program in PYTHONS:
        if argv[:1] == ["-m"] and len(argv) > 1:
            _python(argv[1], True, argv[2:], command)
        elif argv and not argv[0].startswith("-"):
            _python(argv[0], False, argv[1:], command)
        else:
            raise CommandError(f"{command}: expected 'python -m MODULE ...' or 'python SCRIPT ...'")
    elif program == "bash":
        script = ROOT / argv[0] if argv else None
        if script is None or not script.is_file():
            raise CommandError(f"{command}: no script {argv[:1]}")
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        if syntax.returncode != 0:
            raise CommandError(f"{command}: bash -n {argv[0]}: {syntax.stderr.strip()}")
    elif program == "torchrun":
        from torch.distributed import run as torchrun

        args = _parse(torchrun.get_args_parser(), argv, command)
        _python(args.training_script, args.module, args.training_script_args, command)
    elif program in ("pip", "pip3") and argv[:1] == ["install"]:
        # The project's extras must exist: pip install 'sdsh[parquet]' names one of pyproject.toml's.
        extras = _pyproject_extras()
        for spec in argv[1:]:
            match = re.fullmatch(r"sdsh\[([\w,]+)\]", spec)
            if match and not set(match.group(1).split(",")) <= extras:
                raise CommandError(f"{command}: no extra {match.group(1)!r} in pyproject.toml ({', '.join(sorted(extras))})")
    elif program in EXTERNAL_PROGRAMS:
        pass  # another program's command line (a download, an HTTP request): nothing of the project to check
    else:
        raise CommandError(f"{command}: no check for program {program!r}")


def _pyproject_extras():
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^(\w+) = ", section, flags=re.M))


README_COMMANDS = shell_commands(README.read_text())
DOCS_COMMANDS = [(path.name, line, command) for path in DOCS for line, command in shell_commands(path.read_text())]


def _case_id(source: str, line: int, command: str) -> str:
    words = [w for w in shlex.split(command) if not ENV_ASSIGNMENT.match(w)]
    return f"{source}:{line} {' '.join(words[:4])}"


def test_readme_is_at_most_300_lines():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; a manual keeps to {MAX_README_LINES}"


def test_readme_has_commands():
    assert README_COMMANDS, "no command found in README.md's shell blocks"


@pytest.mark.parametrize(
    "command", [c for _, c in README_COMMANDS], ids=[_case_id("README.md", n, c) for n, c in README_COMMANDS]
)
def test_readme_command_runs_as_written(command):
    check_command(command)


@pytest.mark.parametrize("command", [c for _, _, c in DOCS_COMMANDS], ids=[_case_id(*case) for case in DOCS_COMMANDS])
def test_docs_command_runs_as_written(command):
    check_command(command)


# Commands that must be refused, each for one reason.
WRONG_COMMANDS = {
    "unknown make target": "make demos",
    "unknown extra": "pip install 'sdsh[parket]'",
    "unknown option": "python dinov2/train/train.py --config-file configs/demo.yaml --output-dir x --fake-option",
    "unknown config key": "python dinov2/train/train.py --config-file configs/demo.yaml --output-dir x train.data_pth=/d",
    "missing config file": "python dinov2/train/train.py --config-file configs/no_such.yaml --output-dir x",
    "unknown tool option": "python -m dinov2.eval.retrieval --config-file configs/demo.yaml --output-dir x --tpk 3",
    "unknown subcommand": "python -m dinov2.search find --index x",
    "unknown key under torchrun": "torchrun --nproc_per_node 2 dinov2/train/train.py --output-dir x a.b=1",
    "bad launcher option": "python dinov2/run/train/train.py --ngpus 0 --config-file configs/demo.yaml --output-dir x",
    "missing script argument": "python scripts/plot_training.py",
    "unknown script": "python scripts/no_such_script.py",
    "unknown collapse study override": "python scripts/collapse_study.py --sets demo -- hash.no_such_key=1",
    "unknown shell script": "bash scripts/no_such.sh",
    "unknown program": "wget http://127.0.0.1:8000/",
}


@pytest.mark.parametrize("command", list(WRONG_COMMANDS.values()), ids=list(WRONG_COMMANDS))
def test_a_command_that_would_not_run_is_caught(command):
    with pytest.raises(CommandError):
        check_command(command)


def test_continuations_and_comments_are_read_like_a_shell():
    text = "```bash\n# a comment\npython -m dinov2.search serve \\\n    --index d  # trailing\n```\n"
    assert shell_commands(text) == [(3, "python -m dinov2.search serve --index d")]
