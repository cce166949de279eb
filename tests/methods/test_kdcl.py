"""KDCL (paper 002): every soft-target rule checked against formulas written out here, one-step gradients, General's
held-out weights, a short run, and every config under configs/kdcl/."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import assert_one_step, build, random_batch, short_run, tiny_task
from peerkd.methods import EpochContext
from peerkd.methods.parts import kdcl_targets as rules

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "kdcl"
STUDENTS = ["resnet8", "wrn16_1"]  # a heterogeneous pair: different depth and block type


def ce_by_hand(z, y: int) -> float:
    """log sum_k exp(z_k) - z_y for one logit vector, in float64."""
    z = np.asarray(z, dtype=np.float64)
    return float(np.log(np.exp(z).sum()) - z[y])


def combined_ce(alphas, logits, labels, sample: int) -> np.ndarray:
    """CE of ``sum_i alpha_i z_i`` for every row of ``alphas`` ``(P, m)`` on one sample, in float64."""
    z = logits[:, sample].double().numpy()  # (m, K)
    combined = np.atleast_2d(np.asarray(alphas, dtype=np.float64)) @ z  # (P, K)
    peak = combined.max(1, keepdims=True)
    return (np.log(np.exp(combined - peak).sum(1)) + peak[:, 0]) - combined[:, int(labels[sample])]


# ------------------------------------------------------------------------------------------------------ the rules

def test_naive_picks_the_student_with_the_lowest_ce_per_sample():
    logits = torch.tensor([[[3.0, 0.0, 0.0], [0.0, 0.5, 0.0]],     # student 0
                           [[1.0, 0.0, 0.0], [0.0, 4.0, 0.0]]])    # student 1
    labels = torch.tensor([0, 1])
    # sample 0: student 0 is more confident in class 0; sample 1: student 1 in class 1
    assert ce_by_hand(logits[0, 0], 0) < ce_by_hand(logits[1, 0], 0)
    assert ce_by_hand(logits[1, 1], 1) < ce_by_hand(logits[0, 1], 1)
    z_t, chosen = rules.naive_target(logits, labels)
    assert chosen.tolist() == [0, 1]
    assert torch.equal(z_t, torch.stack([logits[0, 0], logits[1, 1]]))


def test_naive_batch_scope_picks_one_student_by_the_batch_mean_ce():
    logits = torch.tensor([[[3.0, 0.0, 0.0], [0.0, 0.5, 0.0]],     # student 0: sample 0 very good, sample 1 poor
                           [[1.0, 0.0, 0.0], [0.0, 4.0, 0.0]]])    # student 1: sample 0 fair, sample 1 very good
    labels = torch.tensor([0, 1])
    means = [(ce_by_hand(logits[i, 0], 0) + ce_by_hand(logits[i, 1], 1)) / 2 for i in range(2)]
    assert means[1] < means[0]  # (0.55 + 0.04) / 2 against (0.09 + 0.79) / 2: student 1 wins on the batch
    z_t, chosen = rules.naive_target(logits, labels, "batch")
    assert chosen.tolist() == [1, 1]
    assert torch.equal(z_t, logits[1])
    with pytest.raises(ValueError, match="naive scope"):
        rules.naive_target(logits, labels, "epoch")


def test_minlogit_matches_eq7():
    z1 = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    z2 = torch.tensor([[0.0, 3.0, -1.0], [0.0, 3.0, -1.0]])
    labels = torch.tensor([0, 1])
    # sample 0 (y = 0): z1 - 2 = [0, -1, -2], z2 - 0 = [0, 3, -1] -> min [0, -1, -2]
    # sample 1 (y = 1): z1 - 1 = [1, 0, -1], z2 - 3 = [-3, 0, -4] -> min [-3, 0, -4]
    expected = torch.tensor([[0.0, -1.0, -2.0], [-3.0, 0.0, -4.0]])
    assert torch.equal(rules.minlogit_target(torch.stack([z1, z2]), labels), expected)


def test_linear_two_students_matches_a_grid_search():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 16, 6, generator=gen) * 3
    labels = torch.randint(0, 6, (16,), generator=gen)
    z_t, alpha = rules.linear_target(logits, labels)
    assert alpha.shape == (16, 2) and (alpha >= 0).all() and torch.allclose(alpha.sum(1), torch.ones(16))
    grid = np.linspace(0, 1, 2001)
    grid = np.stack([grid, 1 - grid], 1)
    for n in range(16):
        ours = combined_ce(alpha[n].tolist(), logits, labels, n)[0]
        assert ours <= combined_ce(np.eye(2), logits, labels, n).min() + 1e-6
        best_on_grid = combined_ce(grid, logits, labels, n).min()
        assert ours <= best_on_grid + 1e-5
        assert ours == pytest.approx(best_on_grid, abs=1e-4)
        assert torch.allclose(z_t[n], alpha[n, 0] * logits[0, n] + alpha[n, 1] * logits[1, n], atol=1e-5)
    assert ((alpha > 1e-3) & (alpha < 1 - 1e-3)).any()  # some optimum lies inside the segment


def test_linear_three_students_lies_on_the_simplex_and_beats_every_vertex():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 8, 5, generator=gen) * 3
    labels = torch.randint(0, 5, (8,), generator=gen)
    alpha = rules.linear_weights(logits, labels, iterations=60)
    assert (alpha >= 0).all() and torch.allclose(alpha.sum(1), torch.ones(8), atol=1e-5)
    steps = np.linspace(0, 1, 41)
    simplex = np.array([(a, b, max(1 - a - b, 0.0)) for a in steps for b in steps if a + b <= 1 + 1e-9])
    for n in range(8):
        ours = combined_ce(alpha[n].tolist(), logits, labels, n)[0]
        assert ours <= combined_ce(np.eye(3), logits, labels, n).min() + 1e-6  # every vertex
        assert ours <= combined_ce(simplex, logits, labels, n).min() + 1e-3


def test_linear_batch_scope_solves_one_combination_for_the_batch():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 10, 4, generator=gen) * 2
    labels = torch.randint(0, 4, (10,), generator=gen)
    alpha = rules.linear_weights(logits, labels, scope="batch")
    assert alpha.shape == (1, 2)

    def batch_ce(a):
        pairs = np.stack([a, 1 - a], 1)
        return sum(combined_ce(pairs, logits, labels, n) for n in range(10)) / 10
    best_on_grid = batch_ce(np.linspace(0, 1, 1001)).min()
    assert batch_ce(alpha[0, :1].double().numpy())[0] == pytest.approx(best_on_grid, abs=1e-4)


def closed_form(c: np.ndarray) -> np.ndarray:
    inverse = np.linalg.inv(c)
    return inverse.sum(1) / inverse.sum()


def test_general_weights_equal_eq11_on_a_made_up_covariance():
    c2 = torch.tensor([[4.0, 1.0], [1.0, 2.0]])
    # m = 2 by hand: w1 = (C22 - C12) / (C11 + C22 - 2 C12) = 1 / 4
    assert torch.allclose(rules.general_weights(c2), torch.tensor([0.25, 0.75]), atol=1e-5)
    c3 = np.array([[0.30, 0.10, 0.05], [0.10, 0.20, 0.04], [0.05, 0.04, 0.25]])
    expected = closed_form(c3)
    assert (expected > 0).all()
    assert np.allclose(rules.general_weights(torch.tensor(c3, dtype=torch.float32)).numpy(), expected, atol=1e-5)


def test_general_weights_guard_a_singular_covariance_and_respect_the_simplex():
    identical = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # two students making identical errors: rank 1
    assert torch.allclose(rules.general_weights(identical), torch.tensor([0.5, 0.5]), atol=1e-5)
    assert torch.allclose(rules.general_weights(torch.zeros(3, 3)), torch.full((3,), 1 / 3))
    assert torch.allclose(rules.general_weights(torch.full((2, 2), float("nan"))), torch.tensor([0.5, 0.5]))
    # eq. 11 leaves the simplex here: C^-1 = [[5, -2], [-2, 1]], C^-1 1 = [3, -1] -> w = [1.5, -0.5]
    outside = torch.tensor([[1.0, 2.0], [2.0, 5.0]])
    assert torch.allclose(rules.general_weights(outside, "none"), torch.tensor([1.5, -0.5]), atol=1e-4)
    # on the simplex the optimum is the vertex with the lower error, w^T C w = 1 < 5
    assert torch.allclose(rules.general_weights(outside, "simplex"), torch.tensor([1.0, 0.0]), atol=1e-6)


def test_general_target_is_the_weighted_average_of_softened_probabilities():
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]])
    t = 2.0
    p0 = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]
    p1 = [1 / (1 + math.exp(0.5)), math.exp(0.5) / (1 + math.exp(0.5))]
    expected = torch.tensor([[0.25 * p0[0] + 0.75 * p1[0], 0.25 * p0[1] + 0.75 * p1[1]]])
    assert torch.allclose(rules.general_target(logits, torch.tensor([0.25, 0.75]), t), expected, atol=1e-6)


# ------------------------------------------------------------------------------------------------- the method

@pytest.mark.parametrize("target", ["naive", "linear", "minlogit", "general"])
def test_one_step_of_every_rule_trains_every_student(target):
    task = tiny_task()
    method = build({"name": "kdcl", "models": STUDENTS, "target": target, "icl": False}, task)
    assert method.data_request(method.options).views == 1
    assert_one_step(method, random_batch(task))


def test_icl_gives_each_student_its_own_view_and_one_shared_target():
    task = tiny_task()
    method = build({"name": "kdcl", "models": STUDENTS + ["resnet8"], "target": "linear", "icl": True}, task)
    assert method.data_request(method.options).views == 3
    batch = random_batch(task, views=3)
    assert_one_step(method, batch)
    method.eval()
    with torch.no_grad():
        inputs = method._inputs(batch)
        assert all(torch.equal(x, batch.view(i)) for i, x in enumerate(inputs))
        own_views = torch.stack([m(batch.view(i)) for i, m in enumerate(method.models)])
        fused, _ = method.soft_target(own_views, batch.y)
        z_t, _ = rules.linear_target(own_views, batch.y)
        assert torch.allclose(fused, torch.softmax(z_t / method.options.temperature, 1), atol=1e-6)


def test_cutout_zeroes_a_square_in_every_view():
    task = tiny_task()
    method = build({"name": "kdcl", "models": STUDENTS, "target": "minlogit", "icl": True, "cutout": 8}, task)
    batch = random_batch(task, views=2)
    torch.manual_seed(0)
    inputs = method._inputs(batch)
    for x in inputs:
        zeros = (x == 0).all(1).flatten(1).sum(1)  # pixels zeroed in all channels, per image
        assert ((zeros >= 16) & (zeros <= 64)).all()  # an 8 x 8 square, clipped at the border to at least 4 x 4
    assert not torch.equal(inputs[0] == 0, inputs[1] == 0)  # each view its own square
    torch.manual_seed(0)
    assert_one_step(method, batch)


def test_predict_and_export_give_every_student_and_the_ensemble():
    task = tiny_task()
    method = build({"name": "kdcl", "models": STUDENTS, "target": "naive", "icl": False}, task).eval()
    x = torch.randn(2, 3, 32, 32)
    preds = method.predict(x)
    assert set(preds) == {"peer0", "peer1", "ensemble"}
    assert torch.allclose(method.export("peer1")(x), preds["peer1"])
    assert method.export("peer1").peerkd_spec["name"] == "wrn16_1"


def test_general_on_epoch_end_sets_eq11_weights_that_survive_a_state_dict_round_trip():
    task = tiny_task()
    options = {"name": "kdcl", "models": STUDENTS, "target": "general", "heldout_per_class": 4}
    method = build(options, task)
    assert method.data_request(method.options).heldout_per_class == 4
    assert torch.equal(method.general_weights, torch.tensor([0.5, 0.5]))
    heldout = [random_batch(task, batch_size=10, seed=s) for s in (1, 2)]
    method.eval()
    with torch.no_grad():
        method.on_epoch_end(EpochContext(0, 1, torch.device("cpu"), heldout=heldout))
        errors = []  # f_i(x) - 1, written out
        for batch in heldout:
            for i, model in enumerate(method.models):
                probs = torch.softmax(model(batch.x).double(), 1)
                errors.append((i, probs[torch.arange(len(batch.y)), batch.y] - 1))
    e = [torch.cat([err for i, err in errors if i == s]) for s in range(2)]
    c = np.array([[float((e[a] * e[b]).mean()) for b in range(2)] for a in range(2)])
    w_expected = closed_form(c)
    if (w_expected < 0).any():  # the simplex constraint picks the better vertex
        w_expected = np.eye(2)[int(np.argmin(np.diag(c)))]
    assert np.allclose(method.general_weights.numpy(), w_expected, atol=1e-4)
    assert not torch.allclose(method.general_weights, torch.tensor([0.5, 0.5]))
    restored = build(options, task)
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.general_weights, method.general_weights)


def test_general_short_run_with_icl_beats_chance_and_updates_its_weights(tmp_path):
    from peerkd.training.checkpoint import load_run

    tree = {"name": "kdcl", "models": STUDENTS, "target": "general", "icl": True, "heldout_per_class": 10}
    summary = short_run(tree, tmp_path / "run", epochs=2, overrides=("data.heldout_per_class=10",))
    for key in ("peer0", "peer1", "ensemble"):
        assert summary["keys"][key]["last"]["top1"] > 40.0, summary  # chance is 25 % with 4 classes
    weights = load_run(tmp_path / "run", device="cpu").method.general_weights
    assert torch.isclose(weights.sum(), torch.tensor(1.0)) and not torch.allclose(weights, torch.full((2,), 0.5))


def test_bad_options_are_config_errors():
    from peerkd.config import ConfigError

    for bad in ({"models": ["resnet8"]}, {"target": "mean"}, {"linear_scope": "epoch"}, {"naive_scope": "epoch"},
                {"general_constraint": "box"}, {"cutout": -1}):
        (key,) = bad
        with pytest.raises(ConfigError, match=f"^method.{key}: "):
            build({"name": "kdcl", "models": STUDENTS, **bad}, tiny_task())


# ---------------------------------------------------------------------------------------------------- configs

def test_every_kdcl_config_loads():
    from peerkd import load_config
    from peerkd.data import dataset_names
    from peerkd.models import model_names

    paths = sorted(CONFIGS.rglob("*.yaml"))
    assert len(paths) >= 20
    for path in paths:
        config = load_config(path)
        assert config.data.dataset in dataset_names(), path
        options = config.method.options
        names = list(getattr(options, "models", [])) + [getattr(options, "student", "")]
        assert all(name in model_names() for name in names if name), path
        assert path.read_text().startswith("#"), f"{path} lacks its table-cell comment"
