"""Configuration files: ``--config FILE.toml`` and a run folder's ``config.toml``.

``--recipe NAME`` starts from a documented configuration shipped with
rankdistill (``rankdistill/recipes/NAME.toml``; ``papers``: the DE-RRD and DCD
authors' training recipe); ``--config`` and the command line override it.

A configuration file holds a command's flags as TOML keys, spelt like the flag
without its dashes, with ``-`` or ``_`` (``weight_decay = 1e-6``, ``lr =
1e-3``, ``data = "ratings.csv"``, ``columns = ["user", "item", "rating"]``,
``resume = true``); the method options of ``-o`` are the table
``[options]`` (``lambda_ucd = 0.1``), one table per method for
``METHOD:KEY=VALUE`` (``[options.dcd]``, ``mu = 0.01``). Every value goes
through the flag's own checks; flags given on the command line override the
file (``-o`` options are added after the file's, so they win too). An unknown
key, a value of the wrong type or out of range is a ``ConfigError`` naming the
file and the key.

Every training command (train, teacher, student, distill, compare) writes its
effective configuration (the file's and the command line's, defaults
included) to ``RUN_FOLDER/config.toml`` (:class:`RunConfig`), so that
``rankdistill COMMAND --config RUN_FOLDER/config.toml`` runs it again.

TOML is read with ``tomllib`` (Python 3.11+) or, on Python 3.10, the
``tomli`` package (``pip install tomli``); written by a small writer of flat
keys and the ``[options]`` tables (no dependency).
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import ConfigError
from .io import atomic_open, check_readable_file

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

__all__ = ["RECIPES", "RUN_CONFIG", "RunConfig", "apply_config_file", "dumps", "read_toml", "recipe_path"]

log = logging.getLogger("rankdistill")

RUN_CONFIG = "config.toml"
# The table of method options (the flag -o/--option).
OPTIONS = "options"
_OPTION_DEST = "option"
# Flags that say how to run, not what: never written to a run's config.toml.
NOT_RECORDED = ("config", "resume", "overwrite", "no_progress", "quiet")
# Flags whose value is a comma-separated list: a TOML array is accepted too.
LIST_FLAGS = ("cutoffs", "seeds", "methods", "columns", "patience_metrics")
# The recipes of --recipe: TOML files in rankdistill/recipes.
_RECIPE_FOLDER = Path(__file__).resolve().parent / "recipes"
RECIPES = tuple(sorted(path.stem for path in _RECIPE_FOLDER.glob("*.toml")))
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


# ---------------------------------------------------------------- reading

def recipe_path(name: str) -> Path:
    """The TOML file of recipe ``name`` (one of ``RECIPES``)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    return _RECIPE_FOLDER / f"{name}.toml"


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """The TOML file at ``path`` as a dict; a ``ConfigError`` naming the file
    (and the line) when it is not valid TOML."""
    path = Path(path)
    check_readable_file(path, "config file")
    if tomllib is None:
        raise ConfigError(f"{path}: reading a TOML file needs Python 3.11 or later, or on Python 3.10 the tomli "
                          "package (pip install tomli)")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (a TOML file must be UTF-8)") from None


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _command(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[str, argparse.ArgumentParser] | None:
    """The command of ``argv`` (its first word: the top level has no option
    that takes a value) and its parser; None when there is none."""
    for token in argv:
        if token == "--":
            return None
        if not token.startswith("-"):
            sub = _subparsers(parser).get(token)
            return None if sub is None else (token, sub)
    return None


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """A command's flags by key (the long option without its dashes, ``-`` as
    ``_``), in the order of ``--help``; ``--no-X`` of a ``--X/--no-X`` pair and
    ``--config`` itself are not keys."""
    flags: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if (not action.option_strings or action.dest == "config"
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            continue
        for option in action.option_strings:
            negative = isinstance(action, argparse.BooleanOptionalAction) and option.startswith("--no-")
            if option.startswith("--") and not negative:
                flags.setdefault(option[2:].replace("-", "_"), action)
    return flags


class _PreParseError(Exception):
    pass


class _PreParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # the full parse reports it
        raise _PreParseError(message)


def apply_config_file(parser: argparse.ArgumentParser,
                      argv: Sequence[str]) -> tuple[str, argparse.ArgumentParser] | None:
    """Before ``parser.parse_args(argv)``: when ``argv``'s command has
    ``--recipe NAME`` or ``--config FILE``, make the recipe's values, then the
    file's, that command's defaults (so that the command line overrides them),
    checked like the flags. Returns the command and its parser (None when
    ``argv`` has no known command)."""
    found = _command(parser, argv)
    if found is None:
        return None
    name, sub = found
    dests = {action.dest for action in sub._actions}
    pre = _PreParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--recipe")
    try:
        known, _ = pre.parse_known_args(list(argv[list(argv).index(name) + 1:]))
    except _PreParseError:
        return found  # e.g. --config without a value: the full parse says so
    sources = []
    if known.recipe is not None and "recipe" in dests and known.recipe in RECIPES:  # else the full parse says so
        sources.append(recipe_path(known.recipe))
    if known.config is not None and "config" in dests:
        sources.append(Path(known.config))
    values: dict[str, Any] = {}
    for path in sources:
        values.update(config_values(read_toml(path), sub, name, path, _subparsers(parser)))
    for action in sub._actions:
        if action.dest in values and action.required:
            action.required = False  # given by the file
    sub.set_defaults(**values)
    return found


def config_values(table: dict[str, Any], parser: argparse.ArgumentParser, command: str, path: Path,
                  commands: dict[str, argparse.ArgumentParser] | None = None) -> dict[str, Any]:
    """The parsed values (by ``dest``) of a configuration ``table`` for the
    command whose parser is ``parser``."""
    flags = _flags(parser)
    takes_options = any(action.dest == _OPTION_DEST for action in flags.values())
    values: dict[str, Any] = {}
    given: dict[str, str] = {}  # dest -> the key that set it
    options: list[str] = []
    for key, value in table.items():
        normal = key.replace("-", "_")
        action = flags.get(normal)
        if normal == OPTIONS and takes_options:
            action = flags[_OPTION_DEST]
        if action is None:
            raise ConfigError(_unknown_key(key, path, command, flags, takes_options, commands or {}))
        if action.dest in given:
            raise ConfigError(f"{path}: {given[action.dest]!r} and {key!r} set the same option")
        given[action.dest] = key
        if action.dest == _OPTION_DEST:
            options = _method_options(value, key, path)
        else:
            values[action.dest] = _value(action, key, value, path)
    if options:
        values[_OPTION_DEST] = options
    return values


def _unknown_key(key: str, path: Path, command: str, flags: dict[str, argparse.Action], takes_options: bool,
                 commands: dict[str, argparse.ArgumentParser]) -> str:
    normal = key.replace("-", "_")
    known = [*flags, *([OPTIONS] if takes_options else [])]
    message = f"{path}: unknown key {key!r} for `rankdistill {command}`"
    close = difflib.get_close_matches(normal, known, n=1)
    elsewhere = [name for name, sub in commands.items() if name != command
                 and (normal in _flags(sub) or (normal == OPTIONS and _OPTION_DEST in _flags(sub)))]
    if elsewhere:
        message += f" (an option of {', '.join(elsewhere)})"
    if close:
        message += f"; did you mean {close[0]!r}?"
    if normal == "config":
        message += "; a config file cannot name another one"
    return message + f"; the keys are the flags of `rankdistill {command} --help`, without dashes"


def _expected(action: argparse.Action) -> str:
    if action.choices is not None:
        return "one of " + ", ".join(map(str, action.choices))
    if action.type in (None, Path):
        return "a string (in quotes)"
    return "a number" if action.type in (int, float) or "int" in getattr(action.type, "__name__", "") else "a value"


def _number_text(value: int | float) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _shown(value: Any) -> str:
    try:
        return _toml(value)
    except (TypeError, ValueError):
        return repr(value)


def _value(action: argparse.Action, key: str, value: Any, path: Path) -> Any:
    """A TOML value for a flag, converted and checked like the flag's text."""
    where = f"{path}: {key}"
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} = {_shown(value)}: expected true or false")
        return value
    if isinstance(value, dict):
        raise ConfigError(f"{where}: expected a value, got a table")
    if isinstance(value, list):
        if action.dest not in LIST_FLAGS:
            raise ConfigError(f"{where} = {_shown(value)}: expected one value ({_expected(action)}), got a list")
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where} = {_shown(value)}: expected a list of names or numbers")
        text = ",".join(v if isinstance(v, str) else _number_text(v) for v in value)
    elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where} = {_shown(value)}: expected {_expected(action)}")
    elif action.type in (None, Path) and not isinstance(value, str):
        raise ConfigError(f"{where} = {_shown(value)}: expected a string (in quotes)")
    else:
        text = value if isinstance(value, str) else _number_text(value)
    if action.type is None:
        result: Any = text
    else:
        try:
            result = action.type(text)
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: invalid {getattr(action.type, '__name__', 'value')} value: {text!r}") \
                from None
    if action.choices is not None and result not in action.choices:
        raise ConfigError(f"{where}: invalid choice {result!r} (choose from "
                          f"{', '.join(map(repr, action.choices))})")
    return result


def _option_text(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _number_text(value)
    if isinstance(value, str):
        return value
    raise ConfigError(f"{where} = {_shown(value)}: expected a number, a string or true/false")


def _method_options(value: Any, key: str, path: Path) -> list[str]:
    """``[options]`` as ``-o`` texts: ``KEY=VALUE`` for its keys, then
    ``METHOD:KEY=VALUE`` for its method tables; a list of ``-o`` texts is
    taken as is. Every key and value is checked against the methods'
    options here, so that a mistake names the file."""
    if isinstance(value, list):
        if not all(isinstance(text, str) and "=" in text for text in value):
            raise ConfigError(f"{path}: {key}: expected a table such as [options] lambda_ucd = 0.1, or a list of "
                              "'KEY=VALUE' texts")
        texts = list(value)
    elif isinstance(value, dict):
        generic, targeted = [], []
        for name, entry in value.items():
            if isinstance(entry, dict):
                targeted += [f"{name}:{k}={_option_text(v, f'{path}: {key}.{name}.{k}')}" for k, v in entry.items()]
            else:
                generic.append(f"{name}={_option_text(entry, f'{path}: {key}.{name}')}")
        texts = generic + targeted
    else:
        raise ConfigError(f"{path}: {key} = {_shown(value)}: expected a table such as [options] lambda_ucd = 0.1")
    for text in texts:
        _check_method_option(text, key, path)
    return texts


def _check_method_option(text: str, key: str, path: Path) -> None:
    from .methods import METHODS, method_options  # the methods import torch: only when a file has options

    target, _, assignment = text.rpartition(":")
    name, _, value = assignment.partition("=")
    name = name.strip()
    where = f"{path}: {key}.{target + '.' if target else ''}{name}"
    if target and target not in METHODS:
        raise ConfigError(f"{path}: {key}.{target}: unknown method {target!r} (see `rankdistill methods`)")
    methods = [target] if target else [m for m in METHODS if name in method_options(m).__dataclass_fields__]
    if not methods or name not in method_options(methods[0]).__dataclass_fields__:
        owner = f"method {target} has no option" if target else "no method has an option"
        raise ConfigError(f"{where}: {owner} {name!r} (see `rankdistill methods`)")
    for method in methods:
        try:
            method_options(method, {name: value.strip()})
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


# ---------------------------------------------------------------- writing

def _string(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's; DEL must be escaped too)."""
    if any("\ud800" <= c <= "\udfff" for c in text):
        raise ValueError(f"{text!r} holds characters that TOML cannot represent")
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else {"inf": "inf", "-inf": "-inf"}.get(repr(value), "nan")
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__} {value!r}")


def dumps(values: dict[str, Any], comment: str = "") -> str:
    """TOML text of flat ``values`` (None values left out) followed by its
    tables (a dict value; a dict inside it becomes a sub-table), after
    ``comment`` as ``#`` lines."""
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    tables = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_toml(value)}")
    for key, table in tables:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        subtables = {k: v for k, v in table.items() if isinstance(v, dict)}
        if scalars or not subtables:
            lines += ["", f"[{_key(key)}]", *(f"{_key(k)} = {_toml(v)}" for k, v in scalars.items())]
        for name, sub in subtables.items():
            lines += ["", f"[{_key(key)}.{_key(name)}]", *(f"{_key(k)} = {_toml(v)}" for k, v in sub.items())]
    return "\n".join(lines) + "\n"


def _option_value(text: str) -> int | float | str:
    """A ``-o`` value as a TOML number when it reads back as the same text,
    else as a string (options are given as text either way)."""
    if re.fullmatch(r"-?(0|[1-9][0-9]*)", text):
        return int(text)
    if re.fullmatch(r"-?(0|[1-9][0-9]*)\.[0-9]+", text) and repr(float(text)) == text:
        return float(text)
    return text


def options_table(texts: Sequence[str]) -> dict[str, Any]:
    """``-o`` texts (``KEY=VALUE``, ``METHOD:KEY=VALUE``, later ones winning)
    as the ``[options]`` table that gives every method the same options: a
    ``KEY=VALUE`` after ``METHOD:KEY=...`` replaces it, as on the command line."""
    generic: dict[str, Any] = {}
    targeted: dict[str, dict[str, Any]] = {}
    for text in texts:
        target, _, assignment = text.rpartition(":")
        key, _, value = assignment.partition("=")
        key, value = key.strip(), _option_value(value.strip())
        if target:
            targeted.setdefault(target, {})[key] = value
        else:
            generic[key] = value
            for table in targeted.values():
                table.pop(key, None)
    return {**generic, **{method: table for method, table in targeted.items() if table}}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class RunConfig:
    """The effective configuration of a training command: its flags' values
    (the file's, the command line's and the defaults), by key."""

    command: str
    values: dict[str, Any]

    @classmethod
    def of(cls, parser: argparse.ArgumentParser, command: str, args: argparse.Namespace) -> "RunConfig":
        values: dict[str, Any] = {}
        for key, action in _flags(parser).items():
            if action.dest in NOT_RECORDED or key in values or not hasattr(args, action.dest):
                continue
            value = getattr(args, action.dest)
            if action.dest == _OPTION_DEST:
                values[OPTIONS] = options_table(value) if value else None
            else:
                values[key] = _plain(value)
        return cls(command, values)

    def text(self, out: str | os.PathLike | None = None) -> str:
        values = dict(self.values)
        if out is not None and "out" in values:
            values["out"] = str(out)
        from . import __version__

        comment = (f"rankdistill {__version__}: the configuration of the run in this folder "
                   f"(`rankdistill {self.command}`).\n"
                   f"Run it again (e.g. into another folder): rankdistill {self.command} --config THIS_FILE "
                   "--out OTHER_FOLDER\n"
                   f"Relative paths are relative to the folder it ran in: {os.getcwd()}")
        return dumps(values, comment)

    def write(self, folder: str | os.PathLike) -> None:
        """``folder/config.toml``, atomically (the caller holds the folder's
        lock, on the main process). A value TOML cannot hold (a file name that
        is not text) leaves it unwritten, with a warning: the run goes on."""
        try:
            text = self.text(folder)
        except (TypeError, ValueError) as exc:
            log.warning("%s not written: %s", Path(folder) / RUN_CONFIG, exc)
            return
        with atomic_open(Path(folder) / RUN_CONFIG, "w") as f:
            f.write(text)
