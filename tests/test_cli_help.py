"""Every option of every command says what it does and, when it has one, its default."""

from __future__ import annotations

import argparse

import pytest

from scanedge.cli import build_parser
from scanedge.cli.bench import build_parser as bench_parser


def _commands(parser: argparse.ArgumentParser, name: str) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                found += _commands(sub, f"{name} {sub_name}")
    return found


COMMANDS = _commands(build_parser(), "scanedge") + _commands(bench_parser(), "edge-bench")


@pytest.mark.parametrize(("name", "parser"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_option_has_help_and_names_its_default(name, parser):
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        flag = "/".join(action.option_strings) or action.dest
        assert action.help, f"{name} {flag} has no help text"
        takes_value = not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if action.option_strings and takes_value and not action.required:
            assert "default" in action.help, f"{name} {flag}: the help does not say its default: {action.help!r}"
