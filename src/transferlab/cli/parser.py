"""The argument parser: one sub-command per entry of the command table, the training options
made from RunConfig's fields (so --weight-decay is weight_decay everywhere), and errors in one
line with the closest option suggested."""

from __future__ import annotations

import argparse
import difflib
import sys
from dataclasses import fields

from ..config import RunConfig


class Parser(argparse.ArgumentParser):
    """argparse that says what went wrong in one line, with the closest option when one is
    mistyped, instead of printing the whole usage (pages of it for `train`)."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            # argparse reports sub-command options from the top parser: look in every parser.
            parsers = [self] + [p for a in self._actions if isinstance(a, argparse._SubParsersAction)
                                for p in a.choices.values()]
            known = [s for p in parsers for a in p._actions for s in a.option_strings if s.startswith("--")]
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], known, n=1)
                if close and close[0] != word.split("=")[0]:
                    message += f" (did you mean {close[0]}?)"
                    break
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def add_run_options(p: argparse.ArgumentParser, leave_out: tuple[str, ...] = ("data",)) -> None:
    """One option per RunConfig key (but `leave_out`), named like it, in the key's help group.
    Values are checked by RunConfig.validate, which names the option and the values it takes."""
    defaults = RunConfig()
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(RunConfig):
        if f.name in leave_out:
            continue
        group = f.metadata.get("group", "training")
        if group not in groups:
            groups[group] = p.add_argument_group(group)
        default = getattr(defaults, f.name)
        text = f.metadata.get("help", "") + (f" (default {default})" if default not in (None, "") else "")
        kind = str(f.type)
        kwargs: dict = {"dest": f.name, "help": text, "default": None}
        if "bool" in kind:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:  # "int | str" (--unfreeze 2 or all) stays text here; RunConfig reads the number
            kwargs["type"] = str if "str" in kind else int if kind.startswith("int") else float
            choices = f.metadata.get("choices")
            kwargs["metavar"] = "{" + ",".join(choices) + "}" if choices else f.name.upper().replace("_", "-")
        groups[group].add_argument("--" + f.name.replace("_", "-"), **kwargs)


def build_parser(commands) -> Parser:
    p = Parser(prog="transferlab", description="Transfer learning on small image data sets.")
    p.add_argument("-q", "--quiet", action="store_true", help="print only results and errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    for command in commands:
        cp = sub.add_parser(command.name, help=command.help, description=command.description or command.help)
        for flags, kwargs in command.arguments:
            cp.add_argument(*flags, **kwargs)
        if command.run_options is not None:
            add_run_options(cp, command.run_options)
        cp.set_defaults(handler=command.run)
    return p


def arg(*flags: str, **kwargs) -> tuple[tuple[str, ...], dict]:
    """One argument of a command, as argparse's add_argument takes it."""
    return flags, kwargs


def stderr(line: str) -> None:
    print(line, file=sys.stderr)
