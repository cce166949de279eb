"""Golden fixtures of MCL's authors' code, winycg/MCL (Yang et al., "Mutual Contrastive Learning for Visual
Representation Learning", AAAI 2022): two SGD steps of its CIFAR training on one batch, with its own networks
(``models/resnet.py`` ``resnet32``: ``ResNet_n``, two independent networks, at ``number_net = 2``; ``ResNet_b``, a
shared stem and first stage with four branches, at ``number_net = 4``), its own loss module
(``losses/cifar_sup_mcl_loss.py`` ``Sup_MCL_Loss``: projection heads, VCL, soft VCL, ICL, soft ICL) and its own
``utils.DistillKL`` for the logit distillation, with the options of ``main_cifar.py``'s argparse (its defaults, read
from the file: ``--kd_T 3 --tau 0.1 --feat-dim 128``) and of ``scripts/train_cifar_mcl.sh`` (``--alpha 0.1 --gamma 1.
--beta 0.1 --lam 1.``; the x4 case adds ``--logit-distill`` as ``scripts/train_cifar_mcl_logit.sh`` does).

``main_cifar.py`` runs its training at import (data download, argparse), so the step of its ``train()`` is composed
here from the reference's modules, in its order: ``logits, embeddings = net(x)``; the sum of the peers' CE; the
detached mean logits and ``DistillKL`` into both peers (x2) or the last one (x4); ``Sup_MCL_Loss(embeddings, y)``;
``loss = ce + logit_kd + alpha vcl + gamma soft_vcl + beta icl + lam soft_icl``; ``backward``; its optimiser
(``SGD(momentum=0.9, weight_decay=5e-4, nesterov=True)`` over the network and the heads; its lr 0.1 is
0.001 here: ``LEARNING_RATE``). The batch is
8 images, 4 anchors then their 4 same-class partners (as peerkd's class pairs give them; the reference's sampler gives
every class twice), at 100 classes. Weights are made by ``tests/golden/rule_weights.py`` from the names (under
``net.`` and ``mcl.``); the gradients are stored as projections (``tests/golden/network_check.py``).

    python tools/golden/mcl.py --repo /work/.mirror/winycg+MCL/repo
"""
from __future__ import annotations

import argparse
import re

import common
import torch
from networks import shapes_of

from tests.golden.network_check import gradient_projections
from tests.golden.rule_weights import rule_weights

REPOSITORY = "winycg/MCL"
COMMIT = "236da2f54075119a5bdbac272b0b5011b8ddd4a6"
FILES = ["main_cifar.py", "losses/cifar_sup_mcl_loss.py", "models/resnet.py", "utils.py"]
NUM_CLASSES, ANCHORS = 100, 4
# the optimiser's step size here: main_cifar.py's 0.1 makes the second step's gradients of this rule-weighted 32-layer
# network chaotic (a 1e-7 relative perturbation of the weights moves some by 37 %), so float32 round-off in the first
# update would decide them; at 0.001 the update still moves every weight and BN statistic between the two steps
LEARNING_RATE = 0.001
SCRIPT = ["--alpha", "0.1", "--gamma", "1.", "--beta", "0.1", "--lam", "1."]  # scripts/train_cifar_mcl.sh
CASES = {"x2": (2, False), "x4": (4, True)}  # number_net, --logit-distill


def reference_arguments(root, number_net: int, logit_distill: bool) -> argparse.Namespace:
    """``main_cifar.py``'s own argparse (its ``parser.add_argument`` lines, run alone) on the script's options."""
    lines = [line for line in (root / "main_cifar.py").read_text().splitlines() if line.startswith("parser")]
    scope = {"argparse": argparse}
    exec("\n".join(lines), scope)  # noqa: S102  (the reference's argument definitions, nothing else)
    argv = SCRIPT + ["--number-net", str(number_net)] + (["--logit-distill"] if logit_distill else [])
    return scope["parser"].parse_args(argv)


def run_case(root, name: str, number_net: int, logit_distill: bool, x: torch.Tensor, y: torch.Tensor):
    resnet = common.import_file(root, "models/resnet.py", "mcl_resnet")
    mcl_loss = common.import_file(root, "losses/cifar_sup_mcl_loss.py", "mcl_cifar_sup_mcl_loss")
    utils = common.import_file(root, "utils.py", "mcl_utils")
    args = reference_arguments(root, number_net, logit_distill)
    net = resnet.resnet32(num_classes=NUM_CLASSES, number_net=number_net)
    with torch.no_grad():
        net.eval()
        _, probe = net(torch.zeros(1, 3, 32, 32))
    args.rep_dim = [e.shape[1] for e in probe]
    criterion = mcl_loss.Sup_MCL_Loss(args)
    shapes = [[f"net.{k}", s] for k, s in shapes_of(net)] + \
        [[f"mcl.{k}", s] for k, s in shapes_of(criterion)]
    weights = rule_weights(dict(shapes))
    net.load_state_dict({k[4:]: v for k, v in weights.items() if k.startswith("net.")})
    criterion.load_state_dict({k[4:]: v for k, v in weights.items() if k.startswith("mcl.")})
    params = torch.nn.ModuleList([net, criterion.embed_list])
    optimizer = torch.optim.SGD(params.parameters(), lr=LEARNING_RATE, momentum=0.9, weight_decay=args.weight_decay,
                                nesterov=True)
    kd = utils.DistillKL(args.kd_T)
    arrays = {}
    net.train()
    for step in (1, 2):
        optimizer.zero_grad()
        logits, embeddings = net(x)
        ce = sum(torch.nn.functional.cross_entropy(z, y) for z in logits)
        ensemble = (sum(logits) / len(logits)).detach()
        logit_kd = torch.zeros(())
        if args.logit_distill:
            students = logits if args.number_net == 2 else logits[-1:]
            logit_kd = sum(kd(z, ensemble) for z in students)
        vcl, soft_vcl, icl, soft_icl = criterion(embeddings, y)
        loss = ce + logit_kd + args.alpha * vcl + args.gamma * soft_vcl + args.beta * icl + args.lam * soft_icl
        loss.backward()
        tag = f"{name}/step{step}"
        for part, value in (("ce", ce), ("logit_kd", logit_kd), ("vcl", vcl), ("soft_vcl", soft_vcl),
                            ("icl", icl), ("soft_icl", soft_icl), ("total", loss)):
            arrays[f"loss/{tag}/{part}"] = value.detach().reshape(1).clone()
        arrays[f"outputs/{tag}/logits"] = torch.stack(logits).detach().clone()
        arrays[f"outputs/{tag}/embeddings"] = torch.stack(embeddings).detach().clone()
        grads = {**common.named_grads(net, "net."), **common.named_grads(criterion, "mcl.")}
        arrays[f"state/grad_projection/{tag}"] = gradient_projections(grads)
        optimizer.step()
    running = {k: v for k, v in common.named_state(net, "net.").items() if "running_mean" in k}
    arrays[f"state/{name}/running_mean_norms"] = torch.stack([v.norm() for v in running.values()])
    case = {"number_net": number_net, "network": f"models/resnet.py resnet32(num_classes=100, number_net={number_net})",
            "shapes": shapes, "gradient_names": list(grads), "running_mean_names": list(running),
            "options": {k: getattr(args, k) for k in ("kd_T", "tau", "feat_dim", "alpha", "gamma", "beta", "lam",
                                                        "logit_distill", "weight_decay")},
            "optimizer": "SGD(momentum=0.9, weight_decay=5e-4, nesterov=True), 2 steps on the batch",
            "learning_rate": LEARNING_RATE}
    return case, arrays


def main():
    args = common.arguments(__doc__.splitlines()[0])
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    anchors, partners = torch.randn(ANCHORS, 3, 32, 32, generator=gen), torch.randn(ANCHORS, 3, 32, 32, generator=gen)
    y_anchor = torch.tensor([3, 7, 3, 42])  # class 3 twice: an anchor with three positives among the 8
    x, y = torch.cat([anchors, partners]), torch.cat([y_anchor, y_anchor])
    with common.checkout(args.repo, COMMIT) as root, common.cpu_only():
        for name, (number_net, logit_distill) in CASES.items():
            case, arrays = run_case(root, name, number_net, logit_distill, x, y)
            case.update({"batch": "4 anchors (batch/x[:4]) then their partners (batch/x[4:]); labels batch/y twice",
                         "weights": "tests/golden/rule_weights.py (by name under net. / mcl.)"})
            arrays.update({"batch/x": x, "batch/y": y_anchor})
            common.write(args.out, f"mcl_{name}", REPOSITORY, COMMIT, FILES, case, arrays)
            print(name, {k.split("/")[-1]: round(float(v), 5) for k, v in arrays.items()
                         if re.match(rf"loss/{name}/step1/", k)})


if __name__ == "__main__":
    main()
