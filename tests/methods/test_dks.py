"""DKS: the branches, the loss against the formula written out, the synergy gradient, predict / export, a short run."""
import pytest
import torch
import torch.nn.functional as F

from peerkd.core.errors import ConfigError
from tests.helpers import assert_one_step, build, cifar100_subset_run, random_batch, tiny_task

SMALL = {"name": "dks", "model": "preact_resnet18", "model_options": {"width": 4}}  # 4-32 channels


def expected_terms(logits, y, t):
    """``(sum_j CE(z_j, y), sum_{j != k} T^2 KL(softmax(z_k / T) || softmax(z_j / T)))``, batch means."""
    ce = sum(F.cross_entropy(z, y) for z in logits)
    synergy = 0.0
    for j, z in enumerate(logits):
        for k, other in enumerate(logits):
            if k != j:
                p = torch.softmax(other / t, -1)
                synergy = synergy + (p * (p.log() - torch.log_softmax(z / t, -1))).sum(-1).mean() * t * t
    return ce, synergy


def spread_classifiers(method):
    """Distinct, confident classifiers (at initialisation all three predict nearly uniformly and the KLs vanish)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for head in [method.backbone.head, *(branch.head for branch in method.branches)]:
            head.fc.weight.copy_(30 * torch.randn(head.fc.weight.shape, generator=gen))
    return method


def test_branches_copy_the_last_stages_with_their_block_counts():
    method = build(SMALL, tiny_task())
    assert method.branch_keys() == ["branch2", "branch3"]  # after stage 2 (1 + 2 blocks), after stage 3 (2 blocks)
    assert [[len(stage) for stage in branch.stages] for branch in method.branches] == [[1, 2], [2]]
    assert method.branches[0].stages[0][0].conv1.stride == (2, 2)  # the stage's first block: the stride
    assert method.branches[0].stages[0] is not method.backbone.stages[2]  # own weights
    three_stage = build({"name": "dks", "model": "resnet8", "branch_blocks": [[1, 1], [1]]}, tiny_task())
    assert three_stage.branch_keys() == ["branch1", "branch2"]


@pytest.mark.parametrize("blocks", [[], [[3, 2]], [[1, 1, 1, 1]], [[0]]])
def test_impossible_branch_blocks_are_refused(blocks):
    with pytest.raises(ConfigError, match="branch_blocks"):
        build({**SMALL, "branch_blocks": blocks}, tiny_task())


def test_a_cut_that_changes_a_stages_output_is_refused():
    """vgg11's fourth stage is [pool, conv 256 -> 512, conv 512 -> 512] (a layer a "block"): cut to one it keeps 256
    channels; the check names the stage instead of failing later in the classifier."""
    with pytest.raises(ConfigError, match="cuts stage 4 of vgg11"):
        build({"name": "dks", "model": "vgg11", "branch_blocks": [[1, 1], [1]]}, tiny_task())


def test_one_step_trains_every_branch():
    task = tiny_task()
    assert_one_step(build(SMALL, task), random_batch(task))


@pytest.mark.parametrize("options", [{}, {"temperature": 2.0, "ce_weight": 0.5, "synergy_weight": 3.0}])
def test_loss_is_the_sum_of_ces_and_pairwise_kls(options):
    task = tiny_task()
    torch.manual_seed(0)
    method = spread_classifiers(build({**SMALL, **options}, task)).eval()
    batch = random_batch(task)
    with torch.no_grad():
        out = method(batch)
        logits = method.all_logits(batch.x)
    o = method.options
    assert len(logits) == 3
    ce, synergy = expected_terms(logits, batch.y, o.temperature)
    assert float(out.logs["ce"]) == pytest.approx(float(ce), rel=1e-5)
    assert float(out.logs["synergy"]) == pytest.approx(float(synergy), rel=1e-5)
    assert float(out.loss) == pytest.approx(float(o.ce_weight * ce + o.synergy_weight * synergy), rel=1e-5)
    _, other_t = expected_terms(logits, batch.y, 6.0 - o.temperature)  # the check can fail: T = 2 vs 4
    assert float(out.logs["synergy"]) != pytest.approx(float(other_t), rel=1e-2)


def test_synergy_gradient_reaches_each_student_only():
    """With the teachers detached, d/dz_j of the synergy is ``T (softmax(z_j/T) - softmax(z_k/T)) / B`` summed over
    k != j (each ordered pair trains its student only; undetached teachers would double it)."""
    task = tiny_task()
    method = build({**SMALL, "ce_weight": 0.0}, task).train()
    batch = random_batch(task)
    logits = []
    hooks = [method.backbone.head.register_forward_hook(lambda m, i, out: logits.append(out.retain_grad() or out))]
    hooks += [b.register_forward_hook(lambda m, i, out: logits.append(out.retain_grad() or out))
              for b in method.branches]
    method(batch).loss.backward()
    t, n = method.options.temperature, batch.x.shape[0]
    probs = [torch.softmax(z.detach() / t, -1) for z in logits]
    for j, z in enumerate(logits):
        expected = sum(t * (probs[j] - probs[k]) / n for k in range(len(logits)) if k != j)
        torch.testing.assert_close(z.grad, expected, rtol=1e-4, atol=1e-7)


def test_predict_and_export():
    task = tiny_task()
    method = build(SMALL, task).eval()
    x = random_batch(task).x
    assert set(method.predict(x)) == {"net"}
    torch.testing.assert_close(method.export("net")(x), method.predict(x)["net"])
    both = build({**SMALL, "predict_branches": True}, task).eval()
    assert set(both.predict(x)) == {"net", "branch2", "branch3"}
    with pytest.raises(KeyError):
        both.export("branch2")


def test_dks_short_run_on_cifar100(tmp_path):
    summary = cifar100_subset_run({**SMALL, "predict_branches": True}, tmp_path / "run")
    assert set(summary["keys"]) == {"net", "branch2", "branch3"}
    assert all(key["last"]["top1"] >= 0 for key in summary["keys"].values())
