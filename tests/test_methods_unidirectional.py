"""RD, CD, DE and DE-RRD on the trainer: their losses fall, RD's weights,
DE's experts (batched, annealed to one-hot, outside the student), option
errors and an exact resume."""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rankdistill.errors import ConfigError
from rankdistill.methods import build_method, method_options
from rankdistill.methods.combine import combine
from rankdistill.methods.de import DE, Experts, annealed_temperature
from rankdistill.methods.rd import position_weights, rd_weights, sampled_ranks
from rankdistill.methods.base import Batch
from rankdistill.methods.rrd import RRD
from rankdistill.models import load_model
from rankdistill.trainer import Trainer

from conftest import DEVICES
from distill_setup import config, distill_context, interrupted_and_resumed, new_model, small_split, strip



@pytest.fixture(scope="module")
def split():
    return small_split(100, 160, seed=2)


def loss_terms(record):
    return {k for k in record if k not in ("epoch", "valid", "loss") and not k.startswith(("discrepancy", "de_"))
            and not k.endswith("seconds")}


# ---------------------------------------------------------------- the losses fall

CASES = {
    "rd": ("rd", {}, {"rd"}),  # warm-up: position weights only
    "rd-exact": ("rd", {"warmup": 0, "rank_every": 1}, {"rd"}),
    "rd-sampled": ("rd", {"warmup": 0, "rank_estimate": "sampled"}, {"rd"}),
    "cd": ("cd", {}, {"cd"}),
    # the first 6 epochs of a 60-epoch annealing, as at the start of a real run
    "de": ("de", {"anneal_epochs": 60}, {"de"}),
    "de-batch-rows": ("de", {"anneal_epochs": 60, "rows": "batch"}, {"de"}),  # items: positives and negatives
    "de-rrd": ("de-rrd", {"anneal_epochs": 60}, {"de", "rrd"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_distillation_loss_falls(split, teacher, rankings, case):
    name, options, expected = CASES[case]
    defaults = dataclasses.asdict(method_options(name))
    options = {**{key: 1.0 for key, value in defaults.items() if key.startswith("lambda_") and value > 0}, **options}
    result = Trainer(new_model(split, 4), split, config(epochs=6, lr=5e-2),
                     method=lambda context: build_method(name, context, teacher, rankings, options)).fit()
    assert loss_terms(result.history[0]) == expected
    for term in expected:
        values = np.array([r[term] for r in result.history])
        assert values[-1] < 0.97 * values[0] and np.sum(np.diff(values) < 0) >= 4, (term, values)


@pytest.mark.parametrize("name", ["rd", "cd", "de", "de-rrd"])
def test_methods_train_a_neumf_student(split, teacher, rankings, name):
    options = {"warmup": 0} if name == "rd" else {}
    result = Trainer(new_model(split, 4, name="neumf"), split, config(epochs=2),
                     method=lambda context: build_method(name, context, teacher, rankings, options)).fit()
    assert all(math.isfinite(r[term]) for r in result.history for term in loss_terms(r))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["rd", "cd", "de-rrd"])
def test_methods_run_on_each_device(split, teacher, rankings, name, device):
    options = {"warmup": 0, "rank_estimate": "sampled"} if name == "rd" else {}
    result = Trainer(new_model(split, 4), split, config(epochs=1, device=device),
                     method=lambda context: build_method(name, context, copy.deepcopy(teacher), rankings,
                                                         options)).fit()
    assert all(math.isfinite(result.history[0][term]) for term in loss_terms(result.history[0]))


# ---------------------------------------------------------------- RD

def test_rd_weights_hand_case():
    e = np.exp(-np.arange(1, 4))
    position = position_weights(3, 1.0)
    np.testing.assert_allclose(position.numpy(), e / e.sum(), rtol=1e-6)
    assert torch.equal(rd_weights(None, position, mu=0.1), position)  # warm-up
    student = torch.tensor([[0, 15, 2], [9, 0, 1]])  # teacher ranks 0, 1, 2
    expected = torch.tensor([[0.0, math.tanh(1.4) * e[1], 0.0],
                             [math.tanh(0.9) * e[0], 0.0, 0.0]]) / e.sum()
    torch.testing.assert_close(rd_weights(student, position, mu=0.1), expected.float())
    torch.testing.assert_close(rd_weights(student, position, mu=0.1, renormalize=True),
                               torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert rd_weights(torch.tensor([[0, 1, 2]]), position, mu=0.1, renormalize=True).sum() == 0


def test_rd_sampled_rank_estimate_hand_case():
    scores = torch.tensor([[1.0, 0.0]])
    samples = torch.tensor([[2.0, 0.5, -1.0, 3.0]])
    # 2 of 4 samples above 1.0, 3 of 4 above 0.0; 101 unobserved items.
    assert sampled_ranks(scores, samples, torch.tensor([101])).tolist() == [[50.0, 75.0]]


def test_rd_loss_uses_exact_catalogue_ranks(split, teacher, rankings):
    student = new_model(split, 4)
    method = build_method("rd", distill_context(split, student), teacher, rankings,
                          {"warmup": 0, "positives": 5, "mu": 0.05, "rows": "batch"})
    method.refresh(0)
    with torch.no_grad():
        scores = student.score_all(torch.arange(split.n_users))
    seen = torch.zeros_like(scores, dtype=torch.bool)
    seen[torch.as_tensor(split.train.users), torch.as_tensor(split.train.items)] = True
    top = rankings.items_of_user[:, :5]
    target = scores.gather(1, top)
    # rank among the unobserved items: higher scores, ties broken by index
    higher = (scores[:, None, :] > target[:, :, None]) | ((scores[:, None, :] == target[:, :, None])
                                                        & (torch.arange(split.n_items) < top[:, :, None]))
    ranks = (higher & ~seen[:, None, :]).sum(dim=2)
    assert torch.equal(method.student_rank, ranks)
    weights = torch.exp(-torch.arange(1, 6) / 1.0)
    weights = weights / weights.sum() * torch.tanh(torch.clamp(0.05 * (ranks - torch.arange(5)), min=0))
    users = torch.tensor([0, 3, 3, 7])
    batch = Batch(users, users, users[:, None])
    expected = -(weights * F.logsigmoid(target)).sum(dim=1)[torch.tensor([0, 3, 7])].mean()
    torch.testing.assert_close(method.losses(student, batch)["rd"], expected)
    # the public face: the same term, weighted by lambda_rd, on the context's student
    torch.testing.assert_close(method.loss(batch.users, batch.pos_items, batch.neg_items)["rd"],
                               method.options.lambda_rd * expected)


# ---------------------------------------------------------------- DE

def test_experts_are_one_batched_computation_equal_to_each_expert():
    experts = Experts(4, 3, 7, torch.Generator().manual_seed(0))
    x = torch.randn(6, 3)
    out = experts.outputs(x)
    assert out.shape == (6, 4, 7)
    for m in range(4):
        hidden = torch.relu(x @ experts.w1[m] + experts.b1[m])
        torch.testing.assert_close(out[:, m], hidden @ experts.w2[m] + experts.b2[m])
    assert experts.w1.shape == (4, 3, 5)  # hidden (d_s + d_t) / 2


def test_de_selection_becomes_one_hot_as_the_temperature_falls():
    experts = Experts(8, 3, 6, torch.Generator().manual_seed(1))
    teacher = torch.randn(500, 6)
    largest = []
    for tau in (annealed_temperature(p, 10, 1.0, 1e-10) for p in range(11)):
        selection = experts.selection(teacher, tau, experts.gumbel(500, torch.Generator().manual_seed(2))).detach()
        torch.testing.assert_close(selection.sum(dim=1), torch.ones(500))
        largest.append(float(selection.max(dim=1).values.mean()))
    assert largest[0] < 0.9 and all(b >= a - 1e-6 for a, b in zip(largest, largest[1:]))
    one_hot = experts.selection(teacher, 1e-10, experts.gumbel(500, torch.Generator().manual_seed(2))).detach()
    assert torch.equal(one_hot.max(dim=1).values, torch.ones(500)) and int((one_hot > 0).sum()) == 500
    assert annealed_temperature(0, 10, 1.0, 1e-10) == 1.0
    assert annealed_temperature(5, 10, 1.0, 1e-10) == pytest.approx(1e-5)
    assert annealed_temperature(12, 10, 1.0, 1e-10) == pytest.approx(1e-10)


def test_de_anneals_over_the_run_and_logs_the_selection(split, teacher, rankings):
    result = Trainer(new_model(split, 4), split, config(epochs=4),
                     method=lambda context: build_method("de", context, teacher, rankings, {"anneal_epochs": 3})).fit()
    taus = [r["de_tau"] for r in result.history]
    assert taus == pytest.approx([1.0, 1e-10 ** (1 / 3), 1e-10 ** (2 / 3), 1e-10])
    assert result.history[-1]["de_selection"] == 1.0 > result.history[0]["de_selection"]


def test_de_adds_no_parameters_to_the_student(split, teacher, rankings, tmp_path):
    student = new_model(split, 4)
    plain = student.num_parameters()
    trainer = Trainer(student, split, config(epochs=2), out_dir=tmp_path,
                      method=lambda context: build_method("de", context, teacher, rankings, {"experts": 5}))
    method = trainer.method
    n_experts = 2 * 5 * ((4 * 10 + 10) + (10 * 16 + 16)) + 2 * (16 * 5 + 5)  # users and items: d_s=4, d_t=16
    # built with the student (in its context), and the method's own, not the student's
    before = [p.detach().clone() for p in method.parameters()]
    assert sum(p.numel() for p in before) == n_experts
    assert not {id(p) for p in method.parameters()} & {id(p) for p in student.parameters()}
    assert student.num_parameters() == plain
    trainer.fit()
    params = list(method.parameters())
    assert sum(p.numel() for p in params) == n_experts
    assert any(not torch.equal(a, b) for a, b in zip(before, params))  # trained by the same optimizer
    assert student.num_parameters() == plain
    saved, info = load_model(tmp_path / "best.pt")
    assert saved.num_parameters() == plain == info["num_parameters"]
    assert set(saved.state_dict()) == set(new_model(split, 4).state_dict())


def test_de_needs_representations(split, teacher, rankings):
    class Opaque(type(teacher)):
        def user_representation(self, users):
            raise NotImplementedError
    student = Opaque(split.n_users, split.n_items, 4)
    with pytest.raises(ConfigError, match="user representations"):
        Trainer(student, split, config(), method=lambda context: build_method("de", context, teacher, rankings)).fit()


@pytest.mark.parametrize("name", ["de", "de-rrd"])
def test_resume_is_exact(split, teacher, rankings, tmp_path, name):
    options = {"experts": 4, "anneal_epochs": 4}
    whole, resumed = interrupted_and_resumed(split, lambda c: build_method(name, c, teacher, rankings, options),
                                             tmp_path, epochs=5, crash_at=3, resume_seed=9)
    assert strip(resumed.history) == strip(whole.history)
    assert resumed.test == whole.test


# ---------------------------------------------------------------- combining methods

def test_combined_method_is_the_union_of_its_members(split, teacher, rankings):
    method = build_method("de-rrd", distill_context(split), teacher, rankings, {"lambda_rrd": 0.5, "experts": 3})
    assert [type(part) for part in method.parts] == [DE, RRD]
    assert all(part.options is method.options for part in method.parts)
    assert method.options.lambda_rrd == 0.5 and method.options.experts == 3
    assert set(dataclasses.asdict(method.options)) == (set(dataclasses.asdict(method_options("de")))
                                                      | set(dataclasses.asdict(method_options("rrd"))))

    @dataclasses.dataclass
    class OtherOptions(type(method_options("rrd"))):
        experts: int = 7  # the same name as DE's option, another default

    class Other(RRD):
        Options = OtherOptions
    with pytest.raises(TypeError, match="experts"):
        combine(DE, Other)


def test_bad_options_are_config_errors(split, teacher, rankings):
    context = distill_context(split)
    cases = [("rd", {"rank_estimate": "guess"}, "rank_estimate"), ("rd", {"positives": 0}, "positives"),
             ("rd", {"mu": 0}, "mu"), ("cd", {"samples": 0}, "samples"), ("cd", {"temperature": 0}, "temperature"),
             ("de", {"experts": 0}, "experts"), ("de", {"tau_end": 0}, "tau_end"),
             ("de", {"reduction": "max"}, "reduction"), ("de-rrd", {"temperature": -1}, "temperature"),
             ("de-rrd", {"lambda_ucd": 1}, "unknown option"), ("de", {"experts": "many"}, "expected int")]
    for name, options, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_method(name, context, teacher, rankings, options)
    for name in ("rd", "cd", "de", "de-rrd"):
        with pytest.raises(ConfigError, match="needs the teacher's rankings"):
            build_method(name, context, None, None)
    # CD's labels and DE's representations are the teacher's own: its rankings are not enough
    for name, message in (("cd", "needs the teacher"), ("de", "needs a teacher"), ("de-rrd", "needs a teacher")):
        with pytest.raises(ConfigError, match=message):
            build_method(name, context, None, rankings)
