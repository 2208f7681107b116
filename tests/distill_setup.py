"""What the distillation tests share: a small synthetic split, models on it,
a briefly trained teacher and quick training settings."""

import pytest
import torch

from rankdistill.data import synthetic
from rankdistill.methods import DistillContext
from rankdistill.models import build_model
from rankdistill.split import leave_one_out
from rankdistill.trainer import TrainConfig, Trainer, seed_everything

TOP = 30  # the teacher's list length in the distillation tests


def small_split(n_users, n_items, *, mean_interactions=15, seed=1):
    data = synthetic(n_users, n_items, n_factors=6, mean_interactions=mean_interactions, min_interactions=5, seed=seed)
    return leave_one_out(data, seed=0, n_candidates=40)


def run(capsys, *argv):
    """``rankdistill ARGV`` in this process: (exit code, stdout, stderr)."""
    from rankdistill.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_users_dat(data, path):
    """``data`` (Interactions) as a users.dat file at ``path``; returns the path."""
    lines = [[] for _ in range(data.n_users)]
    for u, i in zip(data.users.tolist(), data.items.tolist()):
        lines[u].append(i)
    path.write_text("".join(f"{len(items)} {' '.join(map(str, items))}\n" for items in lines))
    return path


def csr_of(split):
    return tuple(torch.as_tensor(a) for a in split.train.to_csr())


def new_model(split, dim, seed=0, name="bpr"):
    seed_everything(seed)
    return build_model({"model": name, "n_users": split.n_users, "n_items": split.n_items, "dim": dim},
                       train=csr_of(split))


def trained_teacher(split, epochs=8):
    model = new_model(split, 16, seed=5)
    Trainer(model, split, TrainConfig(epochs=epochs, batch_size=128, lr=2e-2, patience=100, progress=False)).fit()
    return model.eval()


def distill_context(split, student=None, *, seed=0, epochs=4):
    """What a trainer with ``config(seed=seed, epochs=epochs)`` builds its
    method in: the student (default: ``new_model(split, 4)``), the training
    interactions, and a CPU generator seeded with ``seed``."""
    return DistillContext(student if student is not None else new_model(split, 4), split, seed=seed, epochs=epochs)


def batches_per_epoch(split, batch_size=256):
    """The trainer's batches per epoch (``config()``'s batch size)."""
    return -(-len(split.train.users) // batch_size)


def config(**overrides):
    return TrainConfig(**{"epochs": 4, "batch_size": 256, "lr": 1e-2, "patience": 100, "progress": False,
                          **overrides})


def strip(history):
    """An epoch history without its timings (which differ between runs)."""
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in history]


class Crash(Exception):
    """A run killed at the start of an epoch."""


def interrupted_and_resumed(split, make_method, tmp_path, *, epochs, crash_at, resume_method=None, resume_seed=7):
    """``(whole, resumed)``: a run without interruption, and the same run killed
    at the start of epoch ``crash_at`` and resumed from its checkpoint with a
    freshly initialised student (seed ``resume_seed``) and method (made by
    ``resume_method``, by default ``make_method``): the checkpoint must win.
    ``make_method`` and ``resume_method`` are the trainer's method factories
    (``context -> method``)."""
    whole = Trainer(new_model(split, 4), split, config(epochs=epochs), method=make_method,
                    out_dir=tmp_path / "whole").fit()

    def crashing(context):
        method = make_method(context)
        original = method.refresh

        def refresh(epoch, **kwargs):
            if epoch == crash_at:
                raise Crash
            original(epoch, **kwargs)
        method.refresh = refresh
        return method
    with pytest.raises(Crash):
        Trainer(new_model(split, 4), split, config(epochs=epochs), method=crashing, out_dir=tmp_path / "cut").fit()
    resumed = Trainer(new_model(split, 4, seed=resume_seed), split, config(epochs=epochs),
                      method=resume_method or make_method, out_dir=tmp_path / "cut").fit(resume=True)
    return whole, resumed
