"""Shared fixtures of the launcher tests: command-line options as the training launcher parses them."""

import argparse

import pytest

from dinov2.run.submit import get_args_parser


def stand_in_train_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Options of the training entry point (dinov2.train.train.get_args_parser), for tests that must not
    depend on the trainer."""
    parser = argparse.ArgumentParser("training", add_help=add_help)
    parser.add_argument("--config-file", default="", type=str)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--eval-only", action="store_true")
    parser.add_argument("--output-dir", default="", type=str)
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER)
    return parser


@pytest.fixture
def train_args_parser_factory():
    """Stand-in for dinov2.train.train.get_args_parser."""
    return stand_in_train_args_parser


@pytest.fixture
def parse_launcher_args(monkeypatch):
    """Parse a launcher command line with the stand-in training options; SLURM_PARTITION unset."""
    monkeypatch.delenv("SLURM_PARTITION", raising=False)
    monkeypatch.delenv("SDSH_CLUSTER_TYPE", raising=False)

    def parse(argv):
        parser = get_args_parser(parents=[stand_in_train_args_parser(add_help=False)])
        return parser.parse_args(argv)

    return parse
