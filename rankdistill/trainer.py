"""One training loop for teachers, plain students and every distillation method.

Each epoch: the method's ``refresh`` (every ``method.refresh_every`` epochs), a
shuffled pass over the training interactions with freshly sampled negatives,
mini-batch Adam on ``model.loss + sum(method.extra_loss)``, a validation every
``eval_every`` epochs with early stopping on ``metric`` (H@5) after ``patience``
evaluations without improvement, and an atomic checkpoint. At the end the best
validation epoch's model is tested, saved (``best.pt``) and summarised
(``results.json``, per-user test values in ``test_per_user.npz``).

A checkpoint holds everything the rest of the run depends on (model, optimizer,
method state, every RNG state, history, best-so-far), so ``fit(resume=True)``
ends with exactly the result of an uninterrupted run on CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import ConfigError, DataError, TrainingDiverged
from .evaluation import DEFAULT_CUTOFFS, PROTOCOLS, EvalResult, Evaluator, metric_names
from .io import torch_load, torch_save, write_json
from .models import Recommender, save_model
from .unobserved import ObservedItems, sample_unobserved
from .split import Split

__all__ = ["Batch", "Method", "RUN_OUTPUTS", "TrainConfig", "TrainResult", "Trainer", "check_device",
           "seed_everything"]

log = logging.getLogger("rankdistill")

CHECKPOINT = "checkpoint.pt"
BEST_MODEL = "best.pt"
RESULTS = "results.json"
TEST_PER_USER = "test_per_user.npz"
# What a run writes into its folder (a method may add its own: Method.output_files).
RUN_OUTPUTS = (CHECKPOINT, BEST_MODEL, RESULTS, TEST_PER_USER)
_CHECKPOINT_KIND = "rankdistill-trainer"
_CHECKPOINT_KEYS = ("config", "state_dict", "info", "train_config", "split", "method_name", "method", "optimizer",
                    "rng", "epoch", "history", "best", "bad_evals", "stopped_early")

# Training options a resumed run may change (recorded in results.json under
# "resumes"); every other option, and everything in the run's info (method
# options, teacher digest, --top, the split's identity), must stay the same.
RESUME_MAY_CHANGE = ("epochs", "patience")
# ... and what does not change a result at all: where and how it is shown.
_RESUME_IRRELEVANT = ("device", "progress", "eval_batch_size")
# Entries of the run's info that say where things are, not what they are
# (the teacher's and the split's content are compared through their digests).
_INFO_LOCATIONS = ("teacher", "data", "split_file")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (model init uses torch's)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_device(device: str) -> None:
    """A ``ConfigError`` unless ``device`` is ``cpu`` or a CUDA device of this
    machine (``cuda``, ``cuda:N``): the ops have kernels for these two only."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            devices = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise ConfigError(f"device {device!r}: this machine has {count} CUDA device(s), {devices}")


# Seeds that every generator a run seeds accepts (NumPy's global one stops at 2**32 - 1).
SEEDS = range(2**32)


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    n_negatives: int = 1  # sampled unobserved items per positive per epoch
    eval_every: int = 1
    patience: int = 10  # evaluations without improvement before stopping
    metric: str = "H@5"
    protocol: str = "sampled"
    cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS
    eval_batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    progress: bool | None = None  # None: progress bars only when stderr is a terminal

    def __post_init__(self) -> None:
        self.cutoffs = tuple(int(n) for n in self.cutoffs)
        positive = ("epochs", "batch_size", "n_negatives", "eval_every", "patience", "eval_batch_size")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(f"weight-decay must be a finite number >= 0, got {self.weight_decay}")
        if self.seed not in SEEDS:
            raise ConfigError(f"seed must be an integer from 0 to {SEEDS[-1]}, got {self.seed}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if self.metric not in metric_names(self.cutoffs):
            raise ConfigError(f"selection metric {self.metric!r} is not one of {', '.join(metric_names(self.cutoffs))}")
        check_device(self.device)


@dataclass
class Batch:
    """One mini-batch: positives ``users[b], pos_items[b]`` and negatives
    ``neg_items[b, :]`` (all on the trainer's device)."""

    users: torch.Tensor
    pos_items: torch.Tensor
    neg_items: torch.Tensor


class Method:
    """What a distillation method adds to the loop; every hook is a no-op here,
    so ``Method()`` itself trains the plain model (teacher or student).

    ``refresh`` runs before the epochs ``0, refresh_every, 2 * refresh_every,
    ...``; ``extra_loss`` returns already weighted terms (``lambda_x * L_x``)
    by name, each added to the model's loss and logged; ``epoch_log`` returns
    numbers (diagnostics) to record in the epoch's history entry;
    ``parameters`` are trained by the same optimizer; ``state_dict`` must
    capture whatever the later epochs depend on, for an exact resume.
    ``on_validate`` runs after each validation of the model (it may add
    entries to the epoch's record; see ``co_trained_bad_evals`` for early
    stopping with a second model); ``on_train_end`` runs once the best
    model is tested and returns entries for ``results.json`` (a method that
    trains a second model, BD, tests and saves it there).
    Randomness should come from ``trainer.generator`` (checkpointed).
    """

    name = "student"
    refresh_every = 1
    # Files the method writes into the run folder (besides RUN_OUTPUTS).
    output_files: tuple[str, ...] = ()

    def on_train_start(self, trainer: "Trainer") -> None:
        pass

    def refresh(self, trainer: "Trainer", epoch: int) -> None:
        pass

    def extra_loss(self, trainer: "Trainer", batch: Batch) -> dict[str, torch.Tensor]:
        return {}

    def epoch_log(self) -> dict[str, float]:
        return {}

    def on_validate(self, trainer: "Trainer", epoch: int, record: dict[str, Any]) -> None:
        pass

    def co_trained_bad_evals(self) -> int | None:
        """For a method that trains a second model (BD): validations since that
        model last improved. The run stops early only once both models have
        gone ``patience`` validations without improving, so that neither is cut
        short by the other's plateau. ``None``: no second model."""
        return None

    def on_train_end(self, trainer: "Trainer") -> dict[str, Any]:
        return {}

    def parameters(self) -> Iterable[torch.nn.Parameter]:
        return ()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class TrainResult:
    best_epoch: int  # 0-based
    valid: dict[str, float]  # validation metrics of the best epoch
    test: dict[str, float]  # test metrics of the best epoch's model
    test_result: EvalResult = field(repr=False)
    history: list[dict[str, Any]] = field(repr=False)
    stopped_early: bool
    seconds_per_epoch: float  # training pass only, median over the epochs run (robust to a busy machine)
    refresh_seconds_per_epoch: float  # the method's refreshes, averaged over all epochs
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # the method's on_train_end entries


class Trainer:
    """Trains ``model`` on ``split.train``; writes into ``out_dir`` when given."""

    def __init__(self, model: Recommender, split: Split, config: TrainConfig | None = None, *,
                 method: Method | None = None, out_dir: str | Path | None = None,
                 info: dict[str, Any] | None = None) -> None:
        self.config = config or TrainConfig()
        self.device = torch.device(self.config.device)
        self.model = model.to(self.device)
        self.split = split
        self.method = method or Method()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        # extra facts recorded in the checkpoint, results.json and best.pt
        self.info = {**(info or {}), **split.identity()}
        self.evaluator = Evaluator(split, protocol=self.config.protocol, cutoffs=self.config.cutoffs,
                                   batch_size=self.config.eval_batch_size)
        self.train_users = torch.as_tensor(split.train.users, device=self.device)
        self.train_items = torch.as_tensor(split.train.items, device=self.device)
        self.observed = ObservedItems(self.train_users, self.train_items, split.n_users, split.n_items, self.device)
        # The loop's own randomness (shuffling, negatives) lives on the device.
        self.generator = torch.Generator(self.device).manual_seed(self.config.seed)
        self.optimizer: torch.optim.Optimizer | None = None
        self.epoch = 0  # the next epoch to run
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None  # {"epoch", "valid", "state"}
        self.bad_evals = 0
        self.stopped_early = False
        self.resumes: list[dict[str, Any]] = []  # options changed at each resume

    @property
    def show_progress(self) -> bool:
        return sys.stderr.isatty() if self.config.progress is None else self.config.progress

    # ---------------------------------------------------------------- the loop

    def fit(self, *, resume: bool = False) -> TrainResult:
        self.method.on_train_start(self)
        params = list(self.model.parameters()) + list(self.method.parameters())
        self.optimizer = _adam(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        if resume and self.checkpoint_path is not None and self.checkpoint_path.exists():
            self._load_checkpoint(self.checkpoint_path)
            log.info("resumed from %s after epoch %d", self.checkpoint_path, self.epoch)
        elif resume:
            log.info("nothing to resume in %s: starting a new run", self.out_dir)
        while self.epoch < self.config.epochs and not self.stopped_early:
            self._run_epoch(self.epoch)
            self.epoch += 1
            if self.checkpoint_path is not None:
                self._save_checkpoint(self.checkpoint_path)
        if self.best is None:
            raise ConfigError("no validation has run yet; train for more epochs")
        return self._finish()

    def _run_epoch(self, epoch: int) -> None:
        config = self.config
        refresh_seconds = None
        if epoch % self.method.refresh_every == 0:
            start = time.perf_counter()
            self.method.refresh(self, epoch)
            refresh_seconds = time.perf_counter() - start
        self.model.train()
        start = time.perf_counter()
        order = torch.randperm(len(self.train_users), generator=self.generator, device=self.device)
        users, pos_items = self.train_users[order], self.train_items[order]
        neg_items = sample_unobserved(self.observed, users, config.n_negatives, generator=self.generator)
        n_batches = math.ceil(len(users) / config.batch_size)
        totals: dict[str, torch.Tensor] = {}
        show_progress = self.show_progress
        # Reading a value synchronises a GPU: there the loss is checked every
        # 20 batches (a non-finite one stays in the running totals until then).
        check_every = 1 if self.device.type == "cpu" else 20
        bar = tqdm(range(n_batches), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, unit="batch",
                   disable=not show_progress, dynamic_ncols=True)
        for b in bar:
            rows = slice(b * config.batch_size, (b + 1) * config.batch_size)
            batch = Batch(users[rows], pos_items[rows], neg_items[rows])
            base = self.model.loss(batch.users, batch.pos_items, batch.neg_items)
            extra = self.method.extra_loss(self, batch)
            if "loss" in extra:
                raise ValueError(f"method {self.method.name!r}: 'loss' is the model's own term, name yours otherwise")
            terms = {"loss": base, **extra}
            total = sum(terms.values())
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value.detach()
            if b % check_every == 0 or b == n_batches - 1:
                self._check_finite(epoch, totals, check_parameters=b == n_batches - 1)
            if show_progress and b % 20 == 0:
                bar.set_postfix(loss=f"{float(totals['loss']) / (b + 1):.4f}", **self._last_valid_postfix())
        bar.close()
        record: dict[str, Any] = {"epoch": epoch, "seconds": time.perf_counter() - start}
        if refresh_seconds is not None:
            record["refresh_seconds"] = refresh_seconds
        record.update({name: float(value) / n_batches for name, value in totals.items()})
        record.update(self.method.epoch_log())
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            self._validate(epoch, record)
        self.history.append(record)
        self._log_epoch(record)

    def _check_finite(self, epoch: int, totals: dict[str, torch.Tensor], *, check_parameters: bool) -> None:
        """Stop the run at a non-finite loss term (or, at the end of an epoch,
        parameter), before anything of this epoch is saved: the checkpoint
        keeps the last good epoch, and no NaN model is ever evaluated."""
        terms = [name for name, value in totals.items() if not bool(torch.isfinite(value))]
        params = []
        if check_parameters or terms:
            named = [*self.model.named_parameters(), *(
                (f"{self.method.name}.{i}", p) for i, p in enumerate(self.method.parameters()))]
            params = [name for name, p in named if not bool(torch.isfinite(p).all())]
        if not terms and not params:
            return
        what = []
        if terms:
            what.append(f"the loss term{'s' if len(terms) > 1 else ''} {', '.join(terms)} became "
                        f"{'/'.join(sorted({str(float(totals[t])) for t in terms}))}")
        if params:
            what.append(f"parameter{'s' if len(params) > 1 else ''} {', '.join(params[:4])}"
                        f"{' ...' if len(params) > 4 else ''} became non-finite")
        config = self.config
        if terms and "loss" not in terms:
            cause = (f"the method's loss weights, temperatures or other -o options of {self.method.name} "
                     f"({', '.join(terms)})")
        else:
            cause = f"too large a learning rate (--lr {config.lr:g}) or weight decay (--weight-decay {config.weight_decay:g})"
        path = self.checkpoint_path
        kept = (f"the last good checkpoint (after epoch {epoch}) is kept in {path}" if epoch > 0 and path is not None
                and path.exists() else "nothing was saved")
        raise TrainingDiverged(f"training diverged in epoch {epoch + 1}: {' and '.join(what)}; likely cause: {cause}; "
                               f"{kept}")

    def _validate(self, epoch: int, record: dict[str, Any]) -> None:
        valid = self.evaluator.evaluate(self.model, "valid").means()
        record["valid"] = valid
        if self.best is None or valid[self.config.metric] > self.best["valid"][self.config.metric]:
            self.best = {"epoch": epoch, "valid": valid, "state": copy.deepcopy(self.model.state_dict())}
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        self.method.on_validate(self, epoch, record)
        others = self.method.co_trained_bad_evals()
        self.stopped_early = (self.bad_evals >= self.config.patience
                              and (others is None or others >= self.config.patience))

    def _last_valid_postfix(self) -> dict[str, str]:
        metric = self.config.metric
        for record in reversed(self.history):
            if "valid" in record:
                return {f"val {metric}": f"{record['valid'][metric]:.4f}"}
        return {}

    def _log_epoch(self, record: dict[str, Any]) -> None:
        terms = " ".join(f"{k}={v:.4g}" for k, v in record.items()
                         if k not in ("epoch", "valid") and not k.endswith("seconds") and isinstance(v, (int, float)))
        seconds = f"{record['seconds']:.2f}s"
        if record.get("refresh_seconds", 0.0) >= 0.005:  # the method's work before the epoch (ranks, samples)
            seconds += f" + refresh {record['refresh_seconds']:.2f}s"
        line = f"epoch {record['epoch'] + 1}/{self.config.epochs} {terms} ({seconds})"
        if "valid" in record:
            line += " | valid " + " ".join(f"{k}={record['valid'][k]:.4f}" for k in metric_names(self.config.cutoffs)[:4])
        if self.stopped_early:
            line += f" | early stop (best epoch {self.best['epoch'] + 1})"
        log.info(line)

    def _finish(self) -> TrainResult:
        self.model.load_state_dict(self.best["state"])
        test_result = self.evaluator.evaluate(self.model, "test")
        seconds = [r["seconds"] for r in self.history]
        result = TrainResult(
            best_epoch=self.best["epoch"],
            valid=self.best["valid"],
            test=test_result.means(),
            test_result=test_result,
            history=self.history,
            stopped_early=self.stopped_early,
            seconds_per_epoch=float(np.median(seconds)) if seconds else float("nan"),
            # a method's diagnostics are measurement, not method: not counted
            refresh_seconds_per_epoch=float(np.mean([r.get("refresh_seconds", 0.0) - r.get("diagnostic_seconds", 0.0)
                                                     for r in self.history])) if self.history else float("nan"),
            extra=dict(self.method.on_train_end(self) or {}),
        )
        if self.out_dir is not None:
            self._write_outputs(result)
        return result

    # ------------------------------------------------------------ persistence

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / CHECKPOINT if self.out_dir is not None else None

    def _rng_states(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        states = {
            "generator": self.generator.get_state(),
            "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            states["cuda"] = torch.cuda.get_rng_state_all()
        return states

    def _set_rng_states(self, states: dict[str, Any]) -> None:
        self.generator.set_state(states["generator"])
        torch.set_rng_state(states["torch"])
        name, keys, *rest = states["numpy"]
        np.random.set_state((name, keys.numpy(), *rest))
        random.setstate(_as_tuples(states["python"]))
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])

    def _save_checkpoint(self, path: Path) -> None:
        torch_save(path, {
            "kind": _CHECKPOINT_KIND,
            "config": self.model.config(),  # read by models.load_model
            "state_dict": self.model.state_dict(),
            "info": self.info,
            "train_config": dataclasses.asdict(self.config),
            "split": self.split.identity(),
            "method_name": self.method.name,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self._rng_states(),
            "epoch": self.epoch,
            "history": self.history,
            "best": self.best,
            "bad_evals": self.bad_evals,
            "stopped_early": self.stopped_early,
            "resumes": self.resumes,
        })

    def _load_checkpoint(self, path: Path) -> None:
        state = torch_load(path, "training checkpoint", map_location=self.device)
        if state.get("kind") != _CHECKPOINT_KIND:
            raise DataError(f"{path}: not a rankdistill training checkpoint")
        missing = [key for key in _CHECKPOINT_KEYS if key not in state]
        if missing:
            raise DataError(f"{path}: incomplete training checkpoint (no {', '.join(missing)})")
        self._check_same_run(path, state)
        try:
            self.model.load_state_dict(state["state_dict"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.method.load_state_dict(state["method"])
            self._set_rng_states(state["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # shapes or keys that do not fit
            raise DataError(f"{path}: its state does not fit this run ({type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0]})") from None
        self.epoch = state["epoch"]
        self.history = state["history"]
        self.best = state["best"]
        self.bad_evals = state["bad_evals"]
        self.stopped_early = state["stopped_early"]
        saved_config = state["train_config"]
        changed = {key: [saved_config.get(key), getattr(self.config, key)] for key in RESUME_MAY_CHANGE
                   if saved_config.get(key) != getattr(self.config, key)}
        self.resumes = [*state.get("resumes", []), {"after_epoch": self.epoch, "changed": changed}]
        if changed:
            log.info("resuming with %s", ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items()))
        # A run that stopped early may go on if the patience grew.
        if "patience" in changed:
            others = self.method.co_trained_bad_evals()
            self.stopped_early = (self.bad_evals >= self.config.patience
                                  and (others is None or others >= self.config.patience))

    def _check_same_run(self, path: Path, state: dict[str, Any]) -> None:
        """A ``ConfigError`` listing every difference between the checkpoint's
        run and this one, except the options a resume may change."""
        saved_info = state["info"] if isinstance(state["info"], dict) else {}
        expected = {"model": self.model.config(), "split": self.split.identity(), "method": self.method.name}
        found = {"model": state["config"], "split": state["split"], "method": state["method_name"]}
        for key, value in dataclasses.asdict(self.config).items():
            if key not in RESUME_MAY_CHANGE and key not in _RESUME_IRRELEVANT:
                expected[key], found[key] = _plain(value), _plain(state["train_config"].get(key))
        for key in sorted(set(self.info) | set(saved_info)):
            if key not in _INFO_LOCATIONS and key not in expected:
                expected[key], found[key] = _plain(self.info.get(key)), _plain(saved_info.get(key))
        changed = [key for key in expected if expected[key] != found[key]]
        if changed:
            details = "; ".join(f"{key}: checkpoint {found[key]!r}, now {expected[key]!r}" for key in changed)
            raise ConfigError(f"{path} belongs to a different run ({details}); only "
                              f"{' and '.join('--' + k for k in RESUME_MAY_CHANGE)} may change on --resume: "
                              "use another --out or drop --resume")

    def _write_outputs(self, result: TrainResult) -> None:
        summary = {
            **self.info,
            "model_config": self.model.config(),
            "num_parameters": self.model.num_parameters(),
            "method": self.method.name,
            "train_config": dataclasses.asdict(self.config),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "seconds_per_epoch": result.seconds_per_epoch,
            "refresh_seconds_per_epoch": result.refresh_seconds_per_epoch,
            "valid": result.valid,
            "test": result.test,
            "history": result.history,
            "resumes": self.resumes,
            **result.extra,
        }
        save_model(self.out_dir / BEST_MODEL, self.model,
                   **{k: v for k, v in summary.items() if k not in ("model_config", "history")})
        result.test_result.save_per_user(self.out_dir / TEST_PER_USER)
        write_json(self.out_dir / RESULTS, summary)


def _plain(value: Any) -> Any:
    # Lists and tuples compare equal after a round trip through a checkpoint.
    return list(value) if isinstance(value, (list, tuple)) else value


def _as_tuples(value: Any) -> Any:
    # random.setstate needs tuples where the checkpoint may have lists.
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _adam(params: list[torch.nn.Parameter], **options: float) -> torch.optim.Adam:
    """Adam, fused where PyTorch has a fused kernel for every parameter.

    The same update as the default implementation (up to float rounding), but
    one pass over memory instead of several: on the CPU the step of a 10 M
    parameter embedding table falls from about 120 ms to 11 ms, which is most
    of an epoch for the large-catalogue teachers.
    """
    fusable = all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, fused=fusable or None, **options)
