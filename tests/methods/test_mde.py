"""MDE: FFM weights and target, the CD loss on small matrices, the full loss, the Table 6 matrix, export, a run."""
import itertools

import torch
import torch.nn.functional as F

from tests.helpers import assert_one_step, build, random_batch, short_run, tiny_task
from peerkd.methods.parts.multibranch import classifier_diversification, peer_targets


def test_ffm_weights_sum_to_one_and_give_the_weighted_target():
    task = tiny_task()
    method = build({"name": "mde", "model": "resnet8"}, task).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = method.group(x)
        targets, weights = peer_targets(method.target_builder, out, [0, 1, 2])
        # by hand: concat maps, conv-BN-ReLU, pool, FC, softmax
        ffm = method.target_builder
        conv, bn = ffm.fuse[0], ffm.fuse[1]
        channels = out.maps[0].shape[1]  # the default reading: a 1x1 conv from 3 C to C / 16 channels
        assert conv.weight.shape == (max(1, channels // 16), 3 * channels, 1, 1)
        fused = F.conv2d(torch.cat(out.maps[:3], 1), conv.weight)
        fused = F.relu(F.batch_norm(fused, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))
        expected_w = torch.softmax(fused.mean(dim=(2, 3)) @ ffm.fc.weight.t() + ffm.fc.bias, -1)
        t_e = sum(expected_w[:, i:i + 1] * out.logits[i] for i in range(3))
    assert weights.shape == (3, 3)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    torch.testing.assert_close(weights, expected_w, rtol=1e-5, atol=1e-6)
    for i in range(3):  # every auxiliary branch gets the same t_e
        torch.testing.assert_close(targets[:, i], t_e, rtol=1e-5, atol=1e-5)


def test_ffm_earlier_reading_is_a_switch():
    method = build({"name": "mde", "model": "resnet8", "fusion_kernel": 3, "fusion_reduction": 1}, tiny_task())
    conv = method.target_builder.fuse[0]
    assert conv.kernel_size == (3, 3) and conv.out_channels * 3 == conv.in_channels


def test_cd_loss_on_small_matrices():
    w1 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, -1.0]])  # (C=3, d=2)
    w2 = torch.tensor([[0.0, 1.0], [3.0, 0.0], [-1.0, 1.0]])
    w3 = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    # outer reading (default): vec(W_i)^T vec(W_j) is a 6 x 6 outer product; |.| sums |w1_k| |w2_l| over all k, l
    by_hand = sum(abs(a) * abs(b) for a in w1.flatten().tolist() for b in w2.flatten().tolist())
    assert by_hand == 30.0  # (1 + 2 + 1 + 1) * (1 + 3 + 1 + 1)
    assert classifier_diversification([w1, w2]).item() == 30.0
    assert classifier_diversification([w1, w2, w3]).item() == 30.0 + 5 * 2 + 6 * 2
    # feature reading: W_i^T W_j is 2x2; w1^T w2 = [[1*0+0*3+1*-1, 1*1+0*0+1*1], [0*0+2*3-1*-1, 0*1+2*0-1*1]]
    #                                             = [[-1, 2], [7, -1]] -> |.| sum 11
    # w1^T w3 = [[1, 1], [0, 0]] -> 2 ; w2^T w3 = [[0, 0], [1, 1]] -> 2
    assert classifier_diversification([w1, w2], product="feature").item() == 11.0
    assert classifier_diversification([w1, w2, w3], product="feature").item() == 15.0
    # class reading: W_i W_j^T is 3x3; w1 w2^T = [[0, 3, -1], [2, 0, 2], [-1, 3, -2]] -> 14
    assert classifier_diversification([w1, w2], product="class").item() == 14.0


def test_mde_loss_adds_gamma_times_cd_over_all_classifiers():
    task = tiny_task()
    batch = random_batch(task)
    with_cd = build({"name": "mde", "model": "resnet8", "cd_weight": 0.01}, task).eval()
    without = build({"name": "mde", "model": "resnet8", "cd_weight": 0.0}, task).eval()
    without.load_state_dict(with_cd.state_dict())
    with torch.no_grad():
        fcs = [tail.head.fc.weight.reshape(1, -1) for tail in with_cd.group.net.branches]  # vec(W_i) as rows
        cd = sum((fcs[i].t() @ fcs[j]).abs().sum() for i, j in itertools.combinations(range(4), 2))
        torch.testing.assert_close(with_cd(batch).loss, without(batch).loss + 0.01 * cd, rtol=1e-5, atol=1e-5)
    assert with_cd.options.leader_weight == 2.0 and with_cd.options.temperature == 3.0
    assert MDE_DEFAULT_GAMMA == build({"name": "mde", "model": "resnet8"}, task).options.cd_weight


def test_cd_gradient_at_the_papers_gamma_is_in_the_range_fig3_implies():
    """Paper 001, Fig. 3 (ResNet-32, CIFAR-100, gamma from 1e-10 to 1e-4, best at 5e-8): too large a gamma gives "too
    much diversity ... will not converge", too small makes CD "ineffective". With r the ratio of the gradient norms
    ||grad gamma L_cd|| / ||grad sum_i CE_i|| on the m classifiers' weights at initialisation at gamma = 5e-8 (r is
    linear in gamma): at gamma = 1e-4 (2000 x) CD must at least match CE (r * 2000 >= 1), at gamma = 1e-10 (1/500)
    it must be negligible (r / 500 <= 1e-3) and at 5e-8 CE still leads (r < 1): 5e-4 <= r <= 0.5. The literal
    (C, d) reading gives r ~ 5e-6 (inert everywhere); the outer-product reading r ~ 4e-3."""
    torch.manual_seed(0)
    task = tiny_task(num_classes=100, num_train=64)
    method = build({"name": "mde", "model": "resnet32"}, task).train()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32, generator=gen), torch.randint(0, 100, (16,), generator=gen)
    with torch.no_grad():
        features = method.group(x).features  # the classifiers' inputs; only the classifier weights are probed
    weights = method.group.classifier_weights()
    biases = [tail.head.fc.bias for tail in method.group.net.branches]
    ce = sum(F.cross_entropy(F.linear(f, w, b), y) for f, w, b in zip(features, weights, biases))
    grad_ce = torch.cat([g.flatten() for g in torch.autograd.grad(ce, weights)])
    gamma = method.options.cd_weight
    cd = classifier_diversification(weights, method.options.cd_product)
    grad_cd = torch.cat([g.flatten() for g in torch.autograd.grad(gamma * cd, weights)])
    ratio = float(grad_cd.norm() / grad_ce.norm())
    assert gamma == 5e-8
    assert 5e-4 <= ratio <= 0.5, ratio


def test_one_adds_gamma_times_cd_over_its_branches():
    task = tiny_task()
    batch = random_batch(task)
    with_cd = build({"name": "one", "model": "resnet8", "branches": 4, "cd_weight": 0.01}, task).eval()
    without = build({"name": "one", "model": "resnet8", "branches": 4}, task).eval()
    without.load_state_dict(with_cd.state_dict())
    with torch.no_grad():
        l1 = [w.abs().sum() for w in with_cd.group.classifier_weights()]
        cd = sum(l1[i] * l1[j] for i, j in itertools.combinations(range(4), 2))
        torch.testing.assert_close(with_cd(batch).loss, without(batch).loss + 0.01 * cd, rtol=1e-5, atol=1e-5)
    assert without.options.cd_weight == 0.0
    assert_one_step(with_cd, batch)


MDE_DEFAULT_GAMMA = 5e-8


def test_table6_matrix_each_target_builder_trains():
    task = tiny_task()
    for target, cd in itertools.product(("gate", "attention", "ffm"), (0.0, 5e-8)):
        method = build({"name": "mde", "model": "resnet8", "target": target, "cd_weight": cd}, task)
        assert_one_step(method, random_batch(task))


def test_mde_leader_export_and_keys():
    task = tiny_task()
    method = build({"name": "mde", "model": "resnet8"}, task)
    assert_one_step(method, random_batch(task))
    method.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(method.export()(x), method.predict(x)["leader"])
        torch.testing.assert_close(method.export("branch1")(x), method.predict(x)["branch1"])
    assert method.diversity_groups()["peers"] == ["branch0", "branch1", "branch2"]


def test_mde_short_run_beats_chance_and_reports_agreement(tmp_path):
    summary = short_run({"name": "mde", "model": "resnet8"}, tmp_path / "run", epochs=3,
                        overrides=("data.synthetic.test_size=200",))
    for key in ("leader", "branch0", "ensemble"):
        assert summary["keys"][key]["last"]["top1"] > 40.0, summary
    assert -1.0 <= summary["diversity"]["peers_agreement"] <= 1.0
    assert 0.0 <= summary["diversity"]["peers"] <= 2 ** 0.5
