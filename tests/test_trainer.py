"""The training loop: the method's calls, early stopping (with a co-trained
model), outputs, exact resume, and an end-to-end run on real data."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from rankdistill.data import Interactions, kcore, load_users_dat, synthetic
from rankdistill.errors import ConfigError
from rankdistill.evaluation import Evaluator
from rankdistill.models import Recommender, build_model, load_model
from rankdistill.split import leave_one_out
from rankdistill.methods.base import Distillation
from rankdistill.trainer import BestTracker, TrainConfig, Trainer, _adam, seed_everything

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def split():
    data = synthetic(150, 300, n_factors=6, mean_interactions=15, min_interactions=5, seed=0)
    return leave_one_out(data, seed=0, n_candidates=50)


def new_model(split, name="bpr", dim=8, seed=0):
    seed_everything(seed)
    csr = tuple(torch.as_tensor(a) for a in split.train.to_csr())
    return build_model({"model": name, "n_users": split.n_users, "n_items": split.n_items, "dim": dim}, train=csr)


def config(**overrides):
    return TrainConfig(**{"epochs": 6, "batch_size": 256, "lr": 1e-2, "patience": 100, "progress": False,
                          **overrides})


class Crash(Exception):
    pass


class CrashAt(Distillation):
    """The plain model's method, interrupting training at the start of one
    epoch, like a killed process."""

    def __init__(self, context, epoch):
        super().__init__(context)
        self.epoch = epoch

    def refresh(self, epoch, *, batches=None):
        if epoch == self.epoch:
            raise Crash
        super().refresh(epoch, batches=batches)


def test_each_step_keys_the_models_noise_and_data_parallel_is_not_refused(split, monkeypatch):
    model = new_model(split, "cdae")
    keys = []
    loss = type(model).loss
    monkeypatch.setattr(type(model), "loss", lambda self, *batch: keys.append(self.noise_key) or loss(self, *batch))
    trainer = Trainer(model, split, config(epochs=2, seed=7, data_parallel=True))
    assert trainer.replicated_because is None  # CDAE's corruption splits with the batch
    trainer.fit()
    steps = math.ceil(len(split.train.users) / 256)
    assert keys == [(7, 0, step) for step in range(2 * steps)]  # the run's seed, the model, the step
    assert model.noise_key is None  # outside training steps: drawn from torch's generator again


def test_a_model_that_draws_in_its_loss_trains_replicated(split):
    model = new_model(split)
    model.draws_in_loss = True  # a model of one's own that draws from torch's generator in its loss
    trainer = Trainer(model, split, config(data_parallel=True))
    assert trainer.replicated_because == "the bpr model draws at random in its loss"


@pytest.mark.parametrize("name, optimizer", [("bpr", "adam"), ("cdae", "adam"),  # cdae: noise keyed by the step
                                             ("bpr", "lazy-adam")])
def test_resume_gives_exactly_the_uninterrupted_result(split, tmp_path, name, optimizer):
    whole = Trainer(new_model(split, name), split, config(optimizer=optimizer), out_dir=tmp_path / "whole").fit()

    with pytest.raises(Crash):
        Trainer(new_model(split, name), split, config(optimizer=optimizer),
                method=lambda context: CrashAt(context, 3), out_dir=tmp_path / "cut").fit()
    torch.manual_seed(12345)  # the resumed process starts with other global RNG states
    np.random.seed(12345)
    model = new_model(split, name, seed=99)  # and another initialisation: the checkpoint must win
    resumed_trainer = Trainer(model, split, config(optimizer=optimizer), out_dir=tmp_path / "cut")
    resumed = resumed_trainer.fit(resume=True)

    assert [r["epoch"] for r in resumed.history] == list(range(1, 7))  # counted from 1
    strip = lambda history: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in history]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)
    assert resumed.best_epoch == whole.best_epoch and resumed.test == whole.test
    csr = tuple(torch.as_tensor(a) for a in split.train.to_csr())
    best_whole, _ = load_model(tmp_path / "whole" / "best.pt", train=csr)
    for a, b in zip(best_whole.parameters(), resumed_trainer.model.parameters()):
        assert torch.equal(a, b)


def test_resume_refuses_a_different_run(split, tmp_path):
    Trainer(new_model(split), split, config(epochs=2), out_dir=tmp_path).fit()
    with pytest.raises(ConfigError, match="lr"):
        Trainer(new_model(split), split, config(epochs=4, lr=0.5), out_dir=tmp_path).fit(resume=True)


def test_a_checkpoint_from_before_patience_metrics_resumes(split, tmp_path):
    """A checkpoint written before TrainConfig had patience_metrics (no such
    key, no tracker bests) resumes as a run with the default; a run with
    patience metrics is refused, since it would stop differently."""
    Trainer(new_model(split), split, config(epochs=2), out_dir=tmp_path).fit()
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    del state["train_config"]["patience_metrics"]
    for tracker in state["trackers"].values():
        del tracker["best_values"]
    torch.save(state, path)
    resumed = Trainer(new_model(split), split, config(epochs=3), out_dir=tmp_path).fit(resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    with pytest.raises(ConfigError, match="patience_metrics"):
        Trainer(new_model(split), split, config(epochs=4, patience_metrics=("H@10",)),
                out_dir=tmp_path).fit(resume=True)


class Recorder(Distillation):
    """Adds a weighted penalty with its own trainable parameter and records calls."""

    name = "recorder"

    def __init__(self, context):
        super().__init__(context)
        self.refreshed = []  # (epoch, batches) of each refresh
        self.batches = []  # losses() calls in each epoch
        self.models = set()  # the models losses() was given
        self.scale = torch.nn.Parameter(torch.tensor(1.0))

    def refresh(self, epoch, *, batches=None):
        super().refresh(epoch, batches=batches)
        self.refreshed.append((epoch, batches))
        self.batches.append(0)

    def losses(self, model, batch):
        self.batches[-1] += 1
        self.models.add(id(model))
        penalty = (self.scale - 3.0) ** 2 + 0.0 * model.score(batch.users, batch.pos_items).sum()
        return {"penalty": 0.5 * penalty}

    def parameters(self):
        return [self.scale]


def test_method_is_called_trained_and_logged(split):
    trainer = Trainer(new_model(split), split, config(epochs=5, lr=0.1), method=Recorder)
    method = trainer.method
    assert isinstance(method, Recorder) and method.context.generator is trainer.generator
    result = trainer.fit()
    n_batches = math.ceil(len(split.train.users) / 256)
    # refreshed before every epoch (a method schedules its own work, e.g. DCD's
    # correct_every), told the epoch's batches, then asked once per batch
    assert method.refreshed == [(epoch, n_batches) for epoch in range(5)]
    assert method.batches == [n_batches] * 5
    assert method.models == {id(trainer.model)}  # the student's terms are on the student
    assert abs(method.scale.item() - 3.0) < abs(1.0 - 3.0) / 2  # the optimizer trains method parameters
    penalties = [r["penalty"] for r in result.history]
    assert penalties[0] > penalties[-1] >= 0
    assert all("loss" in r for r in result.history)


def test_optimizer_factory_gets_the_models_then_the_methods_parameters(split):
    given = []

    def sgd(params):
        given.append(list(params))
        return torch.optim.SGD(params, lr=0.1)
    trainer = Trainer(new_model(split), split, config(epochs=1), method=Recorder, optimizer=sgd)
    start = trainer.method.scale.item()
    trainer.fit()
    assert len(given) == 1 and isinstance(trainer.optimizer, torch.optim.SGD)
    assert [id(p) for p in given[0]] == [id(p) for p in [*trainer.model.parameters(), trainer.method.scale]]
    assert trainer.method.scale.item() != start


def test_early_stopping_and_best_epoch_follow_validation(split):
    result = Trainer(new_model(split), split, config(epochs=60, lr=0.05, patience=2)).fit()
    valid = [r["valid"]["H@5"] for r in result.history]
    assert result.best_epoch == int(np.argmax(valid)) + 1  # first epoch with the highest H@5, counted from 1
    assert result.stopped_early and len(valid) < 60
    assert len(valid) - result.best_epoch == 2  # stopped after `patience` evaluations without a gain
    assert result.valid["H@5"] == max(valid)


class Revealing(Recommender):
    """A model whose validation H@5 is the share of the first ``shown`` users
    (of ``split.eval_users``): their validation item scores above every
    candidate, every other user's below."""

    name = "revealing"

    def __init__(self, split):
        super().__init__(split.n_users, split.n_items, dim=1)
        eval_users = torch.as_tensor(split.eval_users)
        valid_item = torch.full((split.n_users,), -1, dtype=torch.int64)
        valid_item[eval_users] = torch.as_tensor(split.valid_items, dtype=torch.int64)
        order = torch.full((split.n_users,), split.n_users, dtype=torch.int64)
        order[eval_users] = torch.arange(len(eval_users))
        self.register_buffer("valid_item", valid_item)
        self.register_buffer("order", order)
        self.register_buffer("shown", torch.tensor(0))
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def score_items(self, users, items):
        target = items == self.valid_item[users][:, None]
        shown = (self.order[users] < self.shown)[:, None]
        return torch.where(target, torch.where(shown, 1.0, -1.0), 0.0) + 0.0 * self.unused

    def _score_all_block(self, users):
        return self.score_items(users, torch.arange(self.n_items, device=users.device).expand(len(users), -1))


class SecondModel(Distillation):
    """A stand-in for BD, whose ``co_trained()`` model (its teacher) the trainer
    validates too: here one that improves at every validation until epoch
    ``until`` and stays the same after it."""

    def __init__(self, context, split, until):
        super().__init__(context)
        self.until = until
        self.second = Revealing(split)

    def refresh(self, epoch, *, batches=None):
        super().refresh(epoch, batches=batches)
        self.second.shown.fill_(min(epoch, self.until - 1) + 1)

    def co_trained(self):
        return {"second": self.second}


def test_early_stopping_waits_for_a_co_trained_model(split):
    alone = Trainer(new_model(split), split, config(epochs=60, lr=0.05, patience=2)).fit()
    stop_alone = len(alone.history)
    until = stop_alone + 3
    trainer = Trainer(new_model(split), split, config(epochs=60, lr=0.05, patience=2),
                      method=lambda context: SecondModel(context, split, until))
    both = trainer.fit()
    # the student's plateau alone no longer stops the run: it goes on until the
    # second model too has had `patience` validations without a gain
    assert both.stopped_early and len(both.history) == until + 2
    assert [(r["loss"], r["valid"]) for r in both.history[:stop_alone]] == \
        [(r["loss"], r["valid"]) for r in alone.history]  # the same run until then
    # the second model is validated, selected and tested on its own
    n_eval = len(split.eval_users)
    assert [r["second_valid"]["H@5"] for r in both.history] == \
        pytest.approx([min(epoch + 1, until) / n_eval for epoch in range(until + 2)])
    assert trainer.trackers["second"].bad_evals == 2 and trainer.trackers["model"].bad_evals >= 2
    assert both.extra["second_best_epoch"] == until
    assert both.extra["second_valid"]["H@5"] == pytest.approx(until / n_eval)
    assert set(both.extra["second_test"]) == set(both.test)


def test_eval_every_and_outputs(split, tmp_path):
    result = Trainer(new_model(split), split, config(epochs=5, eval_every=2), out_dir=tmp_path).fit()
    evaluated = [r["epoch"] for r in result.history if "valid" in r]
    assert evaluated == [2, 4, 5]  # every 2 epochs and the last one
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["test"] == pytest.approx(result.test)
    assert summary["best_epoch"] == result.best_epoch
    model, info = load_model(tmp_path / "best.pt")
    assert info["best_epoch"] == result.best_epoch
    again = Evaluator(split).evaluate(model, "test").means()
    assert again == pytest.approx(result.test)
    per_user = np.load(tmp_path / "test_per_user.npz")
    assert per_user["H_at_5"].mean() == pytest.approx(result.test["H@5"])
    assert np.array_equal(per_user["users"], split.eval_users)


def test_bad_training_options_are_config_errors():
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="selection metric"):
        TrainConfig(metric="H@7")
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=-1)


@pytest.mark.parametrize("option, value, fragment", [
    ("epochs", 2.5, "epochs must be an integer, got 2.5"),  # was run as 3 epochs
    ("epochs", "3", "epochs must be an integer, got '3'"),
    ("batch_size", 1.5, "batch-size must be an integer"),
    ("patience", 2.7, "patience must be an integer"),
    ("n_negatives", 1.9, "n-negatives must be an integer"),
    ("seed", True, "seed must be an integer, got True"),
    ("seed", 1.0, "seed must be an integer"),
    ("lr", "0.1", "lr must be a number, got '0.1'"),
    ("weight_decay", None, "weight-decay must be a number, got None"),
    ("data_parallel", "yes", "data-parallel must be True or False, got 'yes'"),
    ("progress", "no", "progress must be True or False or None, got 'no'"),
])
def test_training_options_of_the_wrong_type_are_config_errors(option, value, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        TrainConfig(**{option: value})


def test_training_options_of_numeric_types_are_kept_as_plain_numbers():
    config = TrainConfig(epochs=np.int64(3), lr=1, weight_decay=np.float32(0.5), seed=np.int32(4))
    assert (config.epochs, config.lr, config.weight_decay, config.seed) == (3, 1.0, 0.5, 4)
    assert type(config.epochs) is int and type(config.lr) is float and type(config.seed) is int


class Popularity(Recommender):
    """Scores an item by its number of training interactions (same for every user)."""

    name = "popularity"

    def __init__(self, train: Interactions):
        super().__init__(train.n_users, train.n_items, dim=1)
        self.counts = torch.nn.Parameter(torch.as_tensor(train.item_counts(), dtype=torch.float32),
                                         requires_grad=False)

    def score_items(self, users, items):
        return self.counts[items]

    def _score_all_block(self, users):
        return self.counts.expand(len(users), -1)


def test_bpr_beats_popularity_on_a_citeulike_slice(tmp_path):
    path = DATA / "citeulike-a" / "users.dat"
    if not path.exists():
        pytest.skip(f"{path} not present")
    lines = path.read_text().splitlines()[:1200]
    (tmp_path / "users.dat").write_text("\n".join(lines) + "\n")
    data = kcore(load_users_dat(tmp_path / "users.dat"), min_user=5, min_item=3)
    split = leave_one_out(data, seed=0)
    popularity = Evaluator(split).evaluate(Popularity(split.train), "test").means()
    result = Trainer(new_model(split, dim=32), split, config(epochs=8, batch_size=1024, lr=1e-2)).fit()
    # popularity: H@5 about 0.05; BPR about 0.2 after 8 epochs
    assert result.test["H@5"] > popularity["H@5"] + 0.1
    assert result.test["N@10"] > 2 * popularity["N@10"]


def test_fused_adam_takes_the_steps_of_plain_adam():
    """The trainer's optimizer is fused where it can be; that must change speed, not the update."""
    torch.manual_seed(0)
    start = [torch.randn(50, 8), torch.randn(30)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(5)]
    finals = []
    for make in (lambda ps: _adam(ps, lr=1e-2, weight_decay=1e-3),
                 lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3, foreach=False)):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = make(params)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            optimizer.step()
        finals.append(params)
        assert any(not torch.equal(p, s) for p, s in zip(params, start))
    assert _adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0).defaults["fused"]
    for fused, plain in zip(*finals):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["bpr", "neumf", "cdae"])
def test_l2_penalises_the_batch_embeddings_per_pair(split, name):
    """``l2``: the loss gets the term l2 * (sum of the squared norms of each
    pair's user and item embeddings) / pairs, by hand for one batch, and it
    shrinks the embeddings against a run without it."""
    model = new_model(split, name)
    users, pos, neg = torch.tensor([0, 1, 1]), torch.tensor([2, 3, 4]), torch.tensor([[5], [6], [7]])
    items = torch.cat([pos[:, None], neg], dim=1)
    by_hand = 0.0
    for table in model.user_tables:
        by_hand += sum(float(getattr(model, table).weight[u].detach().square().sum()) for u in users.tolist())
    for table in model.item_tables:
        by_hand += sum(float(getattr(model, table).weight[i].detach().square().sum())
                       for i in items.reshape(-1).tolist())
    assert float(model.embedding_l2(users, items).detach()) == pytest.approx(by_hand, rel=1e-5)
    trainer = Trainer(model, split, config(epochs=1, l2=0.5))
    terms = trainer._model_terms(users, pos, neg)
    assert set(terms) == {"loss", "l2"} and float(terms["l2"].detach()) == pytest.approx(0.5 * by_hand / 3, rel=1e-5)

    plain_model, penalised_model = new_model(split, "bpr"), new_model(split, "bpr")
    plain = Trainer(plain_model, split, config(epochs=3)).fit()
    penalised = Trainer(penalised_model, split, config(epochs=3, l2=0.1)).fit()
    assert "l2" in penalised.history[0] and "l2" not in plain.history[0]
    assert penalised_model.user_emb.weight.norm() < plain_model.user_emb.weight.norm()


def test_patience_counts_periods_of_the_method():
    """DCD's validation metric is a saw-tooth over its correction period: with
    the patience counted in periods (one validation per period counts), a
    peak right after a correction does not stop the run in the troughs after it."""
    model = torch.nn.Linear(1, 1)
    period, patience = 5, 4
    # a peak at the first epoch of each period, lower through the period; a new best every third period
    curve = {epoch: 0.4 + 0.1 * (epoch % 15 == 1) + 0.001 * (epoch // 15) - 0.01 * ((epoch - 1) % 5)
             for epoch in range(1, 61)}
    by_epoch, by_period = BestTracker("H@5"), BestTracker("H@5", period)
    stops = {}
    for epoch, value in curve.items():
        for name, tracker in (("epoch", by_epoch), ("period", by_period)):
            tracker.update(epoch, {"H@5": value}, model)
            if tracker.bad_evals >= patience:
                stops.setdefault(name, epoch)
    assert stops == {"epoch": 5}  # four validations without a gain after the peak of epoch 1
    # the period ends 50, 55, 60 counted after the last best: three, below the patience
    assert by_period.best["epoch"] == 46 and by_period.bad_evals == 3
    assert [e for e in curve if e % 15 == 1] == [1, 16, 31, 46]


def test_patience_metrics_restart_the_patience_but_do_not_choose_the_model():
    """The papers' stopping rule: a validation where any of H@5, H@10, H@20
    improves restarts the patience; the model kept is still H@5's best."""
    model = torch.nn.Linear(1, 1)
    # H@5 peaks at epoch 2; H@10 keeps creeping up until epoch 6, H@20 once more at epoch 8
    h5 = [0.30, 0.40, 0.39, 0.38, 0.38, 0.37, 0.37, 0.36, 0.36, 0.36]
    h10 = [0.50, 0.55, 0.56, 0.57, 0.57, 0.58, 0.58, 0.58, 0.58, 0.58]
    h20 = [0.70, 0.72, 0.72, 0.72, 0.72, 0.72, 0.72, 0.73, 0.73, 0.73]
    plain, any_of = BestTracker("H@5"), BestTracker("H@5", patience_metrics=("H@5", "H@10", "H@20"))
    bad = {"plain": [], "any": []}
    for epoch, values in enumerate(zip(h5, h10, h20), start=1):
        valid = dict(zip(("H@5", "H@10", "H@20"), values))
        for name, tracker in (("plain", plain), ("any", any_of)):
            tracker.update(epoch, valid, model)
            bad[name].append(tracker.bad_evals)
    assert bad["plain"] == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    # restarted by H@10 at epochs 3, 4, 6 and by H@20 at epoch 8 (equal values are no improvement)
    assert bad["any"] == [0, 0, 0, 0, 1, 0, 1, 0, 1, 2]
    assert plain.best["epoch"] == any_of.best["epoch"] == 2
    # a checkpoint's tracker carries the bests of every patience metric
    restored = BestTracker("H@5", patience_metrics=("H@5", "H@10", "H@20"))
    restored.load_state_dict(any_of.state_dict())
    restored.update(11, {"H@5": 0.36, "H@10": 0.58, "H@20": 0.73}, model)
    assert restored.bad_evals == 3


def test_patience_metrics_must_be_validation_metrics():
    with pytest.raises(ConfigError, match="patience metric.*'H@50'.*not among the validation metrics"):
        TrainConfig(patience_metrics=("H@5", "H@50"))


def test_lazy_adam_moves_only_the_rows_a_batch_touches(split):
    """lazy-adam: its first step is dense Adam's (a row without gradient has
    no moment yet), up to where SparseAdam adds eps (before the bias
    correction: an eps of 1e-8 / sqrt(1 - beta2) on the first step, which
    moves gradients of ~1e-4 by ~1e-3 relative); afterwards a row the batch does not touch stays where it
    is, while dense Adam moves it on its momentum."""
    users, pos, neg = torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([[4], [5]])
    steps = {}
    for optimizer in ("adam", "lazy-adam"):
        model = new_model(split)
        trainer = Trainer(model, split, config(optimizer=optimizer, lr=0.1))
        opt = trainer.make_optimizer(list(model.parameters()))
        after = []
        for batch in ((users, pos, neg), (users[:1], pos[:1], neg[:1])):  # the second leaves user 1 out
            opt.zero_grad()
            model.loss(*batch).backward()
            opt.step()
            after.append(model.user_emb.weight.detach().clone())
        steps[optimizer] = after
    dense, lazy = steps["adam"], steps["lazy-adam"]
    torch.testing.assert_close(lazy[0], dense[0], rtol=0, atol=0.1 * 0.01)  # lr 0.1: 1% of a step
    assert torch.equal(lazy[1][1], lazy[0][1])  # user 1 untouched by the second batch: unchanged
    assert not torch.equal(dense[1][1], dense[0][1])  # dense Adam moved it on its momentum
    assert not torch.equal(lazy[1][0], lazy[0][0])


def test_lazy_adam_trains_and_says_what_it_cannot_do(split):
    result = Trainer(new_model(split), split, config(optimizer="lazy-adam", epochs=4, lr=0.02)).fit()
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < losses[0] and result.valid["H@5"] > 0.1 + 5 / 50  # well above a random ranking of 50
    with pytest.raises(ConfigError, match="no weight decay"):
        config(optimizer="lazy-adam", weight_decay=1e-4)
    with pytest.raises(ConfigError, match="lazy Adam update needs a bpr"):
        Trainer(new_model(split, "neumf"), split, config(optimizer="lazy-adam")).fit()
    with pytest.raises(ConfigError, match="unknown optimizer"):
        config(optimizer="sgd")


def test_callbacks_test_false_and_no_checkpoint(split, tmp_path, monkeypatch):
    """The hooks a search uses: callbacks after each validation (an exception
    leaves fit), test=False (the test part never evaluated, no result files),
    checkpoint=False (no checkpoint)."""
    seen, parts = [], []
    original = Evaluator.evaluate
    monkeypatch.setattr(Evaluator, "evaluate", lambda self, model, part="valid": parts.append(part) or
                        original(self, model, part))
    trainer = Trainer(new_model(split), split, config(epochs=4, eval_every=2), out_dir=tmp_path / "run",
                      callbacks=[lambda t, epoch, record: seen.append((t, epoch, record["valid"]["H@5"]))],
                      test=False, checkpoint=False)
    result = trainer.fit()
    assert [(t, e) for t, e, _ in seen] == [(trainer, 2), (trainer, 4)]
    assert [v for *_, v in seen] == [r["valid"]["H@5"] for r in result.history if "valid" in r]
    assert result.test == {} and result.test_result is None and "test" not in parts
    assert result.valid == trainer.best["valid"]
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())

    class Stop(Exception):
        pass

    def stop(t, epoch, record):
        raise Stop

    with pytest.raises(Stop):
        Trainer(new_model(split), split, config(epochs=4), callbacks=[stop]).fit()
