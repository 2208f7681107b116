"""The ``rankdistill`` command line (also ``python -m rankdistill``).

    rankdistill teacher  [--data PATH] [--model bpr] [--dim 200] ...   train a teacher
    rankdistill student  [--data PATH] [--model bpr] [--dim 20] ...    train a plain student
    rankdistill train --role {teacher,student} ...                     the same two
    rankdistill distill --teacher T/best.pt --method dcd ...           distil a student from a teacher
    rankdistill compare --teacher T/best.pt --methods student,rrd,dcd --seeds 0,1,2 ...
                                                                       methods x seeds, table, tests, figure
    rankdistill methods                                                the methods and their options
    rankdistill evaluate RUN_DIR/best.pt [--split FILE] ...            evaluate a saved model
    rankdistill demo                                                   distillation on synthetic data, start here

Without ``--data`` the embedded synthetic data set is used. A mistake in the
input (missing or malformed file, bad option) prints one line
``rankdistill: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import math
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from . import __version__, distributed, progress
from . import config as config_file
from .data import FORMATS, Interactions, kcore, load, parse_columns, synthetic
from .errors import ConfigError, RankdistillError
from .evaluation import DEFAULT_CUTOFFS, PROTOCOLS, Evaluator
from .compare import (TEACHER_BASELINE, Report, format_summary, load_run, report, run_grid, summary_files,
                      table_metrics)
from .io import file_sha256, run_folder_lock, write_json
from .methods import DEFAULT_TOP, METHODS, build_method, load_or_compute_rankings, method_options
from .models import MODELS, build_model, load_model, model_info
from .report import Row, format_table
from .split import Split, leave_one_out
from .trainer import (BEST_MODEL, CHECKPOINT, OPTIMIZERS, SEEDS, MethodFactory, TrainConfig, Trainer, check_device,
                      run_outputs, seed_everything)

log = logging.getLogger("rankdistill")

# Papers' sizes: the student has about 10% of the teacher's parameters.
DEFAULT_DIMS = {"teacher": 200, "student": 20}
FULL_PROTOCOL_CUTOFFS = (5, 10, 20, 50, 100)
SPLIT_FILE = "split.npz"
SPLIT_DEFAULTS = {"seed": 0, "n_candidates": 499}
# The demo's settings (`rankdistill compare`'s options): the whole demo (a teacher,
# three students, the figure) takes about 35 s on 2 idle CPU cores. Patience 15 lets
# RRD, which climbs more slowly than the plain student, reach its best epoch.
DEMO_TRAINING = {"lr": 5e-3, "epochs": 80, "patience": 15, "batch_size": 1024}
DEMO_METHODS = ("student", "rrd", "dcd")
DEMO_OPTIONS: tuple[str, ...] = ()  # -o METHOD:KEY=VALUE; the papers' defaults
# What the demo gave over seeds 0-4 with these settings (measured; remeasure when they change).
DEMO_SEEDS_NOTE = ("one seed is one draw; over seeds 0-4 at the default settings (measured), H@5: student 0.162 "
                   "± 0.006, RRD 0.178 (+3% to +21% over the student, mean +10%; paired t-test over the seeds "
                   "p = 0.03), DCD 0.196 (+16% to +27%, mean +21%; p = 0.0003). DCD's gain holds in every seed; "
                   "RRD's is real on average but within one run's noise in 4 of the 5 seeds (--seed N to see)")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"rankdistill: error: {message}\n")


class _TqdmHandler(logging.Handler):
    """Log lines that do not break a progress bar on the terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (``what`` names it in errors)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    parse.__name__ = f"int_at_least_{low}"  # argparse's and the config files' messages name the type
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _cutoffs(text: str) -> tuple[int, ...]:
    try:
        return tuple(_positive_int(part) for part in text.split(",") if part.strip())
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None


def _metric_names(text: str) -> tuple[str, ...]:
    """Comma-separated metric names; empty: none (a run's config.toml writes no names as [])."""
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _dropout(text: str) -> float:
    value = _finite_float(text)
    if not 0 <= value < 1:  # at 1 every input would be dropped (and the rest scaled by 1/0)
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if value not in SEEDS:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {SEEDS[-1]}, got {value}")
    return value


def _common_options() -> argparse.ArgumentParser:
    parent = _Parser(add_help=False)
    parent.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parent.add_argument("--no-progress", action="store_true", help="no progress bars (off anyway when not a terminal)")
    parent.add_argument("-q", "--quiet", action="store_true", help="only warnings and the final table")
    return parent


def _columns(text: str) -> list[str]:
    try:
        roles = parse_columns(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return [role or "-" for role in roles]


def _data_options() -> argparse.ArgumentParser:
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("data")
    group.add_argument("--data", type=Path, help="users.dat or delimited text, gzip-compressed or not "
                                                 "(default: the embedded synthetic set)")
    group.add_argument("--format", choices=FORMATS, default="auto", help="file format (default: detect)")
    group.add_argument("--sep", help="delimited text: separator (default: detect tab, ::, comma, ;, |, whitespace)")
    group.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                       help="delimited text: the first line (not empty, not #) is a header of column names; "
                            "--no-header: it is data (default: a header if all its names are known column names, "
                            "e.g. userId,movieId,rating,timestamp or user_id:token)")
    group.add_argument("--columns", type=_columns, metavar="NAMES",
                       help="delimited text: the file's columns in order, e.g. user,item,rating,timestamp or "
                            "item,user; - ignores a column (default: the header's names, else user,item"
                            "[,rating[,timestamp]])")
    group.add_argument("--rating-threshold", type=_finite_float, help="delimited text: keep rows with rating >= this")
    group.add_argument("--min-user-count", type=_positive_int, default=1, help="k-core: users with >= this many")
    group.add_argument("--min-item-count", type=_positive_int, default=1, help="k-core: items with >= this many")
    group.add_argument("--split", type=Path, help="split file: loaded if it exists, else created there "
                                                 f"(default: OUT/{SPLIT_FILE})")
    group.add_argument("--split-seed", type=_seed, help=f"seed of a new split (default: {SPLIT_DEFAULTS['seed']})")
    group.add_argument("--eval-candidates", type=_positive_int,
                       help="sampled unobserved items per evaluated user in a new split "
                            f"(default: {SPLIT_DEFAULTS['n_candidates']})")
    return parent


def _eval_options() -> argparse.ArgumentParser:
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("evaluation")
    group.add_argument("--protocol", choices=PROTOCOLS, default="sampled",
                       help="rank among the sampled candidates or among all unobserved items (default: sampled)")
    group.add_argument("--cutoffs", type=_cutoffs,
                       help="metric cutoffs N, comma-separated (default: 5,10,20; full protocol: 5,10,20,50,100)")
    group.add_argument("--eval-batch-size", type=_positive_int, default=256, help="users per evaluation batch")
    return parent


def _train_options() -> argparse.ArgumentParser:
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("model and training")
    group.add_argument("--model", choices=sorted(MODELS),
                       help="base model (default: bpr; distill and compare: the teacher's)")
    group.add_argument("--dim", type=_positive_int, help="embedding size (default: teacher 200, student 20)")
    group.add_argument("--corruption", type=_dropout, default=0.5, help="CDAE input dropout (default: 0.5)")
    group.add_argument("--epochs", type=_positive_int, default=100, help="maximum epochs (default: 100)")
    group.add_argument("--batch-size", type=_positive_int, default=1024, help="positives per batch (default: 1024)")
    group.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    group.add_argument("--weight-decay", type=float, default=0.0,
                       help="Adam's weight decay: every parameter, dense, every step (default: 0)")
    group.add_argument("--data-parallel", action="store_true",
                       help="under torchrun: each process trains its share of every batch, gradients summed "
                            "(default: every process trains every batch; see docs/scaling.md for when it pays)")
    group.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                       help="adam (dense) or lazy-adam: Adam on the embedding rows each batch touches only, "
                            "several times faster on large catalogues but not the same update (bpr; no "
                            "--weight-decay, use --l2) (default: adam)")
    group.add_argument("--l2", type=float, default=0.0,
                       help="L2 penalty on the user and item embeddings each batch uses, per training pair "
                            "(the other common form; logged as the term l2; default: 0)")
    group.add_argument("--negatives", type=_positive_int, default=1,
                       help="sampled negatives per positive per epoch (default: 1)")
    group.add_argument("--eval-every", type=_positive_int, default=1, help="validate every E epochs (default: 1)")
    group.add_argument("--patience", type=_positive_int, default=10,
                       help="stop after this many validations without a better --metric (default: 10)")
    group.add_argument("--metric", default="H@5", help="model selection metric (default: H@5)")
    group.add_argument("--patience-metrics", type=_metric_names, default=(), metavar="M1,M2,...",
                       help="validation metrics whose improvement also restarts the patience, e.g. H@5,H@10,H@20 "
                            "as in the papers' code (default: --metric's only)")
    group.add_argument("--seed", type=_seed, default=0, help="training seed: initialisation, shuffling, negatives")
    group.add_argument("--out", type=Path, help="run folder (default: runs/ROLE-MODEL-dDIM)")
    group.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    group.add_argument("--overwrite", action="store_true", help="start over even if OUT has a checkpoint")
    return parent


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in METHODS and name != TEACHER_BASELINE]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown) or text!r}; "
                                         f"choose from {', '.join([TEACHER_BASELINE, *METHODS])}")
    return list(dict.fromkeys(names))


def _seeds(text: str) -> list[int]:
    try:
        values = [_seed(part) for part in text.split(",") if part.strip()]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (in {text!r})") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one seed")
    return list(dict.fromkeys(values))


def _teacher_options() -> argparse.ArgumentParser:
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("distillation")
    group.add_argument("--teacher", type=Path, required=True,
                       help="the trained teacher (its best.pt); its split is used (TEACHER_DIR/split.npz by default)")
    group.add_argument("--top", type=_positive_int, default=DEFAULT_TOP,
                       help=f"C: length of the teacher's ranked lists (default: {DEFAULT_TOP})")
    group.add_argument("-o", "--option", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                       help="a method option, e.g. lambda_ucd=0.01 or dcd:mu=0.01 (repeatable; "
                            "see `rankdistill methods`)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rankdistill", description="Ranking knowledge distillation for recommender systems.")
    parser.add_argument("--version", action="version", version=f"rankdistill {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    common, data, evaluation, training = _common_options(), _data_options(), _eval_options(), _train_options()
    settings = _Parser(add_help=False)
    settings.add_argument("--config", type=Path, metavar="FILE.toml",
                          help="read the options from a TOML file (keys: the flags without dashes, e.g. lr = 1e-3, "
                               "[options] for -o); the command line overrides it. Runs write theirs to "
                               f"OUT/{config_file.RUN_CONFIG}")

    recipe = _Parser(add_help=False)
    recipe.add_argument("--recipe", choices=config_file.RECIPES,
                        help="start from a documented set of training options: papers = the DE-RRD and DCD "
                             "authors' code (1,000 epochs, patience 20 on any of H@5/H@10/H@20, their weight "
                             "decay; docs/training.md); --config and the command line override it")
    # not tune's: its trials take their options from the command line and --grid
    trained = _Parser(add_help=False, parents=[recipe, training])
    train = commands.add_parser("train", parents=[common, settings, data, evaluation, trained],
                                help="train a teacher or a plain student")
    train.add_argument("--role", choices=sorted(DEFAULT_DIMS), default="student", help="default: student")
    train.set_defaults(func=cmd_train)
    for role in DEFAULT_DIMS:
        alias = commands.add_parser(role, parents=[common, settings, data, evaluation, trained],
                                    help=f"same as: train --role {role}")
        alias.set_defaults(func=cmd_train, role=role)

    distill = commands.add_parser("distill", parents=[common, settings, data, evaluation, trained,
                                                      _teacher_options()],
                                  help="distil a student from a trained teacher with one method")
    distill.add_argument("--method", choices=list(METHODS), default="dcd", help="default: dcd")
    distill.set_defaults(func=cmd_distill, role="student")

    compare = commands.add_parser("compare", parents=[common, settings, data, evaluation, trained,
                                                      _teacher_options()],
                                  help="several methods x seeds on one split and teacher: table, tests, figure")
    compare.add_argument("--methods", type=_names, default=["student", "rrd", "dcd"],
                         help="comma-separated (default: student,rrd,dcd); see `rankdistill methods`; "
                              f"{TEACHER_BASELINE!r}: the teacher's model trained alone (at -o teacher_dim=N "
                              "if given), the baseline of BD's and iBD's co-trained teachers")
    compare.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="comma-separated (default: 0,1,2)")
    compare.set_defaults(func=cmd_compare, role="student")

    methods = commands.add_parser("methods", parents=[common], help="list the distillation methods and their options")
    methods.set_defaults(func=cmd_methods)

    evaluate = commands.add_parser("evaluate", parents=[common, settings, data, evaluation],
                                   help="evaluate a saved model (best.pt or checkpoint.pt)")
    evaluate.add_argument("checkpoint", type=Path)
    evaluate.add_argument("--part", choices=("test", "valid"), default="test", help="held-out part (default: test)")
    evaluate.add_argument("--json", type=Path, help="also write the metrics to this JSON file")
    evaluate.set_defaults(func=cmd_evaluate)

    demo = commands.add_parser("demo", parents=[common],
                               help="distillation on the embedded synthetic data: a teacher, the plain student, "
                                    "RRD and DCD, their table and curves (about 35 s on 2 CPU cores)")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (default: runs/demo)")
    demo.add_argument("--epochs", type=_positive_int, default=DEMO_TRAINING["epochs"],
                      help=f"maximum epochs of each run (default: {DEMO_TRAINING['epochs']})")
    demo.add_argument("--seed", type=_seed, default=0, help="training seed of every run (default: 0)")
    demo.set_defaults(func=cmd_demo)
    from . import tune  # `rankdistill tune COMMAND`: the search's options beside COMMAND's (tune imports cli)
    tune.add_parser(commands, common=common, data=data, evaluation=evaluation, training=training,
                    teacher=_teacher_options(), func=cmd_tune)
    return parser


# ------------------------------------------------------------------ helpers

def _load_data(args: argparse.Namespace) -> Interactions:
    if args.data is None:
        if (args.format != "auto" or args.sep or args.header is not None or args.columns is not None
                or args.rating_threshold is not None):
            raise ConfigError("--format, --sep, --header/--no-header, --columns and --rating-threshold need --data")
        data = synthetic()
    else:
        data = load(args.data, format=args.format, sep=args.sep, header=args.header, columns=args.columns,
                    rating_threshold=args.rating_threshold)
    if args.min_user_count > 1 or args.min_item_count > 1:
        data = kcore(data, args.min_user_count, args.min_item_count)
    log.info("data: %s", data)
    return data


@dataclasses.dataclass
class _SplitFile:
    """A split and its file; ``new``: made by this command, not saved yet
    (saved once the run folder is locked, so that a refused command writes nothing)."""

    split: Split
    path: Path
    new: bool = False

    def save_if_new(self) -> None:
        if self.new:
            self.split.save(self.path)
            self.new = False
            log.info("split: %d evaluated users, saved to %s", len(self.split.eval_users), self.path)

    def info(self) -> dict[str, Any]:
        return {"split_file": str(self.path.resolve())}


def _prepare_split(args: argparse.Namespace, default_path: Path) -> _SplitFile:
    """The split file given (or the run folder's) if it exists, else a new one
    to be saved there."""
    path = args.split or default_path
    data = _load_data(args)
    if path.exists():
        split = Split.load(path)
        split.check_matches(data, f"the split file {path}")
        _check_split_options(args, split, path)
        log.info("split: loaded %s", path)
        return _SplitFile(split, path)
    return _SplitFile(_new_split(args, data), path, new=True)


def _check_split_options(args: argparse.Namespace, split: Split, path: Path) -> None:
    """--split-seed and --eval-candidates make new splits: with an existing one they must agree with it."""
    made_with = {"split-seed": split.seed, "eval-candidates": split.valid_candidates.shape[1]}
    asked = {"split-seed": args.split_seed, "eval-candidates": args.eval_candidates}
    if any(asked[key] is not None and asked[key] != made_with[key] for key in asked):
        raise ConfigError(f"{path} was made with --split-seed {split.seed} and --eval-candidates "
                          f"{made_with['eval-candidates']}; drop those options or use another --split")


def _split_of_model(args: argparse.Namespace, checkpoint: Path, info: dict[str, Any]) -> _SplitFile:
    """The split a saved model was trained on: ``--split`` if given (which must
    be that very split), else the file the model records, else ``split.npz``
    beside it. Never a new one: a split rebuilt elsewhere would turn the
    model's training items into test hits."""
    if args.split is not None:
        path = args.split
    else:
        recorded = [Path(info["split_file"])] if info.get("split_file") else []
        places = list(dict.fromkeys([*recorded, checkpoint.parent / SPLIT_FILE]))
        path = next((p for p in places if p.is_file()), None)
        if path is None:
            raise ConfigError(f"the split {checkpoint} was trained on is not at {' or '.join(map(str, places))}; "
                              "pass it with --split")
    split = Split.load(path)
    split.check_identity(info, str(checkpoint))
    _check_split_options(args, split, path)
    if args.data is not None:
        split.check_matches(_load_data(args), f"the split {path} that {checkpoint} was trained on",
                            f"pass the data {checkpoint} was trained on with --data, or leave --data out")
    log.info("split: %s (the one %s was trained on)", path, checkpoint)
    return _SplitFile(split, path)


def _new_split(args: argparse.Namespace, data: Interactions) -> Split:
    seed = SPLIT_DEFAULTS["seed"] if args.split_seed is None else args.split_seed
    n_candidates = args.eval_candidates or SPLIT_DEFAULTS["n_candidates"]
    return leave_one_out(data, seed=seed, n_candidates=n_candidates)


def _train_csr(split: Split, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.as_tensor(a, device=device) for a in split.train.to_csr())


def _cutoffs_for(args: argparse.Namespace) -> tuple[int, ...]:
    if args.cutoffs:
        return args.cutoffs
    return FULL_PROTOCOL_CUTOFFS if args.protocol == "full" else DEFAULT_CUTOFFS


def _run_outputs() -> set[str]:
    """Every file a run of any method writes into its folder."""
    return {name for spec in METHODS.values() for name in run_outputs(spec.cls.co_trained_names)}


def _train(role: str, split_file: _SplitFile, model_config: dict[str, Any], config: TrainConfig, out: Path, *,
           resume: bool, overwrite: bool, method: MethodFactory | None = None,
           info: dict[str, Any] | None = None, run_config: config_file.RunConfig | None = None,
           trainer_options: dict[str, Any] | None = None) -> tuple[Row, Any]:
    """One training run into ``out`` (``trainer_options``: the Trainer's
    ``callbacks``, ``test``, ``checkpoint``, for a search's trials)."""
    split = split_file.split
    writes = distributed.is_main()  # under torchrun, rank 0 alone writes the run folder
    outputs = _run_outputs()
    teacher = (info or {}).get("teacher")
    if teacher is not None and Path(teacher).resolve() in {(out / name).resolve() for name in outputs}:
        raise ConfigError(f"--out {out} would overwrite the teacher {teacher} with this run's files: "
                          "give the run another folder")
    with run_folder_lock(out) if writes else contextlib.nullcontext():
        # Any of a run's files counts, not only its checkpoint: a finished run whose
        # checkpoint was deleted (it is the largest file) still holds its model.
        held = sorted(name for name in outputs if (out / name).exists())
        if held and not overwrite and not (resume and (out / CHECKPOINT).exists()):
            if resume:
                raise ConfigError(f"{out} holds a run's {', '.join(held)} but no {CHECKPOINT} to resume from; "
                                  "pass --overwrite to start over, or use another --out")
            raise ConfigError(f"{out} already holds a run ({', '.join(held)}); pass --resume to continue it or "
                              "--overwrite to start over")
        distributed.barrier()  # every process has looked before rank 0 clears the folder
        if overwrite and writes:  # a half-overwritten folder must not mix the old run's files with the new one's
            for name in (*outputs, config_file.RUN_CONFIG):
                (out / name).unlink(missing_ok=True)
        if writes:
            split_file.save_if_new()
        seed_everything(config.seed)
        model = build_model({**model_config, "n_users": split.n_users, "n_items": split.n_items},
                            train=_train_csr(split, config.device))
        trainer = Trainer(model, split, config, method=method, out_dir=out,
                          info={"role": role, "data": split.train.name, **split_file.info(), **(info or {})},
                          **(trainer_options or {}))
        name = trainer.method.name
        plain = name == "student"  # no distillation (also a teacher's run)
        log.info("%s: %s dim %d, %s parameters, %s -> %s", role, model.name, model.dim,
                 f"{model.num_parameters():,}", "no distillation" if plain else f"method {name}", out)
        # The run's configuration: at its start unless it resumes a checkpoint (a refused resume must not
        # change it), and at its end (a resume may have changed --epochs or --patience).
        if writes and run_config is not None and not (resume and (out / CHECKPOINT).exists()):
            run_config.write(out)
        result = trainer.fit(resume=resume)
        if writes and run_config is not None:
            run_config.write(out)
        distributed.barrier()  # rank 0 has written the run's files, which the others may read next
    label = f"{role.capitalize()} ({model.name}, dim {model.dim})" if plain else name
    return Row(label, result.test, model.num_parameters(), result.seconds_per_epoch), result


# ------------------------------------------------------------------ commands

def _train_config(args: argparse.Namespace, seed: int | None = None) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       l2=args.l2, optimizer=args.optimizer, data_parallel=args.data_parallel,
                       n_negatives=args.negatives, eval_every=args.eval_every, patience=args.patience,
                       metric=args.metric, patience_metrics=args.patience_metrics, protocol=args.protocol,
                       cutoffs=_cutoffs_for(args),
                       eval_batch_size=args.eval_batch_size, seed=args.seed if seed is None else seed,
                       device=args.device, progress=False if args.no_progress else None)


def _model_config(args: argparse.Namespace, model: str, dim: int) -> dict[str, Any]:
    config = {"model": model, "dim": dim}
    if model == "cdae":
        config["corruption"] = args.corruption
    return config


def cmd_train(args: argparse.Namespace) -> int:
    sizes = _validate_before_work(args)
    dim = args.dim or DEFAULT_DIMS[args.role]
    model = args.model or "bpr"
    out = args.out or Path("runs") / f"{args.role}-{model}-d{dim}"
    config = _train_config(args)
    split_file = _prepare_split(args, out / SPLIT_FILE)
    split = split_file.split
    _check_sizes(args, split, sizes)
    row, result = _train(args.role, split_file, _model_config(args, model, dim), config, out, resume=args.resume,
                         overwrite=args.overwrite, run_config=getattr(args, "run_config", None))
    print(f"{split.train.name}, {args.protocol} protocol, test metrics of the best validation epoch "
          f"({result.best_epoch}):")
    print(format_table([row], config.cutoffs))
    print(f"saved: {out / 'best.pt'}, {out / 'results.json'}")
    return 0


def _method_overrides(args: argparse.Namespace, method: str) -> dict[str, str]:
    """The ``--option`` values for ``method``: ``KEY=VALUE`` applies to every
    method that has KEY, ``METHOD:KEY=VALUE`` to that method only."""
    fields = set(method_options(method).__dataclass_fields__)
    overrides = {}
    for text in args.option:
        target, _, assignment = text.rpartition(":")
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {text!r}: expected KEY=VALUE or METHOD:KEY=VALUE")
        if target and target not in METHODS:
            raise ConfigError(f"--option {text!r}: unknown method {target!r}")
        key = key.strip()
        if target == method or (not target and key in fields):
            overrides[key] = value.strip()
        elif not target and not any(key in method_options(m).__dataclass_fields__ for m in METHODS):
            raise ConfigError(f"--option {text!r}: no method has an option {key!r} (see `rankdistill methods`)")
    return overrides


def _check_options_apply(args: argparse.Namespace, methods: list[str] | tuple[str, ...]) -> None:
    """A ``KEY=VALUE`` option that no method of this command has would be
    dropped silently (``distill --method rrd -o lambda_ucd=0.1`` trained plain
    RRD): refuse it. The teacher-alone row reads BD's ``teacher_dim``."""
    runs = [m for m in methods if m != TEACHER_BASELINE]
    keys = {key for m in runs for key in method_options(m).__dataclass_fields__}
    if TEACHER_BASELINE in methods:
        keys.add("teacher_dim")
    known = {key for m in METHODS for key in method_options(m).__dataclass_fields__}
    for text in args.option:
        target, _, assignment = text.rpartition(":")
        key = assignment.partition("=")[0].strip()
        if not target and key in known - keys:  # keys no method has at all are named as such later
            which = (f"method {methods[0]} has no option {key!r}" if len(methods) == 1 else
                     f"none of the methods run ({', '.join(methods)}) has an option {key!r}")
            raise ConfigError(f"--option {text!r}: {which}, so it would be ignored; to set it for one method "
                              "say METHOD:KEY=VALUE (see `rankdistill methods`)")


# Bytes to train one parameter: float32 weights, gradients and Adam's two moments.
_BYTES_PER_TRAINED_PARAMETER = 16
# Bytes per negative while an epoch's negatives are drawn (trainer, sample_unobserved):
# the int64 draws and the int64 temporaries that look them up among the observed items.
_BYTES_PER_NEGATIVE = 32


def _validate_before_work(args: argparse.Namespace, methods: list[str] | tuple[str, ...] = (),
                          seeds: list[int] | None = None) -> list[tuple[str, int]]:
    """Every option of a command that trains, checked before it ranks, writes
    or trains anything: a mistake in the last run of a comparison must not
    surface after the first runs have trained. ``methods`` and ``seeds``: the
    runs of distill and compare. Returns the model sizes the runs will train
    (option, dim), for ``_check_sizes`` once the data's size is known."""
    for seed in seeds or [args.seed]:
        _train_config(args, seed)  # ranges, device, --metric against the cutoffs
    dim = args.dim or DEFAULT_DIMS[args.role]
    dims = [(f"--dim {dim}", dim)]
    if methods:
        _check_options_apply(args, methods)
        # Every method's options, the runs' first (an error names one of them):
        # a bad -o value is a mistake even where no run of this command reads it.
        for name in dict.fromkeys([*methods, *METHODS]):
            if name == TEACHER_BASELINE:
                continue
            overrides = _method_overrides(args, name)
            try:
                options = method_options(name, overrides)
            except ConfigError as exc:
                raise ConfigError(f"{name}: {exc}") from None
            # BD's fresh teacher, and the teacher trained alone at its size (_teacher_alone_config)
            teacher_dim = getattr(options, "teacher_dim", 0)
            if teacher_dim and (name in methods or (name == "bd" and TEACHER_BASELINE in methods)):
                dims.append((f"-o teacher_dim={teacher_dim}", teacher_dim))
    return dims


def _memory(device: str) -> tuple[int, str] | None:
    """The memory a run on ``device`` has and whose it is; None where unknown."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_properties(torch.device(device)).total_memory, f"{device}'s"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's"
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return None


def _check_sizes(args: argparse.Namespace, split: Split, dims: list[tuple[str, int]]) -> None:
    """Refuse negatives the catalogue cannot give, and models or negatives
    whose memory exceeds the device's (lower bounds: every model holds a user
    and an item table of ``dim`` floats)."""
    n_users, n_items, n_interactions = split.n_users, split.n_items, len(split.train)
    if args.negatives >= n_items:
        raise ConfigError(f"--negatives {args.negatives}: a positive's negatives are drawn from the other "
                          f"{n_items - 1:,} items of the catalogue; use at most that many")
    memory = _memory(args.device)
    if memory is None:
        return
    total, whose = memory
    have = f"more than {whose} {total / 1e9:,.1f} GB of memory"
    for option, dim in dims:
        need = _BYTES_PER_TRAINED_PARAMETER * (n_users + n_items) * dim
        if need > total:
            raise ConfigError(f"{option}: the embeddings of {n_users:,} users and {n_items:,} items alone need "
                              f"{need / 1e9:,.1f} GB to train (float32 weights, gradients and Adam's two moments), "
                              f"{have}")
    need = _BYTES_PER_NEGATIVE * n_interactions * args.negatives
    if need > total:
        raise ConfigError(f"--negatives {args.negatives}: drawing that many for each of {n_interactions:,} "
                          f"positives per epoch needs {need / 1e9:,.1f} GB, {have}")


def _load_teacher(args: argparse.Namespace, sizes: list[tuple[str, int]]):
    """The teacher's split (``--split`` must be that very split), the teacher
    and its rankings; the runs' ``sizes`` are checked before the rankings."""
    info = model_info(args.teacher)
    split_file = _split_of_model(args, args.teacher, info)
    split = split_file.split
    _check_sizes(args, split, sizes)
    for n, what in ((split.n_items, "items"), (split.n_users, "users")):
        if args.top >= n:
            raise ConfigError(f"--top {args.top} is not below the number of {what} ({n:,}): the teacher's lists "
                              f"would hold every one of them, leaving none to rank below; use a smaller --top")
    teacher, _ = load_model(args.teacher, train=_train_csr(split, args.device), device=args.device,
                            shape=(split.n_users, split.n_items))
    rankings = load_or_compute_rankings(args.teacher, teacher, split, args.top,
                                        progress=not args.no_progress and sys.stderr.isatty())
    return split_file, teacher, rankings


def _distill_run(args: argparse.Namespace, method: str, seed: int, out: Path, split_file: _SplitFile, teacher,
                 rankings, run_config: config_file.RunConfig | None = None,
                 trainer_options: dict[str, Any] | None = None) -> tuple[Row, Any]:
    overrides = _method_overrides(args, method)
    options = method_options(method, overrides)
    model = args.model or teacher.name
    info = {"teacher": str(args.teacher), "teacher_sha256": file_sha256(args.teacher),
            "method_options": dataclasses.asdict(options), "top": args.top}
    return _train("student", split_file, _model_config(args, model, args.dim or DEFAULT_DIMS["student"]),
                  _train_config(args, seed), out, resume=args.resume, overwrite=args.overwrite,
                  method=lambda context: build_method(method, context, teacher, rankings, overrides), info=info,
                  run_config=run_config, trainer_options=trainer_options)


def _teacher_alone_config(args: argparse.Namespace, teacher) -> dict[str, Any]:
    """The teacher's model, at ``-o teacher_dim=N`` when given (the size of
    BD's fresh teacher), as a model configuration to train from scratch."""
    dim = method_options("bd", _method_overrides(args, "bd")).teacher_dim or teacher.dim
    return {**{k: v for k, v in teacher.config().items() if k not in ("n_users", "n_items")}, "dim": dim}


def _compare_run(args: argparse.Namespace, method: str, seed: int, out: Path, split_file: _SplitFile, teacher,
                 rankings) -> None:
    if method == TEACHER_BASELINE:
        _train("teacher", split_file, _teacher_alone_config(args, teacher), _train_config(args, seed), out,
               resume=args.resume, overwrite=args.overwrite,
               info={"teacher": str(args.teacher), "teacher_sha256": file_sha256(args.teacher)})
    else:
        _distill_run(args, method, seed, out, split_file, teacher, rankings)


def cmd_distill(args: argparse.Namespace) -> int:
    sizes = _validate_before_work(args, [args.method])
    split_file, teacher, rankings = _load_teacher(args, sizes)
    split = split_file.split
    out = args.out or Path("runs") / f"{args.method}-seed{args.seed}"
    row, result = _distill_run(args, args.method, args.seed, out, split_file, teacher, rankings,
                               getattr(args, "run_config", None))
    print(f"{split.train.name}, {args.protocol} protocol, test metrics of the best validation epoch "
          f"({result.best_epoch}):")
    rows = [row]
    if "teacher_test" in result.extra:  # BD, iBD: the teacher trained too (its own best validation epoch)
        rows.append(Row(f"{args.method} teacher", result.extra["teacher_test"], result.extra["teacher_num_parameters"]))
    print(format_table(rows, _cutoffs_for(args)))
    print(f"saved: {out / 'best.pt'}, {out / 'results.json'}" + (", teacher.pt" if len(rows) > 1 else ""))
    return 0


def _compare_grid(args: argparse.Namespace, split_file: _SplitFile, teacher, rankings, out: Path):
    """compare's runs (``--methods`` x ``--seeds``) in ``out``: trained, resumed, or reused if finished
    the same way (``run_grid``)."""
    split = split_file.split

    def train(method: str, seed: int, folder: Path, resume: bool) -> None:
        _compare_run(argparse.Namespace(**{**vars(args), "resume": resume}), method, seed, folder, split_file,
                     teacher, rankings)

    def expected(method: str, seed: int) -> dict[str, Any]:
        """What a reusable finished run was made with."""
        if method == TEACHER_BASELINE:
            model_config, options, top = _teacher_alone_config(args, teacher), None, None
        else:
            model_config = _model_config(args, args.model or teacher.name, args.dim or DEFAULT_DIMS["student"])
            options = dataclasses.asdict(method_options(method, _method_overrides(args, method)))
            top = args.top
        return {"split_digest": split.digest, "teacher_sha256": file_sha256(args.teacher), "top": top,
                "train_config": dataclasses.asdict(_train_config(args, seed)), "model_config": model_config,
                "method_options": options}

    return run_grid(out, args.methods, args.seeds, train=train, expected=expected, overwrite=args.overwrite)


def _print_report(result: Report) -> None:
    """A comparison's table and tests, then where its files are (and why the figure is not, if so)."""
    print(result.text)
    if result.figure_missing:
        print(result.figure_missing)
    print(f"saved: {', '.join(map(str, result.files))}")


def cmd_compare(args: argparse.Namespace) -> int:
    sizes = _validate_before_work(args, args.methods, args.seeds)
    split_file, teacher, rankings = _load_teacher(args, sizes)
    split = split_file.split
    out = args.out or Path("runs") / "compare"
    result = None
    with run_folder_lock(out) if distributed.is_main() else contextlib.nullcontext():
        runs = _compare_grid(args, split_file, teacher, rankings, out)
        if distributed.is_main():  # the summary is named by the runs asked: another comparison's stays
            result = report(summary_files(out, args.methods, args.seeds), runs,
                            table_metrics(args.protocol, _cutoffs_for(args)))
        if distributed.is_main() and getattr(args, "run_config", None) is not None:
            args.run_config.write(out)  # the whole comparison's configuration, once its runs are done
    print(f"{split.train.name}, {args.protocol} protocol, teacher {args.teacher}, "
          f"seeds {','.join(map(str, args.seeds))}: test metrics"
          + (", mean ± std over seeds" if len(args.seeds) > 1 else ""))
    if result is not None:
        _print_report(result)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """`rankdistill tune COMMAND ...`: rankdistill/tune.py (Optuna, an optional dependency)."""
    from .tune import run
    return run(args)


def cmd_methods(args: argparse.Namespace) -> int:
    for name, spec in METHODS.items():
        options = method_options(name)
        print(f"{name}: {spec.description}")
        print("    " + ", ".join(f"{key}={value}" for key, value in dataclasses.asdict(options).items()))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    check_device(args.device)
    info = model_info(args.checkpoint)
    split = _split_of_model(args, args.checkpoint, info).split
    model, _ = load_model(args.checkpoint, train=_train_csr(split, args.device), device=args.device,
                          shape=(split.n_users, split.n_items))
    cutoffs = _cutoffs_for(args)
    result = Evaluator(split, protocol=args.protocol, cutoffs=cutoffs,
                       batch_size=args.eval_batch_size).evaluate(model, args.part)
    print(f"{split.train.name}, {args.protocol} protocol, {args.part}: {len(result.users)} users")
    print(format_table([Row(f"{model.name} dim {model.dim}", result.means(), model.num_parameters())], cutoffs))
    if args.json and distributed.is_main():
        write_json(args.json, {"checkpoint": str(args.checkpoint), "part": args.part, "protocol": args.protocol,
                               "metrics": result.means(), **split.identity(),
                               "world_size": distributed.world_size(), "backend": distributed.backend()})
    return 0


def _demo_compare_args(args: argparse.Namespace, teacher: Path) -> argparse.Namespace:
    """The demo's distillation as the `rankdistill compare` command it is."""
    argv = ["compare", "--teacher", str(teacher), "--out", str(args.out), "--methods", ",".join(DEMO_METHODS),
            "--seeds", str(args.seed), "--epochs", str(args.epochs), "--device", args.device, "--overwrite",
            *(f"--{key.replace('_', '-')}={value}" for key, value in DEMO_TRAINING.items() if key != "epochs"),
            *(part for option in DEMO_OPTIONS for part in ("-o", option)),
            *(["--no-progress"] if args.no_progress else []), *(["-q"] if args.quiet else [])]
    return build_parser().parse_args(argv)


def cmd_demo(args: argparse.Namespace) -> int:
    """Distillation on the embedded synthetic data: a teacher, then `rankdistill compare` of the plain
    student, RRD and DCD distilled from it (one seed), the papers' table and the curves."""
    teacher_dir = args.out / TEACHER_BASELINE / f"seed{args.seed}"
    compare = _demo_compare_args(args, teacher_dir / BEST_MODEL)
    sizes = _validate_before_work(compare, compare.methods, compare.seeds)
    data = synthetic()
    split = leave_one_out(data, seed=SPLIT_DEFAULTS["seed"], n_candidates=SPLIT_DEFAULTS["n_candidates"])
    print(f"demo data: {data.n_users:,} users, {data.n_items:,} items, {len(data):,} interactions (synthetic, "
          f"planted latent factors); sampled protocol, {SPLIT_DEFAULTS['n_candidates']} candidates per user\n"
          f"runs (seed {args.seed}): a BPR teacher (dim {DEFAULT_DIMS['teacher']}), then BPR students "
          f"(dim {DEFAULT_DIMS['student']}): plain and distilled from the teacher by "
          f"{', '.join(m.upper() for m in DEMO_METHODS if m != 'student')}", flush=True)
    with run_folder_lock(args.out) if distributed.is_main() else contextlib.nullcontext():
        _train("teacher", _SplitFile(split, args.out / SPLIT_FILE, new=True),
               {"model": "bpr", "dim": DEFAULT_DIMS["teacher"]}, _train_config(compare, args.seed), teacher_dir,
               resume=False, overwrite=True)
        split_file, teacher, rankings = _load_teacher(compare, sizes)
        runs = {TEACHER_BASELINE: [load_run(teacher_dir, TEACHER_BASELINE, args.seed)],
                **_compare_grid(compare, split_file, teacher, rankings, args.out)}
        if not distributed.is_main():
            return 0
        metrics = table_metrics("sampled", DEFAULT_CUTOFFS)
        result = report(summary_files(args.out, [TEACHER_BASELINE, *DEMO_METHODS], compare.seeds), runs, metrics)
    print(f"\nsynthetic, sampled protocol, seed {args.seed}: test metrics of each run's best validation epoch; "
          "Impr.: over the plain student")
    print(format_summary(result.table, [], metrics))  # the tests are in the summary files
    print()
    print(_demo_verdict(result, runs))
    print(result.figure_missing or f"figure: {result.figure}")
    print(f"saved: the runs in {args.out}/METHOD/seed{args.seed}; the table and every paired t-test in "
          f"{result.files[2]} (and .json, .csv)")
    return 0


def _demo_verdict(result: Report, runs: dict[str, list[Any]]) -> str:
    """What the table says, in words, with how sure one run can be."""
    table = result.table
    metric = next(iter(table[TEACHER_BASELINE]["mean"]))
    teacher, student = table[TEACHER_BASELINE]["mean"][metric], table["student"]["mean"][metric]
    params = {method: method_runs[0].results["num_parameters"] for method, method_runs in runs.items()}
    lines = [f"the student has {params['student'] / params[TEACHER_BASELINE]:.0%} of the teacher's parameters; "
             f"{metric}: teacher {teacher:.4f}, student {student:.4f} ({student / teacher:.0%} of the teacher's)"]
    tests = {(test["a"], test["b"]): test for test in result.tests}
    for method in DEMO_METHODS:
        if method == "student":
            continue
        value, test = table[method]["mean"][metric], tests[("student", method)]
        closed = (value - student) / (teacher - student) if teacher != student else float("nan")
        if test["p"] is None:
            verdict = "every user's difference is the same: no spread to test"
        else:
            sure = ("within this run's noise: not a difference this run can show" if test["p"] >= 0.05 else
                    "a real gain in this run" if value > student else "a real loss in this run")
            verdict = f"p = {test['p']:.2g}, {sure}"
        lines.append(f"{method}: {metric} {100 * (value / student - 1):+.1f}% over the student, {closed:.0%} of "
                     f"the gap to the teacher closed; paired t-test over the {test['n_users']:,} test users: "
                     f"{verdict}")
    lines.append(textwrap.fill(f"({DEMO_SEEDS_NOTE})", width=110))
    return "\n".join(lines)


def _configure_logging(quiet: bool) -> None:
    if not any(isinstance(h, _TqdmHandler) for h in log.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or exc}: {exc.filename}"
    return str(exc)


# The commands whose run folders get the run's configuration (config_file.RUN_CONFIG).
_RECORDED_COMMANDS = ("train", *DEFAULT_DIMS, "distill", "compare")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if not argv:  # a bare `rankdistill`: what it can do
        parser.print_help(sys.stderr)
        print("rankdistill: error: a command is required (see above)", file=sys.stderr)
        return 2
    try:  # --config FILE: its values become the command's defaults, which the command line overrides
        command = config_file.apply_config_file(parser, argv)
    except (RankdistillError, OSError) as exc:
        print(f"rankdistill: error: {_describe(exc)}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if command is not None and args.command in _RECORDED_COMMANDS:  # written to the run folder's config.toml
        args.run_config = config_file.RunConfig.of(command[1], args.command, args)
    try:
        # Under torchrun: join the process group; rank 0 alone logs, shows progress and prints.
        joined = distributed.init_from_environment(getattr(args, "device", "cpu"))
    except (RuntimeError, ValueError) as exc:
        print(f"rankdistill: error: cannot join the torchrun process group: {exc}", file=sys.stderr)
        return 2
    code = _run(args)
    if joined:
        # Leave without tearing the process group down: destroying gloo's and
        # the store's threads (at interpreter exit, or by destroy_process_group)
        # aborted a process now and then (SIGABRT, "terminate called without an
        # active exception"), turning a finished run into a failed one.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


# Seconds a process other than rank 0 waits before saying its error (see _run).
_OTHER_PROCESS_PAUSE = 10.0


def _run(args: argparse.Namespace) -> int:
    """The command, its mistakes said once (by rank 0 under torchrun)."""
    main_process = distributed.is_main()
    if not main_process:
        args.no_progress, args.quiet = True, True
    _configure_logging(args.quiet)
    if not main_process:
        log.setLevel(logging.CRITICAL + 1)
    # The long steps' progress bars (DCD's corrections, evaluation, ...) follow --no-progress.
    with contextlib.redirect_stdout(sys.stdout if main_process else io.StringIO()), \
            progress.show_progress(False if args.no_progress else None):
        try:
            return args.func(args)
        except (RankdistillError, OSError) as exc:
            if not main_process:
                # Most mistakes meet every process: rank 0 says it, and torchrun
                # stops this process meanwhile. One only this process met is said
                # here, after the pause, and its exit stops the others.
                time.sleep(_OTHER_PROCESS_PAUSE)
                print(f"rankdistill: error (process {distributed.rank()}): {_describe(exc)}", file=sys.stderr)
            else:
                print(f"rankdistill: error: {_describe(exc)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            if main_process:
                print("rankdistill: interrupted", file=sys.stderr)
            return 130
