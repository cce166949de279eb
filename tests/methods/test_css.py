"""CSS (paper 000): masks, joint labels, eq. 3-4 aggregation, the alpha ratio, the KL pairing, one step, a short run."""
import math

import pytest
import torch
import torch.nn.functional as F

from peerkd.methods.css import quadrant_masks
from peerkd.models.execution import member_execution
from peerkd.models.members import MemberList
from tests.helpers import assert_one_step, build, random_batch, short_run, tiny_task


def css(task, members: str = "separate", **options):
    tree = {"name": "css", "models": ["resnet8", "resnet8"], "branches": 3}
    tree.update(options)
    return build(tree, task, members=members)


def test_quadrant_masks_drop_quarter_j_of_every_channel():
    masks = quadrant_masks(4, 4, 6)
    assert masks.shape == (4, 1, 4, 6)
    zero_rows_cols = {0: (range(0, 2), range(0, 3)), 1: (range(0, 2), range(3, 6)),
                      2: (range(2, 4), range(0, 3)), 3: (range(2, 4), range(3, 6))}
    for j, (rows, cols) in zero_rows_cols.items():
        expected = torch.ones(4, 6)
        for r in rows:
            for c in cols:
                expected[r, c] = 0
        assert torch.equal(masks[j, 0], expected), j
        assert int((masks[j] == 0).sum()) == 6  # a quarter of 24 positions
    odd = quadrant_masks(3, 5, 5)  # rows and columns split at 5 // 2 = 2
    assert odd[0, 0, :2, :2].eq(0).all() and odd[0, 0, 2:, :].eq(1).all() and odd[0, 0, :, 2:].eq(1).all()
    assert odd[2, 0, 2:, :2].eq(0).all() and int((odd[2] == 0).sum()) == 6


def test_branch_j_receives_the_trunk_map_with_quadrant_j_zeroed():
    task = tiny_task()
    method = css(task).eval()
    net = method.nets[0]
    seen = {}
    for j, branch in enumerate(net.branches):
        branch.register_forward_pre_hook(lambda mod, args, j=j: seen.__setitem__(j, args[0].detach().clone()))
    x = torch.randn(2, 3, 32, 32)
    method.predict(x)
    trunk = net.trunk(x)  # (2, 16, 16, 16) for resnet8 split before its last stage
    half = trunk.shape[-1] // 2
    corners = [(slice(0, half), slice(0, half)), (slice(0, half), slice(half, None)),
               (slice(half, None), slice(0, half))]
    for j, (rows, cols) in enumerate(corners):
        expected = trunk.clone()
        expected[:, :, rows, cols] = 0
        assert torch.allclose(seen[j], expected)
        assert seen[j][:, :, rows, cols].abs().sum() == 0 and trunk[:, :, rows, cols].abs().sum() > 0


def fixed_logits(method, logits_per_net):
    """Make the method see given classifier outputs instead of running its networks."""
    method.network_logits = lambda x: logits_per_net


def test_joint_label_indexing_and_test_time_aggregation():
    K, m = 3, 2
    task = tiny_task(num_classes=K)
    method = css(task, branches=m)
    assert method.nets[0].branches[0].head.fc.out_features == K * m
    gen = torch.Generator().manual_seed(1)
    z = [[torch.randn(4, K * m, generator=gen) for _ in range(m)] for _ in range(2)]
    fixed_logits(method, z)
    preds = method.predict(torch.zeros(4, 3, 32, 32))
    for n in range(2):
        per_branch = []
        for j in range(m):
            columns = [y * m + j for y in range(K)]  # joint label (y, j) -> y * m + j
            per_branch.append(z[n][j][:, columns])
            assert torch.equal(preds[f"net{n + 1}_branch{j}"], per_branch[-1])
        assert torch.allclose(preds[f"net{n + 1}"], (per_branch[0] + per_branch[1]) / 2)  # eq. 4, softmax = eq. 3
    p1, p2 = F.softmax(preds["net1"], -1), F.softmax(preds["net2"], -1)
    assert torch.allclose(preds["ensemble"].exp(), (p1 + p2) / 2, atol=1e-6)
    # the CE of a network sums over its branches, each with the joint label y * m + j
    y = torch.tensor([0, 1, 2, 1])
    batch = random_batch(task, batch_size=4)
    batch.y = y
    expected = sum(F.cross_entropy(z[0][j], y * m + j) for j in range(m))
    assert torch.allclose(method.network_ce(z[0], batch), expected)


def kl_by_hand(teacher_logits, student_logits, t):
    p = F.softmax(teacher_logits / t, -1)
    q = F.softmax(student_logits / t, -1)
    return (p * (p.log() - q.log())).sum(-1).mean() * t * t


def test_alpha_is_the_detached_ce_ratio_and_kl_pairs_branches_by_transform():
    K, m, t = 3, 2, 3.0
    task = tiny_task(num_classes=K)
    method = css(task, branches=m)
    gen = torch.Generator().manual_seed(2)
    z = [[(2 * torch.randn(4, K * m, generator=gen)).requires_grad_() for _ in range(m)] for _ in range(2)]
    fixed_logits(method, z)
    batch = random_batch(task, batch_size=4)
    y = batch.y
    ce = [sum(F.cross_entropy(z[n][j], y * m + j) for j in range(m)) for n in range(2)]
    alpha1 = float(ce[0].detach() / ce[1].detach())
    out = method(batch)
    assert math.isclose(float(out.logs["alpha1"]), alpha1, rel_tol=1e-5)
    assert math.isclose(float(out.logs["alpha2"]), 1 / alpha1, rel_tol=1e-5)
    # branch j of net 1 learns from branch j of net 2 (same transform), over the whole joint softmax
    kd1 = sum(kl_by_hand(z[1][j].detach(), z[0][j], t) for j in range(m))
    kd2 = sum(kl_by_hand(z[0][j].detach(), z[1][j], t) for j in range(m))
    assert torch.allclose(out.logs["kl1"], kd1.detach(), rtol=1e-5)
    assert torch.allclose(out.logs["kl2"], kd2.detach(), rtol=1e-5)
    crossed = kl_by_hand(z[1][1].detach(), z[0][0], t) + kl_by_hand(z[1][0].detach(), z[0][1], t)
    assert not torch.allclose(out.logs["kl1"], crossed.detach())
    # the gradient is that of the loss with alpha as a constant: no gradient flows through the ratio
    grads = torch.autograd.grad(out.loss, [z[0][0], z[1][1]])
    constant = ce[0] + ce[1] + alpha1 * kd1 + (1 / alpha1) * kd2
    expected = torch.autograd.grad(constant, [z[0][0], z[1][1]])
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, atol=1e-6)


def test_fixed_weights_and_single_network_ablations():
    task = tiny_task()
    fixed = css(task, branches=2, dynamic_weights=False)
    out = fixed(random_batch(task))
    assert float(out.logs["alpha1"]) == 1.0 and float(out.logs["alpha2"]) == 1.0
    single = css(task, models=["resnet8"], branches=4, target_diversity=False)  # Table 5 case A: 1 x 4, SD only
    assert single.nets[0].branches[0].head.fc.out_features == task.num_classes
    out = assert_one_step(single, random_batch(task))
    assert set(single.predict(torch.randn(2, 3, 32, 32))) == {"net1", *(f"net1_branch{j}" for j in range(4))}
    with pytest.raises(Exception, match="at most 4"):
        css(task, branches=5)


@pytest.mark.parametrize("models", [["resnet8", "resnet8"], ["resnet8", "pyramidnet8_a12"]])
def test_one_step_trains_every_parameter(models):
    task = tiny_task()
    method = css(task, models=models)
    assert_one_step(method, random_batch(task))


def test_export_gives_a_plain_model_with_the_transform_logits():
    task = tiny_task()
    method = css(task, branches=2, sample_diversity=False).eval()  # without masks a branch path is exactly a model
    x = torch.randn(3, 3, 32, 32)
    plain = method.export("net2_branch1")
    assert plain.head.fc.out_features == task.num_classes
    assert torch.allclose(plain(x), method.predict(x)["net2_branch1"], atol=1e-5)
    with pytest.raises(KeyError, match="exportable keys"):
        method.export("ensemble")  # both networks: peerkd export exports it as the method's own predict


def _scrambled_statistics(method):
    """``method`` in eval mode with random BatchNorm statistics, so an export that missed one would show."""
    gen = torch.Generator().manual_seed(1)
    state = method.state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            state[key] = torch.randn(value.shape, generator=gen) * 0.2
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
    method.load_state_dict(state)
    return method.eval()


@pytest.mark.parametrize("members", ["separate", "grouped", "vmap"])
def test_export_of_a_network_is_its_masked_m_branch_aggregate(members):
    """Issue 12: the paper evaluates net 1 as eq. 3-4 (m tails behind quadrant masks, the mean of each tail's own
    transform logits); export("net1") is that module, equal to predict()["net1"], in every execution."""
    task = tiny_task()
    method = _scrambled_statistics(css(task, members, branches=3))
    x = torch.randn(3, 3, 32, 32)
    predicted = method.predict(x)
    for key in ("net1", "net2", "net1_branch2"):
        exported = method.export(key)
        assert not any(p is q for p in exported.parameters() for q in method.parameters())  # a copy, detached
        assert torch.allclose(exported(x), predicted[key], atol=1e-5), key
    assert torch.allclose(method.export()(x), predicted["net1"], atol=1e-5)  # the default is the evaluated net 1
    plain_path = method.nets.export_branch(0, 2).eval()  # the unmasked path (the export before issue 12)
    assert not torch.allclose(plain_path(x)[:, 2::3], predicted["net1_branch2"], atol=1e-3)
    with member_execution("grouped"):  # an export is plain whatever execution is current
        exported = method.export("net2")
    assert type(exported.net.branches) is MemberList
    assert torch.allclose(exported(x), predicted["net2"], atol=1e-5)


def test_short_run_beats_chance_and_logs_diversity(tmp_path):
    summary = short_run({"name": "css", "models": ["resnet8", "resnet8"], "branches": 2}, tmp_path / "run", epochs=3,
                        train_size=800)
    for key in ("net1", "net2", "ensemble", "net1_branch0"):
        assert summary["keys"][key]["last"]["top1"] > 40.0, summary  # chance is 25 % with 4 classes
    assert {"branches", "mutual0", "mutual1"} <= set(summary["diversity"])
