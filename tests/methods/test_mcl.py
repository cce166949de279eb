"""MCL: the loss against its formula written out element by element, the settings that change it, the x4 layout
(shared stem and first stage), logit distillation, positives, and a short run on real CIFAR-100."""
import math

import pytest
import torch
import torch.nn.functional as F

from peerkd.core.errors import ConfigError
from tests.helpers import assert_one_step, build, cifar100_subset_run, random_batch, tiny_task
from tests.helpers import one_torch_thread  # noqa: F401  (autouse: this module's tests on one torch thread)

TASK = tiny_task(num_classes=5)



def paired_batch(seed: int = 0, size: int = 4):
    batch = random_batch(TASK, batch_size=size, seed=seed)
    batch.pair_x = torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(seed + 1))
    batch.pair_index = (batch.index + 1) % TASK.num_train
    return batch


def spread_embeddings(method, seed: int = 0):
    """Projection heads with weights of scale 1 (not PyTorch's 1/sqrt(fan-in)): the peers' embeddings then differ
    enough that the soft terms are not float32 round-off (at PyTorch's scale, soft VCL is about 3e-4)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in method.heads:
            for layer in (head.proj[0], head.proj[2]):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
    return method


def written_out_loss(method, batch, alpha=0.1, gamma=1.0, beta=0.1, lam=1.0, tau=0.1, t=3.0):
    """The module docstring's L by explicit loops over peers, anchors and contrasts (independent of mcl.py's
    tensor form), on the 2B images of anchors and partners."""
    x = torch.cat([batch.x, batch.pair_x])
    y = torch.cat([batch.y, batch.y]).tolist()
    b = len(y)
    logits = [model(x) for model in method.models]
    features = [model.head.features(model.forward_stages(x)[-1]) for model in method.models]
    emb = []
    for head, f in zip(method.heads, features):
        lin1, lin2 = head.proj[0], head.proj[2]
        e = lin2(torch.relu(lin1(f)))
        emb.append(e / e.pow(2).sum(1, keepdim=True).sqrt())
    n = len(emb)
    sim = [[emb[i] @ emb[j].T / tau for j in range(n)] for i in range(n)]

    def contrastive(s):
        total = 0.0
        for a in range(b):
            denominator = sum(torch.exp(s[a, k]) for k in range(b) if k != a)
            positives = [p for p in range(b) if p != a and y[p] == y[a]]
            total = total - sum(s[a, p] - torch.log(denominator) for p in positives) / len(positives)
        return total / b

    def kl(student, teacher):
        q = torch.softmax(teacher.detach() / t, 1)
        return (q * (q.log() - torch.log_softmax(student / t, 1))).sum() / student.shape[0] * t * t

    vcl = sum(contrastive(sim[i][i]) for i in range(n))
    icl = sum(contrastive(sim[i][j]) for i in range(n) for j in range(n) if i != j)
    soft_vcl = sum(kl(sim[i][i], sim[j][j]) for i in range(n) for j in range(n) if i != j)
    soft_icl = sum(kl(sim[i][j], sim[j][i]) for i in range(n) for j in range(n) if i != j)
    ce = sum(F.cross_entropy(z, torch.tensor(y)) for z in logits)
    parts = {"ce": ce, "vcl": vcl, "icl": icl, "soft_vcl": soft_vcl, "soft_icl": soft_icl}
    return ce + alpha * vcl + gamma * soft_vcl + beta * icl + lam * soft_icl, parts


def test_loss_is_the_formula_written_out():
    method = spread_embeddings(build({"name": "mcl", "models": ["resnet8", "resnet8"]}, TASK))  # training mode
    batch = paired_batch()
    out = method(batch)
    expected, parts = written_out_loss(method, batch)
    for name, value in parts.items():
        # abs 1e-6: a KL is a difference of row sums of order log(2B) ~ 2.8, so float32 leaves ~1e-7 absolute
        assert float(out.logs[name]) == pytest.approx(float(value.detach()), rel=1e-5, abs=1e-6), name
    assert float(out.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert float(out.logs["soft_vcl"]) > 1e-3 and float(out.logs["soft_icl"]) > 1e-3


@pytest.mark.parametrize("wrong", [{"tau": 0.2}, {"temperature": 4.0}, {"vcl_weight": 0.2}, {"soft_icl_weight": 0.5}])
def test_a_wrong_setting_breaks_the_formula(wrong):
    torch.manual_seed(0)
    method = spread_embeddings(build({"name": "mcl", "models": ["resnet8", "resnet8"], **wrong}, TASK))
    batch = paired_batch()
    out = method(batch)
    expected, parts = written_out_loss(method, batch)
    same = [float(out.logs[k]) == pytest.approx(float(v.detach()), rel=1e-5, abs=1e-6) for k, v in parts.items()]
    same.append(float(out.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5))
    assert not all(same)


def test_four_peers_share_the_stem_and_first_stage_and_train():
    method = build({"name": "mcl", "models": ["resnet8"] * 4, "shared_stages": 1,
                    "logit_distill": "reference"}, TASK)
    assert len(method.net.trunk_stages) == 1 and len(method.heads) == 4
    assert set(method.predict(torch.randn(2, 3, 32, 32))) == {"peer0", "peer1", "peer2", "peer3", "ensemble"}
    assert_one_step(method, paired_batch())
    assert method.export("peer3")(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_logit_kd_reference_distils_the_last_of_four_peers_only():
    method = build({"name": "mcl", "models": ["resnet8"] * 4, "logit_distill": "reference"}, TASK).eval()
    batch = paired_batch()
    x = torch.cat([batch.x, batch.pair_x])
    logits = [m(x) for m in method.models]
    mean = torch.stack(logits).mean(0)
    t = 3.0
    q = torch.softmax(mean / t, 1)
    expected = (q * (q.log() - torch.log_softmax(logits[-1] / t, 1))).sum(1).mean() * t * t
    expected = expected.detach()
    assert float(method(batch).logs["logit_kd"]) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
    every = build({"name": "mcl", "models": ["resnet8"] * 4, "logit_distill": "all"}, TASK).eval()
    every.load_state_dict(method.state_dict())
    assert float(every(batch).logs["logit_kd"]) > 1.5 * float(expected)


def test_batch_positives_leave_out_anchors_without_one():
    from peerkd.methods.mcl import contrastive_losses

    s = torch.randn(4, 4)
    labels = torch.tensor([0, 0, 1, 2])  # anchors 2 and 3 have no positive
    expected = -sum(s[a, 1 - a] - torch.logsumexp(s[a, [k for k in range(4) if k != a]], 0) for a in (0, 1)) / 2
    assert float(contrastive_losses(s, labels)) == pytest.approx(float(expected), rel=1e-6)
    method = build({"name": "mcl", "models": ["resnet8", "resnet8"], "positives": "batch"}, TASK)
    assert not method.data_request(method.options).class_pairs
    assert math.isfinite(float(method(random_batch(TASK, batch_size=4)).loss.detach()))


def test_bad_layouts_are_refused():
    with pytest.raises(ConfigError, match="shared_stages"):
        build({"name": "mcl", "models": ["resnet8", "wrn16_1"], "shared_stages": 1}, TASK)
    with pytest.raises(ConfigError, match="two peers"):
        build({"name": "mcl", "models": ["resnet8"]}, TASK)


def test_mcl_short_run_on_cifar100(tmp_path):
    summary = cifar100_subset_run({"name": "mcl", "models": ["resnet8", "resnet8"]}, tmp_path / "run")
    assert {"peer0", "peer1", "ensemble"} <= set(summary["keys"]), summary
    assert all(math.isfinite(summary["keys"][k]["last"]["top1"]) for k in ("peer0", "peer1", "ensemble"))


@pytest.mark.parametrize("members", ["grouped", "vmap"])
def test_member_executions_give_the_same_loss(members):
    for layout in ({"models": ["resnet8"] * 2}, {"models": ["resnet8"] * 4, "shared_stages": 1}):
        separate = build({"name": "mcl", **layout}, TASK)
        other = build({"name": "mcl", **layout}, TASK, members=members)
        other.load_state_dict(separate.state_dict())
        batch = paired_batch()
        assert float(other(batch).loss.detach()) == pytest.approx(float(separate(batch).loss.detach()), rel=1e-5)
