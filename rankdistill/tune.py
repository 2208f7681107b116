"""``rankdistill tune``: a search of a training command's options on the
validation metric, then the best setting retrained with several seeds and
tested.

    rankdistill tune student --data FILE --grid lr=1e-3,1e-2 --grid weight_decay=0,1e-6 --out DIR
    rankdistill tune teacher --data FILE --range lr=1e-4:1e-1:log --trials 20 --out DIR
    rankdistill tune distill --method dcd --teacher T/best.pt --grid mu=1e-3,1e-2 --out DIR
    rankdistill tune student --data FILE --space papers --out DIR

Built on Optuna (the optional dependency ``pip install 'rankdistill[tune]'``):
``GridSampler`` when every searched key is a ``--grid``, TPE otherwise (or
``--sampler``), a ``MedianPruner`` fed each trial's validation curve, the
study in SQLite (``DIR/study.db``; ``--storage URL`` for a database shared by
several processes or machines). Rerunning the same command resumes the study.

What a trial is: the command's own run (``cli._train`` / ``cli._distill_run``,
the same split file for every trial, the same teacher and rankings cache) in
``DIR/trials/NNNN``, whose trainer (``Trainer(callbacks=[_TrialReporter],
test=False, checkpoint=False)``) reports every validation to the trial, stops
a trial the pruner gives up on, writes no checkpoint and, at the end,
**computes no test metric**: a trial's result is
its best validation metric, and the test set is read by the final retraining
alone (``DIR/final-trialNNNN/NAME/seedS``, compare's ``run_grid`` and
``report``). See docs/tuning.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import multiprocessing
import os
import queue
import shutil
import signal
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import filelock
import torch

from . import cli, distributed, progress
from .compare import (BASELINE, TEACHER_BASELINE, Report, pyplot, report, run_grid, save_figure, summary_files,
                      table_metrics)
from .errors import ConfigError, RankdistillError
from .io import atomic_open, file_sha256, run_folder_lock, write_json
from .methods import METHODS, method_options
from .split import Split
from .trainer import TrainResult, Trainer, comparable_config

__all__ = ["PAPERS_BASE", "PAPERS_METHODS", "Dimension", "add_parser", "build_space", "run"]

log = logging.getLogger("rankdistill.tune")

STUDY_DB = "study.db"
TRIALS_DIR = "trials"
TRIALS_CSV = "trials.csv"
BEST_JSON = "best.json"
SPACE_JSON = "space.json"
TRIALS_FIGURE = "trials.png"
TRIAL_JSON = "trial.json"
TRIAL_LOG = "train.log"
FINAL_PREFIX = "final-trial"
# A grid larger than this needs --trials (a sample of it): a 5,000-point grid is seldom meant.
GRID_LIMIT = 1000
# Shared storage (--storage): a trial whose process has not beaten for GRACE_SECONDS is failed and run again.
HEARTBEAT_SECONDS = 20
GRACE_SECONDS = 120
# Seconds between looks at the study while --jobs processes run the trials.
POLL_SECONDS = 1.0
# Seconds the --jobs processes get to record their interrupted trials before they are ended.
STOP_SECONDS = 15.0
# The commands tune searches, and the row name of their final runs (compare's method names).
COMMANDS = ("train", "teacher", "student", "distill")

# Training options a search may vary (the keys are the flags' dests), and their kind.
TRAINING_KEYS: dict[str, type] = {"lr": float, "weight_decay": float, "l2": float, "batch_size": int, "dim": int,
                                  "negatives": int, "corruption": float}
# ... as TrainConfig names them (a searched key is left out of the study's recorded setup).
_TRAIN_CONFIG_NAMES = {"negatives": "n_negatives"}

# ------------------------------------------------------------ the papers' spaces
#
# `--space papers`. Each entry: option -> (values, where the values come from).
# teacher/student (and distill --method student): the base model's learning
# rate and L2 regulariser, both in {1e-1, ..., 1e-6}, the grid of the DCD and
# DE-RRD papers' base models. The papers' "L2 regularizer" is the penalty on
# the embeddings a batch uses, `--l2` here; Adam's dense `--weight_decay` stays
# at its flag's value. distill: the method's own options only; the student's
# lr and l2 are the flags' (tune the student first, then pass its best --lr
# and --l2). Where the repository records a paper's range it is used (and
# named); the other ranges are values around the method's default, our choice:
# check them against the paper before citing them as its grid.

_DECADES_1_6 = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
_PAPERS_GRID = "the DCD and DE-RRD papers' base-model grid {1e-1, ..., 1e-6}"
PAPERS_BASE: dict[str, tuple[tuple[Any, ...], str]] = {
    "lr": (_DECADES_1_6, _PAPERS_GRID),
    "l2": (_DECADES_1_6, _PAPERS_GRID + " (the papers' L2 regulariser: --l2, on the embeddings each batch uses)"),
}
_OURS = "around the default (our choice, not a paper's grid)"
_LAMBDAS = ((1e-1, 1e-2, 1e-3, 1e-4, 1e-5), "decades around the default 1e-3 (our choice, not a paper's grid)")
_RRD_USER = {
    "lambda_rrd": _LAMBDAS,
    "interesting": ((10, 20, 30, 40, 50), "K: " + _OURS + "; default 40"),
    "uninteresting": ((10, 20, 30, 40, 50), "L: " + _OURS + "; default 40"),
    "temperature": ((1.0, 5.0, 10.0, 20.0), "T: CD's range 1..20 (methods/cd.py); default 10"),
}
_RRD_ITEM = {
    "lambda_ir": ((1e-1, 1e-2, 1e-3, 1e-4, 1e-5), "decades around the default 5e-4 (our choice)"),
    "item_interesting": ((10, 20, 30, 40), "K on the item side: " + _OURS + "; default 20"),
    "item_uninteresting": ((10, 20, 30, 40), "L on the item side: " + _OURS + "; default 20"),
}
_DCD = {
    "lambda_ucd": _LAMBDAS,
    "lambda_icd": _LAMBDAS,
    "mu": ((1e-1, 1e-2, 1e-3, 1e-4), "decades around the default 1e-3 (our choice)"),
    "correct_every": ((1, 3, 5, 10), "epochs between corrections: the paper's 5 and the authors' code's 3, "
                                     "with 1 and 10 (our choice)"),
}
_DE = {
    "lambda_de": ((1e-1, 1e-2, 1e-3, 1e-4), "decades around the default 1e-2 (our choice)"),
    "experts": ((5, 10, 20, 30), "M: the DE paper finds 10-20 best (docs/distillation.md); default 30"),
}
_BD_LAMBDAS = ((0.1, 0.5, 0.9), "the BD paper tries 0.1, 0.5, 0.9 (methods/bd.py)")
PAPERS_METHODS: dict[str, dict[str, tuple[tuple[Any, ...], str]]] = {
    "student": {},
    "rrd": _RRD_USER,
    "ir-rrd": _RRD_ITEM,
    "rrd+ir-rrd": {**_RRD_USER, **_RRD_ITEM},
    # DCD: its correction; its RRD part stays at the defaults (λ_RRD 1e-3, K = L = 40, T = 10).
    "dcd": _DCD,
    "dcd-no-item": {k: v for k, v in _DCD.items() if k != "lambda_icd"},
    "dcd-no-user": {k: v for k, v in _DCD.items() if k != "lambda_ucd"},
    "dcd-no-sampling": _DCD,
    "dcd-code": _DCD,
    "dcd-no-correction": {"lambda_rrd": _LAMBDAS, "lambda_ir": _RRD_ITEM["lambda_ir"]},
    "rd": {
        "lambda_rd": ((0.01, 0.1, 1.0, 10.0), "around the default 1 (our choice)"),
        "positives": ((10, 20, 30, 40, 50), "K: the papers' range 10..50 (docs/distillation.md, CD)"),
        "temperature": ((0.1, 1.0, 10.0), "RD's lambda: around the authors' default 1 (our choice)"),
        "mu": ((0.01, 0.1, 1.0), "around the authors' default 0.1 (our choice)"),
    },
    "cd": {
        "lambda_cd": ((0.01, 0.1, 1.0, 10.0), "around the default 1 (our choice)"),
        "samples": ((10, 20, 30, 40, 50), "K: the papers' range 10..50 (methods/cd.py)"),
        "temperature": ((1.0, 5.0, 10.0, 20.0), "T: the papers' range 1..20 (methods/cd.py)"),
    },
    "de": _DE,
    "de-rrd": {**_DE, "lambda_rrd": _LAMBDAS},
    "bd": {"lambda_ts": _BD_LAMBDAS, "lambda_st": _BD_LAMBDAS},
    "ibd": {"gamma_ts": _BD_LAMBDAS, "gamma_st": _BD_LAMBDAS},
}


# ------------------------------------------------------------ the command line

def add_parser(commands: argparse._SubParsersAction, *, common: argparse.ArgumentParser,
               data: argparse.ArgumentParser, evaluation: argparse.ArgumentParser,
               training: argparse.ArgumentParser, teacher: argparse.ArgumentParser,
               func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """``rankdistill tune COMMAND``: COMMAND's own options plus the search's."""
    tune = commands.add_parser(
        "tune", help="search a training command's options on the validation metric (Optuna), then retrain the "
                     "best setting with several seeds and test it")
    targets = tune.add_subparsers(dest="tune_command", required=True, metavar="COMMAND", parser_class=type(tune))
    search = _search_options()
    parents = [common, data, evaluation, training, search]
    train = targets.add_parser("train", parents=parents, help="search `rankdistill train`'s options")
    train.add_argument("--role", choices=sorted(cli.DEFAULT_DIMS), default="student", help="default: student")
    for role in cli.DEFAULT_DIMS:
        targets.add_parser(role, parents=parents, help=f"search `rankdistill {role}`'s options").set_defaults(
            role=role)
    distill = targets.add_parser("distill", parents=[common, data, evaluation, training, teacher, search],
                                 help="search `rankdistill distill`'s options (the method's with their names)")
    distill.add_argument("--method", choices=list(METHODS), default="dcd", help="default: dcd")
    distill.set_defaults(role="student")
    for parser in (tune, *targets.choices.values()):
        parser.set_defaults(func=func)
    return tune


def _search_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("search (rankdistill tune)")
    group.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="values to try, e.g. lr=1e-3,1e-2 or mu=1e-3,1e-2 (repeatable). KEY: a training option "
                            f"({', '.join(TRAINING_KEYS)}) or, for distill, an option of the method")
    group.add_argument("--range", action="append", default=[], metavar="KEY=LOW:HIGH[:log][:int]",
                       help="a range to sample, e.g. lr=1e-4:1e-1:log or dim=8:64:int (repeatable)")
    group.add_argument("--space", choices=("papers",),
                       help="papers: the papers' grids (teacher/student: lr and l2 in {1e-1, ..., 1e-6}; distill: "
                            "the method's options); --grid and --range add keys or replace its")
    group.add_argument("--sampler", choices=("auto", "grid", "tpe", "random"), default="auto",
                       help="auto (default): every point of the grid when every key is a --grid (and --trials, "
                            "if given, covers it), else TPE")
    group.add_argument("--trials", type=cli._positive_int,
                       help="trials of the study in all (default: the grid's size; needed by tpe and random)")
    group.add_argument("--jobs", type=cli._positive_int, default=1,
                       help="trials at once, each in a process of its own (torch threads: cores / jobs; default 1)")
    group.add_argument("--storage", metavar="URL",
                       help=f"the study's database (default: sqlite:///OUT/{STUDY_DB}); a database shared by "
                            "several processes or machines, e.g. postgresql://user:pw@host/db")
    group.add_argument("--study-name", help="the study's name in the storage (default: tune-COMMAND[-METHOD])")
    group.add_argument("--pruner", choices=("median", "none"), default="median",
                       help="median (default): stop a trial whose best validation so far is below the median of "
                            "the finished trials' at the same epoch")
    group.add_argument("--prune-warmup", type=cli._non_negative_int, default=20, metavar="EPOCHS",
                       help="epochs a trial runs before it can be pruned (default: 20: a slow learning rate starts slow)")
    group.add_argument("--prune-startup", type=cli._non_negative_int, default=5, metavar="N",
                       help="finished trials before any is pruned (default: 5)")
    group.add_argument("--sampler-seed", type=int, default=0, help="seed of the sampler (default: 0)")
    group.add_argument("--final-seeds", type=cli._seeds, default=[0, 1, 2],
                       help="seeds of the best setting's retraining, tested (default: 0,1,2)")
    group.add_argument("--no-final", action="store_true", help="search only: no retraining, no test")
    return parent


# ------------------------------------------------------------ the search space

@dataclass
class Dimension:
    """One searched option: a grid of ``values`` or a range ``low..high``
    (``log``: sampled on a log scale), of ``kind`` (float, int, str, bool)."""

    key: str
    target: str  # "training" (a flag) or "method" (an -o option of --method)
    kind: type
    values: tuple[Any, ...] | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    source: str = ""  # the flag that gave it, or the papers' note

    @property
    def is_grid(self) -> bool:
        return self.values is not None

    def suggest(self, trial: Any) -> Any:
        if self.values is not None:
            return trial.suggest_categorical(self.key, list(self.values))
        if self.kind is int:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)

    def points(self) -> tuple[Any, ...]:
        """The values checked before the search: every grid value, a range's ends."""
        return self.values if self.values is not None else (self.low, self.high)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "type": self.kind.__name__, "source": self.source}
        if self.values is not None:
            out.update(kind="grid", values=list(self.values))
        else:
            out.update(kind="range", low=self.low, high=self.high, log=self.log)
        return out


def _method_of(args: argparse.Namespace) -> str | None:
    return args.method if args.tune_command == "distill" else None


def _method_defaults(method: str | None) -> dict[str, Any]:
    return dataclasses.asdict(method_options(method)) if method else {}


def _key_kind(key: str, flag: str, method: str | None) -> tuple[str, type]:
    if key in TRAINING_KEYS:
        return "training", TRAINING_KEYS[key]
    defaults = _method_defaults(method)
    if key in defaults:
        return "method", type(defaults[key])
    keys = ", ".join(TRAINING_KEYS)
    which = (f"training options {keys}; options of method {method}: {', '.join(defaults)}" if method else
             f"the training options {keys} (method options need `tune distill --method M`)")
    raise ConfigError(f"{flag}: unknown key {key!r}; the keys are {which}")


def _parse_value(key: str, kind: type, target: str, text: str, method: str | None, flag: str) -> Any:
    text = text.strip()
    if not text:
        raise ConfigError(f"{flag}: an empty value")
    if target == "method":
        try:
            return getattr(method_options(method, {key: text}), key)
        except ConfigError as exc:
            raise ConfigError(f"{flag}: {exc}") from None
    parse = cli._positive_int if kind is int else (cli._dropout if key == "corruption" else cli._finite_float)
    try:
        return parse(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{flag}: {key}: {exc}") from None


def _split_key(text: str, flag: str) -> tuple[str, str]:
    key, sep, rest = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ConfigError(f"{flag}: expected KEY={'V1,V2,...' if flag.startswith('--grid') else 'LOW:HIGH'}")
    return key, rest


def _grid(text: str, method: str | None) -> Dimension:
    flag = f"--grid {text}"
    key, rest = _split_key(text, flag)
    target, kind = _key_kind(key, flag, method)
    parts = [part for part in rest.split(",")]
    if not rest.strip() or not any(part.strip() for part in parts):
        raise ConfigError(f"{flag}: no values (expected {key}=V1,V2,...)")
    values = [_parse_value(key, kind, target, part, method, flag) for part in parts]
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ConfigError(f"{flag}: {', '.join(repeated)} listed more than once")
    return Dimension(key, target, kind, values=tuple(values), source="--grid")


def _range(text: str, method: str | None) -> Dimension:
    flag = f"--range {text}"
    key, rest = _split_key(text, flag)
    target, kind = _key_kind(key, flag, method)
    low_text, sep, tail = rest.partition(":")
    high_text, _, flags_text = tail.partition(":")
    flags = [f.strip() for f in flags_text.split(":") if f.strip()] if flags_text else []
    if not sep or not low_text.strip() or not high_text.strip():
        raise ConfigError(f"{flag}: expected {key}=LOW:HIGH[:log][:int]")
    unknown = [f for f in flags if f not in ("log", "int")]
    if unknown:
        raise ConfigError(f"{flag}: unknown flag {unknown[0]!r}; expected log and/or int")
    if kind not in (int, float):
        raise ConfigError(f"{flag}: {key} takes {kind.__name__} values, not a range: list them with --grid")
    if "int" in flags and kind is not int:
        raise ConfigError(f"{flag}: {key} is not an integer option")
    low, high = (_parse_value(key, kind, target, part, method, flag) for part in (low_text, high_text))
    if not low < high:
        raise ConfigError(f"{flag}: an empty range: LOW ({low:g}) must be below HIGH ({high:g})")
    log_scale = "log" in flags
    if log_scale and not low > 0:
        raise ConfigError(f"{flag}: a log range needs LOW > 0, got {low:g}")
    return Dimension(key, target, kind, low=low, high=high, log=log_scale, source="--range")


def build_space(args: argparse.Namespace) -> dict[str, Dimension]:
    """The searched options: ``--space papers``'s, then ``--grid`` and
    ``--range`` (which add keys or replace the papers'). A ``ConfigError`` for
    an unknown key, an empty or malformed grid or range, a key given twice."""
    method = _method_of(args)
    space: dict[str, Dimension] = {}
    if args.space == "papers":
        space.update(papers_space(args.tune_command, method))
    given: dict[str, str] = {}
    for flag, texts, make in (("--grid", args.grid, _grid), ("--range", args.range, _range)):
        for text in texts:
            dim = make(text, method)
            if dim.key in given:
                raise ConfigError(f"{flag} {text}: {dim.key} is already searched ({given[dim.key]})")
            given[dim.key] = f"{flag} {text}"
            space[dim.key] = dim
    if not space:
        raise ConfigError("nothing to search: give --grid KEY=V1,V2, --range KEY=LOW:HIGH or --space papers")
    return space


def papers_space(command: str, method: str | None) -> dict[str, Dimension]:
    """``--space papers`` for ``command`` (and distill's ``method``)."""
    if method is None or method == "student":
        table = PAPERS_BASE
    elif method in PAPERS_METHODS:
        table = PAPERS_METHODS[method]
    else:
        raise ConfigError(f"--space papers: no papers' ranges for method {method}; give --grid or --range")
    space = {}
    for key, (values, note) in table.items():
        target, kind = _key_kind(key, f"--space papers ({key})", method)
        space[key] = Dimension(key, target, kind, values=tuple(values), source=f"papers: {note}")
    return space


# ------------------------------------------------------------ one setting as a command's options

def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def point_args(args: argparse.Namespace, params: dict[str, Any], *, trial: bool = False) -> argparse.Namespace:
    """The command's options with ``params`` set: training keys as their
    flags, method options as ``-o METHOD:KEY=VALUE`` after the user's own.
    ``trial``: no progress bars (a trial's run is quiet), never a resume."""
    values = dict(vars(args))
    options = list(values.get("option") or [])
    for key, value in params.items():
        if key in TRAINING_KEYS:
            values[key] = value
        else:
            options.append(f"{args.method}:{key}={_as_text(value)}")
    if "option" in values or options:
        values["option"] = options
    if trial:
        values.update(no_progress=True, resume=False, overwrite=True)
    return argparse.Namespace(**values)


def _check_points(args: argparse.Namespace, space: dict[str, Dimension]) -> list[argparse.Namespace]:
    """Every grid value and range end, checked as the command checks its
    flags (``cli._validate_before_work``): a mistake stops tune before any
    work. Returns the options of each point checked."""
    method = _method_of(args)
    cli._validate_before_work(args, [method] if method else [])
    checked = []
    for dim in space.values():
        for value in dim.points():
            point = point_args(args, {dim.key: value})
            try:
                cli._validate_before_work(point, [method] if method else [])
            except ConfigError as exc:
                raise ConfigError(f"{dim.key}={_as_text(value)} ({dim.source}): {exc}") from None
            checked.append(point)
    if "corruption" in space and method is None and (args.model or "bpr") != "cdae":
        raise ConfigError(f"corruption is CDAE's input dropout; the model here is {args.model or 'bpr'} (--model)")
    return checked


# ------------------------------------------------------------ what the trials share

@dataclass
class _Context:
    """What every trial of a search shares: the split, and for distill the
    teacher and its rankings; ``name``: the final runs' row (compare's)."""

    role: str
    method: str | None
    split_file: Any  # cli._SplitFile
    teacher: Any = None
    rankings: Any = None

    @property
    def name(self) -> str:
        if self.method is not None:
            return self.method
        return TEACHER_BASELINE if self.role == "teacher" else BASELINE

    def model(self, args: argparse.Namespace) -> tuple[str, int]:
        default = self.teacher.name if self.teacher is not None else "bpr"
        return args.model or default, args.dim or cli.DEFAULT_DIMS[self.role]


def _split_path(args: argparse.Namespace, out: Path) -> Path:
    return args.split or out / cli.SPLIT_FILE


def _prepare(args: argparse.Namespace, out: Path, points: list[argparse.Namespace],
             space: dict[str, Dimension]) -> _Context:
    """The split (made once, saved to OUT/split.npz unless --split names
    another), the teacher and its rankings (distill), every point's sizes
    checked against the data."""
    method = _method_of(args)
    if method is None:
        split_file = cli._prepare_split(args, _split_path(args, out))
        context = _Context(args.role, None, split_file)
    else:
        split_file, teacher, rankings = cli._load_teacher(args, [])
        context = _Context(args.role, method, split_file, teacher, rankings)
    for point in [args, *points]:
        cli._check_sizes(point, split_file.split, cli._validate_before_work(point, [method] if method else []))
    if "corruption" in space and context.model(args)[0] != "cdae":
        raise ConfigError(f"corruption is CDAE's input dropout; the model here is {context.model(args)[0]}")
    split_file.save_if_new()
    return context


def _worker_context(args: argparse.Namespace, out: Path) -> _Context:
    """A --jobs process's context: the split the main process saved, the teacher's cached rankings."""
    method = _method_of(args)
    if method is None:
        path = _split_path(args, out)
        return _Context(args.role, None, cli._SplitFile(Split.load(path), path))
    split_file, teacher, rankings = cli._load_teacher(args, [])
    return _Context(args.role, method, split_file, teacher, rankings)


def _train_point(args: argparse.Namespace, context: _Context, seed: int, folder: Path,
                 trainer_options: dict[str, Any] | None = None) -> tuple[Any, TrainResult]:
    """One run of the command at ``args`` (a trial's or a final run) into
    ``folder`` (``trainer_options``: a trial's, see ``_TrialReporter``)."""
    if context.method is not None:
        return cli._distill_run(args, context.method, seed, folder, context.split_file, context.teacher,
                                context.rankings, trainer_options=trainer_options)
    model, dim = context.model(args)
    return cli._train(context.role, context.split_file, cli._model_config(args, model, dim),
                      cli._train_config(args, seed), folder, resume=args.resume, overwrite=args.overwrite,
                      trainer_options=trainer_options)


def _setup(args: argparse.Namespace, space: dict[str, Dimension], context: _Context) -> dict[str, Any]:
    """What every trial of the study shares (its options but the searched
    ones, split, teacher) and the space: a rerun must match it."""
    searched = {_TRAIN_CONFIG_NAMES.get(key, key) for key in space}
    train_config = {k: v for k, v in comparable_config(dataclasses.asdict(cli._train_config(args))).items()
                    if k not in searched}
    model, dim = context.model(args)
    model_config = {k: v for k, v in cli._model_config(args, model, dim).items() if k not in searched}
    setup = {"command": args.tune_command, "role": context.role, "method": context.method,
             "split_digest": context.split_file.split.digest, "train_config": train_config,
             "model_config": model_config, "space": {key: dim.describe() for key, dim in space.items()}}
    if context.method is not None:
        setup.update(teacher_sha256=file_sha256(args.teacher), top=args.top,
                     options=sorted(cli._method_overrides(args, context.method).items()))
    return json.loads(json.dumps(setup))  # as the storage gives it back: lists, not tuples


# ------------------------------------------------------------ the trials

class _TrialFailed(Exception):
    """A trial that failed for a reason of its own (diverged, out of memory):
    recorded as FAIL with the reason, and the search goes on."""


class _TrialReporter:
    """A trial's trainer callback: every validation reported to the Optuna
    trial (``trial.report(value, epoch)``), the trial stopped when the pruner
    says so. Its trainer runs with ``test=False`` (``fit`` ends with the best
    validation epoch and never evaluates the test part) and
    ``checkpoint=False`` (a trial is never resumed: an interrupted one is run
    again)."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.trainer: Trainer | None = None
        self.curve: list[tuple[int, float]] = []
        self.pruned_at: int | None = None

    def __call__(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        import optuna

        self.trainer = trainer
        metric = trainer.config.metric
        value = record["valid"][metric]
        self.curve.append((epoch, value))
        with _Interrupt.writing():
            self.trial.report(value, epoch)
            prune = self.trial.should_prune()
        if prune:
            self.pruned_at = epoch
            raise optuna.TrialPruned(f"validation {metric} {value:.4f} after epoch {epoch}: below the median")

    def trainer_options(self) -> dict[str, Any]:
        return {"callbacks": [self], "test": False, "checkpoint": False}


@contextlib.contextmanager
def _trial_log(folder: Path):
    """A trial's log lines (its epochs) go to ``folder/train.log``, not to the terminal."""
    logger = logging.getLogger("rankdistill")
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / TRIAL_LOG, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    levels = [(h, h.level) for h in logger.handlers]
    old_level = logger.level
    for h, level in levels:
        h.setLevel(max(level, logging.WARNING))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(old_level)
        for h, level in levels:
            h.setLevel(level)


def _failure(exc: BaseException) -> str | None:
    """Why a trial failed, if for a reason of its own; None: a bug, raised."""
    if isinstance(exc, RankdistillError):  # TrainingDiverged, or a setting the data cannot take
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError) or (hasattr(torch, "OutOfMemoryError") and isinstance(exc, torch.OutOfMemoryError)):
        return f"out of memory: {exc}".strip()
    if isinstance(exc, RuntimeError) and any(s in str(exc).lower() for s in ("out of memory", "can't allocate")):
        return f"out of memory: {str(exc).splitlines()[0]}"
    return None


class _Objective:
    """A trial: its setting's run in ``OUT/trials/NNNN``; its value, the best
    validation metric (the test part is never evaluated)."""

    def __init__(self, args: argparse.Namespace, out: Path, space: dict[str, Dimension], context: _Context) -> None:
        self.args, self.out, self.space, self.context = args, out, space, context
        self.started: Callable[[], None] = lambda: None  # called once the trial exists (see _optimize)

    def __call__(self, trial: Any) -> float:
        import optuna

        self.started()
        params = {key: dim.suggest(trial) for key, dim in self.space.items()}
        folder = self.out / TRIALS_DIR / f"{trial.number:04d}"
        # the run folder, under OUT (with a --storage shared by several machines: where it is, in full)
        where = str(folder.resolve()) if self.args.storage else str(Path(TRIALS_DIR) / folder.name)
        trial.set_user_attr("folder", where)
        args = point_args(self.args, params, trial=True)
        reporter = _TrialReporter(trial)
        start = time.perf_counter()
        try:
            method = self.context.method
            cli._check_sizes(args, self.context.split_file.split,
                             cli._validate_before_work(args, [method] if method else []))
            with _trial_log(folder), _Interrupt.trial_trains():
                _, result = _train_point(args, self.context, args.seed, folder, reporter.trainer_options())
        except optuna.TrialPruned:
            self._record(trial, params, folder, reporter, "PRUNED", start)
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as exc:
            reason = _failure(exc)
            if reason is None:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            trial.set_user_attr("fail_reason", reason)
            self._record(trial, params, folder, reporter, "FAIL", start, reason)
            raise _TrialFailed(reason) from exc
        value = float(result.valid[self.args.metric])
        self._record(trial, params, folder, reporter, "COMPLETE", start)
        return value

    def _record(self, trial: Any, params: dict[str, Any], folder: Path, reporter: _TrialReporter, state: str,
                start: float, reason: str | None = None) -> None:
        trainer = reporter.trainer  # None before the first validation
        best = trainer.best if trainer is not None else None
        seconds = time.perf_counter() - start
        # the history holds the epochs before the last validation's (a pruning one raises before it is kept)
        epochs = max(len(trainer.history) if trainer is not None else 0, reporter.curve[-1][0] if reporter.curve else 0)
        attrs = {"seconds": round(seconds, 3), "epochs_run": epochs}
        if best is not None:
            attrs.update(best_valid=float(best["valid"][self.args.metric]), best_epoch=int(best["epoch"]))
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        history = trainer.history if trainer is not None else []
        write_json(folder / TRIAL_JSON, {
            "number": trial.number, "state": state, "params": params, "metric": self.args.metric,
            "fail_reason": reason, **attrs, "validation_curve": reporter.curve,
            "history": [{k: v for k, v in r.items() if k != "test"} for r in history]})


# ------------------------------------------------------------ the study

@dataclass
class _Plan:
    sampler: str  # grid, tpe, random
    target: int | None  # trials in all; None: every point of the grid
    grid_size: int | None

    @property
    def total(self) -> int:
        return self.target if self.target is not None else int(self.grid_size)


def _plan(args: argparse.Namespace, space: dict[str, Dimension]) -> _Plan:
    grid_size = math.prod(len(d.values) for d in space.values()) if all(d.is_grid for d in space.values()) else None
    kind = args.sampler
    if kind == "auto":
        kind = "grid" if grid_size is not None and (args.trials is None or args.trials >= grid_size) else "tpe"
    if kind == "grid" and grid_size is None:
        ranges = ", ".join(k for k, d in space.items() if not d.is_grid)
        raise ConfigError(f"--sampler grid needs every key as a --grid; these are ranges: {ranges}")
    if kind != "grid" and args.trials is None:
        raise ConfigError(f"--sampler {kind} (a sample of the space) needs --trials N")
    if kind == "grid" and args.trials is None and grid_size > GRID_LIMIT:
        raise ConfigError(f"the grid has {grid_size:,} points; give --trials N to try N of them (TPE picks them "
                          f"with --sampler auto; --sampler grid: at random)")
    target = args.trials
    if kind == "grid" and target is not None and target >= grid_size:
        target = None
    return _Plan(kind, target, grid_size)


def _import_optuna():
    try:
        import optuna
    except ImportError as exc:
        raise RankdistillError("rankdistill tune needs optuna, an optional dependency of rankdistill: "
                               "pip install 'rankdistill[tune]' (or pip install optuna)") from exc
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # tune says what happened, once per trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _storage_url(args: argparse.Namespace, out: Path) -> str:
    return args.storage or f"sqlite:///{(out / STUDY_DB).resolve()}"


def _storage(optuna: Any, args: argparse.Namespace, out: Path) -> Any:
    url = _storage_url(args, out)
    options: dict[str, Any] = {}
    if url.startswith("sqlite"):  # several processes write: wait for the lock rather than fail
        options["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    if args.storage is not None:  # other processes may run trials: a dead one's are found by their heartbeat
        options.update(heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)
    try:
        return optuna.storages.RDBStorage(url, **options)
    except Exception as exc:  # a malformed URL, an absent driver, an unreachable server
        raise ConfigError(f"--storage {url}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def _study_name(args: argparse.Namespace) -> str:
    method = _method_of(args)
    return args.study_name or f"tune-{args.tune_command}" + (f"-{method}" if method else "")


def _sampler(optuna: Any, plan: _Plan, space: dict[str, Dimension], seed: int) -> Any:
    if plan.sampler == "grid":  # the same seed in every process: it orders the grid
        return optuna.samplers.GridSampler({key: list(d.values) for key, d in space.items()}, seed=seed)
    if plan.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(optuna: Any, args: argparse.Namespace) -> Any:
    if args.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=args.prune_startup, n_warmup_steps=args.prune_warmup)


def _open_study(optuna: Any, args: argparse.Namespace, out: Path, space: dict[str, Dimension], plan: _Plan,
                index: int = 0) -> Any:
    storage = _storage(optuna, args, out)
    name = _study_name(args)
    seed = args.sampler_seed
    if plan.sampler != "grid":  # each process and each resume its own draws
        try:
            existing = len(optuna.load_study(study_name=name, storage=storage).trials)
        except KeyError:
            existing = 0
        seed = args.sampler_seed + 1000 * existing + index
    return optuna.create_study(study_name=name, storage=storage, sampler=_sampler(optuna, plan, space, seed),
                               pruner=_pruner(optuna, args), direction="maximize", load_if_exists=True)


def _check_setup(study: Any, setup: dict[str, Any], url: str) -> None:
    found = study.user_attrs.get("setup")
    if found is None:
        study.set_user_attr("setup", setup)
        return
    changed = []
    for key in sorted(set(found) | set(setup)):
        old, new = found.get(key), setup.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict) and key != "space":
            changed += [f"{name}: {old.get(name)!r} then, {new.get(name)!r} now"
                        for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]
        else:
            changed.append(key if key == "space" else f"{key}: {old!r} then, {new!r} now")
    if changed:
        raise ConfigError(f"{url} holds study {study.study_name!r} made with other settings ({', '.join(changed)}); "
                          "rerun it with the same options, or use another --out or --study-name, or --overwrite "
                          "to start over")


def _counted(trial: Any) -> bool:
    """A trial that counts towards --trials: finished, not interrupted."""
    name = trial.state.name
    return name in ("COMPLETE", "PRUNED") or (name == "FAIL" and "fail_reason" in trial.user_attrs)


def _interrupted(trial: Any) -> bool:
    """Failed without a reason of its own: killed, interrupted, its process gone (run again on resume)."""
    return trial.state.name == "FAIL" and "fail_reason" not in trial.user_attrs


def _recover(optuna: Any, study: Any, local: bool) -> int:
    """Trials that a killed or interrupted search left: failed (the RUNNING
    ones of a local study, which no other process can be running; a shared
    storage's by their heartbeat) and queued to run again with the same
    setting (as Optuna's RetryFailedTrialCallback). Returns how many."""
    from optuna.trial import TrialState

    storage = study._storage
    if local:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    else:
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = 0
    for trial in trials:
        if _interrupted(trial) and trial.number not in retried:
            study.add_trial(optuna.trial.create_trial(
                state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
                user_attrs={"retry_of": trial.number},
                system_attrs={k: v for k, v in trial.system_attrs.items() if k in ("grid_id", "search_space")}))
            queued += 1
    return queued


def _waiting(trials: list[Any]) -> int:
    return sum(t.state.name == "WAITING" for t in trials)


def _should_start(study: Any, plan: _Plan) -> bool:
    """Whether a process should start a trial: a queued retry, else a grid
    point nobody has run or is running (Optuna's GridSampler would run a
    running one again), until ``plan.target`` trials are done or running."""
    trials = study.get_trials(deepcopy=False)
    if _waiting(trials):
        return True
    running = sum(t.state.name == "RUNNING" for t in trials)
    if plan.sampler == "grid":
        taken = {t.system_attrs.get("grid_id") for t in trials if t.state.is_finished() or t.state.name == "RUNNING"}
        if not set(range(int(plan.grid_size))) - taken:
            return False
    return plan.target is None or sum(map(_counted, trials)) + running < plan.target


class _Interrupt:
    """Ctrl-C during a search. It interrupts a trial while the trial trains,
    never a write to the study's database (an SQLite write cut short could
    keep the database locked for the other processes): one that comes
    during a write is held until the write is done (``check``), one that
    comes between trials ends the search after the trial being recorded.
    Once per search: the terminal's and the main process's (--jobs) are one."""

    pending = False
    training = False  # a trial is training: no database write under way

    @classmethod
    def handler(cls, signum: int, frame: Any) -> None:
        if cls.pending:
            return
        cls.pending = True
        if cls.training:
            cls.training = False
            raise KeyboardInterrupt

    @classmethod
    def check(cls) -> None:
        if cls.pending:
            cls.training = False
            raise KeyboardInterrupt

    @classmethod
    @contextlib.contextmanager
    def trial_trains(cls):
        cls.check()
        cls.training = True
        try:
            yield
        finally:
            cls.training = False

    @classmethod
    @contextlib.contextmanager
    def writing(cls):
        """Around a trial's own database work within its training."""
        was, cls.training = cls.training, False
        try:
            yield
        finally:
            cls.training = was
        cls.check()

    @classmethod
    @contextlib.contextmanager
    def installed(cls):
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        cls.pending = cls.training = False
        previous = signal.signal(signal.SIGINT, cls.handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
            cls.training = False


def _start_lock(args: argparse.Namespace, out: Path) -> filelock.FileLock:
    """The lock under which a process decides to start a trial and creates it.
    Without it two processes could both see one grid point left and both start
    a trial: Optuna's GridSampler then gives the second a point that is
    running. Beside the SQLite database (the default one or a --storage
    file); for a database server, in OUT: it orders the processes of one
    machine only."""
    from sqlalchemy.engine import make_url  # Optuna's RDB storage's own dependency

    url = make_url(_storage_url(args, out))
    beside = Path(url.database).resolve() if url.drivername.startswith("sqlite") and url.database else out / STUDY_DB
    return filelock.FileLock(str(beside.with_name(beside.name + ".start.lock")))


def _optimize(study: Any, objective: _Objective, plan: _Plan, lock: filelock.FileLock,
              callbacks: list[Callable] = ()) -> None:
    """Trials until the study has its trials (the grid: each point once),
    queued retries first; a KeyboardInterrupt once Ctrl-C has stopped them.
    ``lock`` is held from the decision to start a trial until Optuna has
    created it with its setting (the objective's first step releases it)."""
    objective.started = lambda: lock.release(force=True)
    with _Interrupt.installed():
        while not _Interrupt.pending:
            lock.acquire()
            try:
                if not _should_start(study, plan):
                    break
                study.optimize(objective, n_trials=1, callbacks=list(callbacks), catch=(_TrialFailed,))
            finally:
                lock.release(force=True)
        _Interrupt.check()


# ------------------------------------------------------------ --jobs: trials in processes

def _worker_main(args: argparse.Namespace, out: Path, index: int, threads: int, errors: Any) -> None:
    """A --jobs process: trials of the study until it has its trials."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until the search starts (_optimize)
    try:
        torch.set_num_threads(threads)
        cli._configure_logging(True)
        optuna = _import_optuna()
        with progress.show_progress(False):
            space = build_space(args)
            plan = _plan(args, space)
            context = _worker_context(args, out)
            study = _open_study(optuna, args, out, space, plan, index)
            _optimize(study, _Objective(args, out, space, context), plan, _start_lock(args, out))
    except KeyboardInterrupt:
        pass
    except BaseException as exc:
        try:
            errors.put((index, exc, traceback.format_exc()))
        except Exception:  # an exception that does not pickle
            errors.put((index, None, traceback.format_exc()))
        raise SystemExit(1)


def _run_processes(args: argparse.Namespace, out: Path, jobs: int, tracker: "_Tracker", study: Any) -> None:
    spawn = multiprocessing.get_context("spawn")  # no fork of a process with torch's and Optuna's threads
    errors = spawn.Queue()
    threads = max(1, torch.get_num_threads() // jobs)
    worker_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "run_config"})
    processes = [spawn.Process(target=_worker_main, args=(worker_args, out, i, threads, errors), daemon=True,
                               name=f"rankdistill-tune-{i}") for i in range(jobs)]
    log.info("%d processes, %d torch thread(s) each", jobs, threads)
    # Ctrl-C reaches the processes (they record their trials as interrupted); here it only ends the
    # watch: a look at the study cut short could keep the database locked while they write.
    interrupted: list[int] = []
    import threading
    watching = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum)) if watching else None
    try:
        for process in processes:
            process.start()
        while not interrupted:
            for process in processes:
                process.join(timeout=POLL_SECONDS / jobs)
            tracker.refresh(study.get_trials(deepcopy=False))
            try:
                index, exc, text = errors.get_nowait()
            except queue.Empty:
                pass
            else:
                if isinstance(exc, RankdistillError):
                    raise exc
                raise RuntimeError(f"tune process {index} failed:\n{text}")
            dead = [p for p in processes if not p.is_alive() and p.exitcode not in (0, None)]
            if dead and errors.empty():
                raise RankdistillError(f"a tune process ended with exit code {dead[0].exitcode} (killed, out of "
                                       "memory?); rerun the same command to resume the study")
            if not any(p.is_alive() for p in processes):
                break
    finally:  # the others, interrupted (their trials are marked so, run again on resume), then ended
        if watching:
            signal.signal(signal.SIGINT, previous)
        for process in processes:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(process.pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_SECONDS
        for process in processes:
            process.join(timeout=max(deadline - time.monotonic(), 0.0))
            if process.is_alive():
                process.terminate()
                process.join()
        errors.close()
        errors.join_thread()
    if interrupted:
        raise KeyboardInterrupt


# ------------------------------------------------------------ progress and outputs

class _Tracker:
    """Progress (a bar: trials done, running, pruned, failed, best so far), a
    line per finished trial, and OUT/trials.csv rewritten as trials finish."""

    def __init__(self, out: Path, space: dict[str, Dimension], metric: str, plan: _Plan, trials: list[Any]) -> None:
        self.out, self.space, self.metric, self.plan = out, space, metric, plan
        self.seen = {t.number for t in trials if t.state.is_finished()}
        self.bar = progress.bar(total=plan.total, desc="tune", unit="trial", leave=True, delay=0)
        self.refresh(trials, quiet=True)

    def refresh(self, trials: list[Any], quiet: bool = False, write: bool = False) -> None:
        new = sorted((t for t in trials if t.state.is_finished() and t.number not in self.seen),
                     key=lambda t: t.number)
        counts = _counts(trials)
        best = _best(trials)
        for trial in new:
            self.seen.add(trial.number)
            if not quiet:
                log.info("trial %d %s %s: %s%s | %s", trial.number, trial.state.name, _params_text(trial.params),
                         _value_text(trial, self.metric), f" ({trial.user_attrs['seconds']:.1f} s)"
                         if "seconds" in trial.user_attrs else "", _counts_text(counts, best, self.metric))
        self.bar.n = min(counts["done"], self.bar.total)
        self.bar.set_postfix_str(_counts_text(counts, best, self.metric), refresh=True)
        if new or quiet or write:
            write_trials_csv(self.out / TRIALS_CSV, trials, self.space, self.metric)

    def callback(self, study: Any, trial: Any) -> None:
        self.refresh(study.get_trials(deepcopy=False))

    def close(self) -> None:
        self.bar.close()


def _counts(trials: list[Any]) -> dict[str, int]:
    states = [t.state.name for t in trials]
    return {"done": sum(map(_counted, trials)), "running": states.count("RUNNING"),
            "pruned": states.count("PRUNED"), "failed": sum(s == "FAIL" and _counted(t)
                                                            for s, t in zip(states, trials)),
            "complete": states.count("COMPLETE"), "interrupted": sum(map(_interrupted, trials))}


def _best(trials: list[Any]) -> Any | None:
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def _counts_text(counts: dict[str, int], best: Any | None, metric: str) -> str:
    text = (f"{counts['done']} done, {counts['running']} running, {counts['pruned']} pruned, "
            f"{counts['failed']} failed")
    if best is not None:
        text += f"; best valid {metric} {best.value:.4f} (trial {best.number})"
    return text


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_as_text(v) if not isinstance(v, float) else f'{v:g}'}" for k, v in params.items())


def _value_text(trial: Any, metric: str) -> str:
    if trial.state.name == "FAIL":
        return trial.user_attrs.get("fail_reason", "interrupted (runs again on resume)")
    if "best_valid" in trial.user_attrs:
        text = f"valid {metric} {trial.user_attrs['best_valid']:.4f} (epoch {trial.user_attrs.get('best_epoch')})"
        if trial.state.name == "PRUNED":
            text += f", pruned after epoch {trial.user_attrs.get('epochs_run')}"
        return text
    return ""


def trial_rows(trials: list[Any], space: dict[str, Dimension], metric: str) -> list[dict[str, Any]]:
    """One row per trial: its number, state, setting, best validation metric
    (a pruned trial's: up to where it stopped), best epoch, epochs run,
    seconds, the reason of a failure, the folder."""
    retried = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        reason = t.user_attrs.get("fail_reason", "")
        if _interrupted(t):
            reason = "interrupted" + (f"; run again as trial {retried[t.number]}" if t.number in retried else "")
        rows.append({"number": t.number, "state": t.state.name,
                     **{key: t.params.get(key, "") for key in space},
                     f"valid {metric}": t.user_attrs.get("best_valid", ""),
                     "best_epoch": t.user_attrs.get("best_epoch", ""),
                     "epochs_run": t.user_attrs.get("epochs_run", ""), "seconds": t.user_attrs.get("seconds", ""),
                     "fail_reason": reason, "retry_of": t.user_attrs.get("retry_of", ""),
                     "folder": t.user_attrs.get("folder", "")})
    return rows


def write_trials_csv(path: Path, trials: list[Any], space: dict[str, Dimension], metric: str) -> None:
    rows = trial_rows(trials, space, metric)
    header = ["number", "state", *space, f"valid {metric}", "best_epoch", "epochs_run", "seconds", "fail_reason",
              "retry_of", "folder"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_open(path, "w") as f:
        f.write(text.getvalue())


def plot_trials(path: Path, trials: list[Any], space: dict[str, Dimension], metric: str) -> None:
    """The validation metric of every trial against each searched option: a
    grid's values evenly spaced, a range on its scale; completed trials
    filled, pruned ones hollow (their best before they stopped), failed ones
    as crosses at the bottom."""
    plt = pyplot(path)

    keys = list(space)
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    values = [t.user_attrs["best_valid"] for t in trials if "best_valid" in t.user_attrs]
    floor = min(values) if values else 0.0
    best = _best(trials)
    for ax, key in zip(axes.flat, keys):
        dim = space[key]
        grid = list(dim.values) if dim.is_grid else None

        def x_of(value: Any) -> Any:
            return grid.index(value) if grid is not None and value in grid else value

        for state, style in (("COMPLETE", {"marker": "o", "color": "C0"}),
                             ("PRUNED", {"marker": "o", "facecolors": "none", "edgecolors": "C7"}),
                             ("FAIL", {"marker": "x", "color": "C3"})):
            chosen = [t for t in trials if t.state.name == state and key in t.params
                      and (state == "FAIL" or "best_valid" in t.user_attrs)]
            if state == "FAIL":
                chosen = [t for t in chosen if _counted(t)]
            if not chosen:
                continue
            xs = [x_of(t.params[key]) for t in chosen]
            ys = [floor if state == "FAIL" else t.user_attrs["best_valid"] for t in chosen]
            ax.scatter(xs, ys, s=22, label=state.lower(), **style)
        if best is not None and key in best.params:
            ax.scatter([x_of(best.params[key])], [best.value], s=110, marker="*", color="C1", label="best", zorder=3)
        if grid is not None:
            ax.set_xticks(range(len(grid)))
            ax.set_xlim(-0.5, len(grid) - 0.5)
            ax.set_xticklabels([_as_text(v) if not isinstance(v, float) else f"{v:g}" for v in grid],
                               rotation=45 if len(grid) > 4 else 0, fontsize=8)
        elif dim.log:
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel=f"validation {metric}")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{len(trials)} trials: best validation {metric} per setting (failed: at the bottom)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _figure(path: Path, trials: list[Any], space: dict[str, Dimension], metric: str) -> str | None:
    """Draws the figure; returns why it could not be drawn (matplotlib missing), else None."""
    try:
        plot_trials(path, trials, space, metric)
    except RankdistillError as exc:
        if not isinstance(exc.__cause__, ImportError):
            raise
        return f"no figure: {exc}"
    return None


def _write_outputs(out: Path, study: Any, space: dict[str, Dimension], plan: _Plan, args: argparse.Namespace,
                   url: str) -> tuple[Any | None, str | None]:
    trials = study.get_trials(deepcopy=False)
    metric = args.metric
    write_trials_csv(out / TRIALS_CSV, trials, space, metric)
    best = _best(trials)
    write_json(out / BEST_JSON, _best_summary(best, trials, metric, url, study.study_name))
    missing = _figure(out / TRIALS_FIGURE, trials, space, metric)
    return best, missing


def _best_summary(best: Any | None, trials: list[Any], metric: str, url: str, name: str) -> dict[str, Any]:
    return {"metric": metric, "storage": url, "study_name": name, "trials": _counts(trials),
            "best": None if best is None else {
                "number": best.number, "value": best.value, "params": best.params,
                "best_epoch": best.user_attrs.get("best_epoch"), "folder": best.user_attrs.get("folder")}}


def _space_summary(args: argparse.Namespace, space: dict[str, Dimension], plan: _Plan, url: str,
                   setup: dict[str, Any]) -> dict[str, Any]:
    return {"command": args.tune_command, "method": _method_of(args), "metric": args.metric,
            "sampler": plan.sampler, "trials": plan.total, "grid_size": plan.grid_size,
            "pruner": args.pruner if args.pruner == "none" else {
                "kind": "median", "warmup_epochs": args.prune_warmup, "startup_trials": args.prune_startup},
            "storage": url, "study_name": _study_name(args),
            "dimensions": {key: dim.describe() for key, dim in space.items()},
            "fixed": {k: v for k, v in setup.items() if k != "space"}}


# ------------------------------------------------------------ the final retraining

def _final(args: argparse.Namespace, out: Path, context: _Context, best: Any) -> tuple[Report, Path]:
    """The best trial's setting retrained with ``--final-seeds`` into
    ``OUT/final-trialNNNN/NAME/seedS`` and tested (compare's run_grid: a
    finished run is reused, an interrupted one resumed); the papers' table."""
    folder = out / f"{FINAL_PREFIX}{best.number:04d}"
    final = point_args(args, best.params)
    final.resume, final.overwrite = False, False
    name = context.name
    method = context.method

    def train(_: str, seed: int, run_folder: Path, resume: bool) -> None:
        _train_point(argparse.Namespace(**{**vars(final), "resume": resume}), context, seed, run_folder)

    def expected(_: str, seed: int) -> dict[str, Any]:
        model, dim = context.model(final)
        setup = {"split_digest": context.split_file.split.digest,
                 "train_config": dataclasses.asdict(cli._train_config(final, seed)),
                 "model_config": cli._model_config(final, model, dim)}
        if method is not None:
            setup.update(teacher_sha256=file_sha256(args.teacher), top=args.top,
                         method_options=dataclasses.asdict(method_options(method,
                                                                          cli._method_overrides(final, method))))
        return setup

    runs = run_grid(folder, [name], args.final_seeds, train=train, expected=expected)
    result = report(summary_files(folder, [name], args.final_seeds), runs,
                    table_metrics(args.protocol, cli._cutoffs_for(args)))
    return result, folder


# ------------------------------------------------------------ the command

def _clear(out: Path, args: argparse.Namespace, optuna: Any) -> None:
    """--overwrite: the study, the trials, the final runs and the outputs go (the split stays)."""
    if args.storage is None:
        (out / STUDY_DB).unlink(missing_ok=True)
    else:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=_study_name(args), storage=_storage(optuna, args, out))
    shutil.rmtree(out / TRIALS_DIR, ignore_errors=True)
    for folder in out.glob(f"{FINAL_PREFIX}*"):
        shutil.rmtree(folder, ignore_errors=True)
    for name in (TRIALS_CSV, BEST_JSON, SPACE_JSON, TRIALS_FIGURE):
        (out / name).unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    """``rankdistill tune COMMAND ...`` (see the module's docstring)."""
    if distributed.world_size() > 1:
        raise ConfigError("tune runs its trials in processes of its own (--jobs N): start it without torchrun")
    optuna = _import_optuna()
    space = build_space(args)
    points = _check_points(args, space)
    plan = _plan(args, space)
    method = _method_of(args)
    out = args.out or Path("runs") / (f"tune-{args.tune_command}" + (f"-{method}" if method else ""))
    url = _storage_url(args, out)
    with run_folder_lock(out):
        if args.overwrite:
            _clear(out, args, optuna)
        context = _prepare(args, out, points, space)
        setup = _setup(args, space, context)
        study = _open_study(optuna, args, out, space, plan)
        _check_setup(study, setup, url)
        write_json(out / SPACE_JSON, _space_summary(args, space, plan, url, setup))
        queued = _recover(optuna, study, local=args.storage is None)
        split = context.split_file.split
        print(f"{split.train.name}: tune {args.tune_command}" + (f" --method {method}" if method else "")
              + f", {plan.sampler} sampler, {plan.total} trial(s) of {', '.join(space)} on validation "
              f"{args.metric}; study {study.study_name!r} in {url}", flush=True)
        if queued:
            log.info("%d interrupted trial(s) will run again", queued)
        trials = study.get_trials(deepcopy=False)
        if not _should_start(study, plan):
            what = (f"every point of the grid ({plan.grid_size}) is done" if plan.target is None else
                    f"the study has its {plan.target} trials")
            if any(t.state.name == "RUNNING" for t in trials):
                what += " or running elsewhere"
            print(f"search complete: {what} ({len(trials)} trial(s) in {url}); nothing to run", flush=True)
        elif trials:
            log.info("resuming: %d trial(s) already in the study", len(trials))
        tracker = _Tracker(out, space, args.metric, plan, trials)
        try:
            if _should_start(study, plan):
                if args.jobs == 1:
                    _optimize(study, _Objective(args, out, space, context), plan, _start_lock(args, out),
                              [tracker.callback])
                else:
                    _run_processes(args, out, args.jobs, tracker, study)
        finally:  # trials.csv as the study stands, also when interrupted
            tracker.refresh(study.get_trials(deepcopy=False), write=True)
            tracker.close()
        best, missing = _write_outputs(out, study, space, plan, args, url)
        trials = study.get_trials(deepcopy=False)
        counts = _counts(trials)
        print(f"search: {counts['done']} trial(s): {counts['complete']} complete, {counts['pruned']} pruned, "
              f"{counts['failed']} failed" + (f", {counts['running']} running elsewhere" if counts["running"] else "")
              + (f" ({counts['interrupted']} interrupted: rerun the command to run them again)"
                 if counts["interrupted"] > sum("retry_of" in t.user_attrs for t in trials) else ""))
        if best is None:
            raise RankdistillError(f"no trial of the search completed: nothing to retrain (see {out / TRIALS_CSV})")
        print(f"best: trial {best.number}, validation {args.metric} {best.value:.4f} (epoch "
              f"{best.user_attrs.get('best_epoch')}): {_params_text(best.params)}")
        files = [out / TRIALS_CSV, out / BEST_JSON, out / SPACE_JSON] + ([] if missing else [out / TRIALS_FIGURE])
        if args.no_final:
            print(missing or "", end="\n" if missing else "")
            print(f"saved: {', '.join(map(str, files))}")
            return 0
        result, folder = _final(args, out, context, best)
        summary = _best_summary(best, trials, args.metric, url, study.study_name)
        summary["final"] = {"folder": str(folder), "seeds": args.final_seeds, "table": result.table,
                            "files": [str(f) for f in result.files]}
        write_json(out / BEST_JSON, summary)
    seeds = ",".join(map(str, args.final_seeds))
    print(f"{split.train.name}, {args.protocol} protocol: test metrics of the best setting (trial {best.number}), "
          f"retrained with seed(s) {seeds}" + (", mean ± std over seeds" if len(args.final_seeds) > 1 else ""))
    cli._print_report(result)
    if missing:
        print(missing)
    print(f"search: {', '.join(map(str, files))}")
    return 0
