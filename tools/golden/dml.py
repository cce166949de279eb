"""Golden fixture of a widely used PyTorch DML re-implementation, AberHu/Knowledge-Distillation-Zoo (``train_dml.py``
``train()``, ``kd_losses/dml.py``, ``network.py``; Zhang et al., "Deep Mutual Learning", CVPR 2018, published no
PyTorch code): one training step of two ResNet-20 (its ``network.resnet20``, 10 classes) on a batch of 4, with
weights made by ``tests/golden/rule_weights.py`` (net1's under ``net1.``, net2's under ``net2.``), its default
``--lambda_kd 1``: each network's cross-entropy and KL to the other's detached softmax (T = 1, batch mean), and the
gradient of every parameter of both networks (projections, ``tests/golden/network_check.py``).

The step is the reference's own ``train()`` run on a one-batch loader; its losses are read through recording
wrappers around its criteria. ``kd_losses/__init__.py`` imports a ``kdsvd`` module the commit lacks: a stub stands in
for it, and ``torch.autograd.gradcheck.zero_gradients`` (removed from torch, imported by ``kd_losses/bss.py``) is
patched in (DML uses neither); its ``utils.accuracy`` (a logged metric, ``.view`` on a non-contiguous tensor that newer
torch refuses) is replaced by zeros.

    python tools/golden/dml.py --repo /work/.mirror/AberHu+Knowledge-Distillation-Zoo/repo
"""
from __future__ import annotations

import sys
import types

import common
import torch
from networks import shapes_of

from tests.golden.network_check import gradient_projections
from tests.golden.rule_weights import rule_weights

REPOSITORY = "AberHu/Knowledge-Distillation-Zoo"
COMMIT = "65470c846c1300d555815da26999cbe2b51fc815"
FILES = ["train_dml.py", "kd_losses/dml.py", "network.py"]
NUM_CLASSES, BATCH = 10, 4


class Recording(torch.nn.Module):
    """A reference criterion that keeps what it returned."""

    def __init__(self, criterion):
        super().__init__()
        self.criterion, self.values = criterion, []

    def forward(self, *args):
        value = self.criterion(*args)
        self.values.append(value.detach().clone())
        return value


def main():
    args = common.arguments(__doc__.splitlines()[0])
    torch.manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 4, 7, 9])
    arrays = {"batch/x": x, "batch/y": y}
    with common.checkout(args.repo, COMMIT) as root, common.cpu_only():
        sys.modules["torch.autograd.gradcheck"].zero_gradients = lambda inputs: None  # removed from torch (BSS)
        stub = types.ModuleType("kd_losses.kdsvd")
        stub.KDSVD = None
        sys.modules["kd_losses.kdsvd"] = stub
        sys.argv = [sys.argv[0], "--net1_init", "-", "--net2_init", "-", "--data_name", "cifar10", "--net1_name",
                    "resnet20", "--net2_name", "resnet20", "--cuda", "0", "--save_root", str(root / "results")]
        train_dml = common.import_file(root, "train_dml.py")
        train_dml.accuracy = lambda output, target, topk=(1,): [torch.zeros(()) for _ in topk]  # a metric only
        network = common.import_file(root, "network.py")
        nets = {}
        for tag in ("net1", "net2"):
            nets[tag] = network.resnet20(num_class=NUM_CLASSES)
            weights = rule_weights({f"{tag}.{k}": s for k, s in shapes_of(nets[tag])})
            nets[tag].load_state_dict({k[len(tag) + 1:]: v for k, v in weights.items()})
        criterions = {"criterionCls": Recording(torch.nn.CrossEntropyLoss()),
                      "criterionKD": Recording(train_dml.DML())}
        optimizers = {f"optimizer{i}": torch.optim.SGD(nets[f"net{i}"].parameters(), lr=0.1, momentum=0.9,
                                                       weight_decay=1e-4) for i in (1, 2)}
        train_dml.train([(x, y)], nets, optimizers, criterions, epoch=1)
        ce1, ce2 = criterions["criterionCls"].values
        kd1, kd2 = criterions["criterionKD"].values
        arrays.update({"loss/ce1": ce1.reshape(1), "loss/ce2": ce2.reshape(1), "loss/kl1": kd1.reshape(1),
                       "loss/kl2": kd2.reshape(1)})
        grads = {f"{tag}.{k}": p.grad for tag, net in nets.items() for k, p in net.named_parameters()}
        arrays["state/grad_projection/step"] = gradient_projections(grads)
        lambda_kd = train_dml.args.lambda_kd
    case = {"network": "network.py: resnet20(num_class=10), twice", "batch": BATCH, "lambda_kd": lambda_kd,
            "temperature": 1.0, "weights": "tests/golden/rule_weights.py (by name under net1. / net2.)",
            "shapes": shapes_of(nets["net1"]), "gradient_names": list(grads)}
    common.write(args.out, "dml_step", REPOSITORY, COMMIT, FILES, case, arrays)


if __name__ == "__main__":
    main()
