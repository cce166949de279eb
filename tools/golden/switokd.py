"""Golden fixtures of SwitOKD, hfutqian/SwitOKD (Qian et al., "Switchable Online Knowledge Distillation", ECCV 2022):

- ``switokd_networks``: the CIFAR-100 folder's two networks (``models/wrnet.py`` ``wrnet16``: WRN-16-2 as meliketoy
  builds it; ``models/mobilenetv2.py`` ``mobile_half``), the CIFAR-10 folder's WRN-16-1 (``wrnet16_1.py``) and the
  multi-network folder's WRN-16-10 (``wrnet2.py``) and MobileNet (``mobilenet.py``, v1): names,
  shapes, parameter count, training- and evaluation-mode logits and CE gradients with weights made by
  ``tests/golden/rule_weights.py`` (``tools/golden/networks.py``).
- ``switokd_1t1s``: the CIFAR-100 code's own ``train()`` (``SwitOKD_code/CIFAR-100/WRN16-2_0.5mobilenetv2/main.py``)
  run for STEPS steps on a loader of batches of BATCH, its teacher ``wrnet.wrnet16()`` (WRN-16-2) and as the student
  the same file's network at width 1 (``wrnet.Wide_ResNet(16, 1, 0.3, 100)``) instead of ``mobile_half``: with
  rule-made weights and batches of 4, MobileNetV2's BatchNorms over 2x2 maps make its gradients (norm up to 450)
  amplify float32 round-off 100-fold per step (measured: after one step the code's and peerkd's weights agree to
  1e-7, the next step's gradients to 1.5e-5, the third's to 1e-3, peerkd stepped by plain torch SGDs alike), so a
  trajectory cannot be held to 1e-5; MobileNetV2 itself is held by ``switokd_networks``. Weights rule-made (under
  ``model.`` / ``model_ks2.``), each classifier's weight and bias multiplied by LOGIT_SCALE (confident networks, so
  the modes can be steered); the optimisers of the script's ``__main__`` (SGD momentum 0.9, weight decay 5e-4,
  per-parameter groups, teacher lr 0.1, student 0.01). The labels of each batch are chosen when the
  loader is asked for it, from the networks as they are then (a deep copy in training mode): the teacher's arg-max on
  even steps (a confident, correct teacher and a confidently wrong student: expert mode), the student's on odd steps
  (learning mode), so both modes occur. Recorded at each step (read from ``train``'s frame when it calls the
  student's ``optimizer_ks2.step()``): ``s_label``, ``t_label``, ``ps_pt``, ``epsilon``, ``delta``, whether the
  teacher's ``optimizer.step()`` ran (the mode), the losses, every gradient (projections,
  ``tests/golden/network_check.py``); after the last step, every parameter and BN statistic (projections): the whole
  trajectory, the paused teacher's skipped update included. The images are not stored: batch k is ``torch.randn``
  from a generator seeded 100 + k (``tools/golden/networks.py`` ``batch``), its per-image sums kept as a check (as
  the weights, a deterministic rule of torch's CPU generator).
- ``switokd_1t2s`` / ``switokd_2t1s``: the multi-network files' ``train()`` (``SwitOKD_code/multi-net results
  (table 7)/{1T2S,2T1S}/CIFAR_100_wrn16-10_wrn16-2_mobilenet/main.py``) the same way, with the folder's own
  ``wrnet.Wide_ResNet(16, 1, 0.3, 100)`` for all three networks (its WRN-16-10, WRN-16-2 and MobileNet: the
  topology's losses, weights and switches are what is held), and SGD (lr 0.1, 0.1, 0.01, momentum 0.9, weight
  decay 5e-4) for all three: the code's Adam for the MobileNet is a deviation peerkd's one SGD cannot follow (said in
  peerkd/methods/switokd.py), so the golden case replaces it to hold the rest over several steps.

    python tools/golden/switokd.py --repo /work/.mirror/hfutqian+SwitOKD/repo
"""
from __future__ import annotations

import copy
import sys

import common
import torch
from networks import batch, network_case, shapes_of

from tests.golden.network_check import gradient_projections
from tests.golden.rule_weights import rule_weights

REPOSITORY = "hfutqian/SwitOKD"
COMMIT = "a3f9623b9ae65823d39f4a087421a1655d21909a"
C100 = "SwitOKD_code/CIFAR-100/WRN16-2_0.5mobilenetv2"
C10 = "SwitOKD_code/CIFAR-10/WRN-16-1_8"
MULTI = "SwitOKD_code/multi-net results (table 7)/{}/CIFAR_100_wrn16-10_wrn16-2_mobilenet"
CODE = ["SwitOKD_code/CIFAR-100", "SwitOKD_code/CIFAR-10", "SwitOKD_code/multi-net results (table 7)"]  # the
# mirror lacks the large images; only the code is checked out
BATCH, STEPS, LOGIT_SCALE = 4, 3, 4.0
CLASSIFIERS = ("linear.", "classifier.")  # the reference's final layers (wrnet, mobilenetv2)


def made_weights(net: torch.nn.Module, tag: str) -> dict[str, torch.Tensor]:
    """Rule weights under ``tag.``, the classifier's weight and bias times LOGIT_SCALE (the test does the same)."""
    weights = rule_weights({f"{tag}.{k}": s for k, s in shapes_of(net)})
    for name in weights:
        if name[len(tag) + 1:].startswith(CLASSIFIERS):
            weights[name] = weights[name] * LOGIT_SCALE
    net.load_state_dict({k[len(tag) + 1:]: v for k, v in weights.items()})
    return weights


class SteeredLoader:
    """Batch k: fixed images, labels the arg-max of network ``label_from[k % len]`` as it is when asked."""

    def __init__(self, nets: dict, label_from: list[str]):
        self.nets, self.label_from, self.batches = nets, label_from, []

    def __iter__(self):
        for k in range(STEPS):
            x = batch(BATCH, seed=100 + k)
            with torch.no_grad():
                y = copy.deepcopy(self.nets[self.label_from[k % len(self.label_from)]]).train()(x).argmax(1)
            self.batches.append((x, y))
            yield x, y

    def __len__(self):
        return STEPS


class Recorder:
    """Wraps an optimiser's ``step``; the one named ``trigger`` records, at each of its calls, the listed locals of
    the calling ``train`` frame, the gradients of ``nets`` and which optimisers stepped since the last record."""

    def __init__(self, nets: dict, names: list[str]):
        self.nets, self.names, self.records, self.stepped = nets, names, [], set()

    def wrap(self, optimizer, tag: str, trigger: bool):
        step = optimizer.step

        def recorded_step(*args, **kwargs):
            if trigger:
                frame = sys._getframe(1)
                values = {n: frame.f_locals[n].detach().clone() for n in self.names if n in frame.f_locals}
                grads = {f"{t}.{k}": p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                         for t, net in self.nets.items() for k, p in net.named_parameters()}
                self.records.append((values, grads, sorted(self.stepped | {tag})))
                self.stepped = set()
            else:
                self.stepped.add(tag)
            return step(*args, **kwargs)

        optimizer.step = recorded_step


def sgd(net, lr):
    return torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def final_projections(nets: dict) -> torch.Tensor:
    return gradient_projections({f"{t}.{k}": v.float() for t, net in nets.items()
                                 for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")})


def run_case(args, name: str, folder: str, build, lrs: dict, label_from: list[str], names: list[str],
             trigger: str, case: dict) -> None:
    """Run ``folder``'s ``train(1)`` with the networks ``build(root)`` (globals of its main.py) and write ``name``."""
    with common.checkout(args.repo, COMMIT, CODE) as root, common.cpu_only():
        sys.path.insert(0, str(root / folder))
        try:
            main = common.import_file(root, f"{folder}/main.py", f"switokd_{name}_main")
            nets = build(root)
        finally:
            sys.path.remove(str(root / folder))
        weights = {}
        for tag, net in nets.items():
            weights.update(made_weights(net, tag))
            setattr(main, tag, net)
        recorder = Recorder(nets, names)
        for tag, net in nets.items():
            optimizer = sgd(net, lrs[tag])
            recorder.wrap(optimizer, tag, trigger=tag == trigger)
            setattr(main, {"model": "optimizer", "model2": "optimizer2", "model_ks2": "optimizer_ks2"}[tag], optimizer)
        main.criterion = torch.nn.CrossEntropyLoss()
        main.trainloader = SteeredLoader(nets, label_from)
        main.train(1)
        arrays = {}
        for k, ((x, y), (values, grads, stepped)) in enumerate(zip(main.trainloader.batches, recorder.records)):
            arrays[f"batch/y{k}"] = y  # the images are batch(BATCH, seed=100 + k): their sums are kept as a check
            arrays[f"batch/x{k}_sums"] = x.double().sum(dim=(1, 2, 3))
            for n, v in values.items():
                arrays[f"state/step{k}/{n}"] = v.reshape(1)
            arrays[f"state/step{k}/stepped"] = torch.tensor([int(t in stepped) for t in nets])
            arrays[f"state/grad_projection/step{k}"] = gradient_projections(grads)
        arrays["state/final_projection"] = final_projections(nets)
        modes = [[int(t in s) for t in nets] for _, _, s in recorder.records]
        print(f"{name}: stepped per step {modes}")
    case = {**case, "batch": BATCH, "images": "torch.randn(BATCH, 3, 32, 32) from a Generator seeded 100 + step",
            "steps": STEPS, "logit_scale": LOGIT_SCALE, "labels_from": label_from,
            "networks": list(nets), "lrs": lrs, "momentum": 0.9, "weight_decay": 5e-4,
            "weights": "tests/golden/rule_weights.py by name under <network>., classifiers x logit_scale",
            "shapes": {t: shapes_of(net) for t, net in nets.items()}, "gradient_names": list(grads),
            "final_names": [f"{t}.{k}" for t, net in nets.items() for k in net.state_dict()
                            if not k.endswith("num_batches_tracked")], "recorded": names}
    common.write(args.out, name, REPOSITORY, COMMIT, [f"{folder}/main.py"], case, arrays)


def networks_fixture(args) -> None:
    torch.manual_seed(0)
    x = batch(4)
    case = {"batch": 4, "size": 32, "weights": "tests/golden/rule_weights.py (by name)", "networks": {}}
    arrays = {"batch/x": x}
    with common.checkout(args.repo, COMMIT, CODE) as root, common.cpu_only():
        wrnet = common.import_file(root, f"{C100}/models/wrnet.py", "switokd_wrnet")
        mobile = common.import_file(root, f"{C100}/models/mobilenetv2.py", "switokd_mobilenetv2")
        wrn16_1 = common.import_file(root, f"{C10}/models/wrnet16_1.py", "switokd_wrnet16_1")
        multi = MULTI.format("1T2S")
        wrn16_10 = common.import_file(root, f"{multi}/models/wrnet2.py", "switokd_wrnet2")
        mobilenet = common.import_file(root, f"{multi}/models/mobilenet.py", "switokd_mobilenet")
        for tag, reference, model in (("wrn16_2_meliketoy", f"{C100}/models/wrnet.py:wrnet16", wrnet.wrnet16()),
                                      ("mobilenetv2_half", f"{C100}/models/mobilenetv2.py:mobile_half",
                                       mobile.mobile_half(100)),
                                      ("wrn16_1_meliketoy", f"{C10}/models/wrnet16_1.py:wrnet16", wrn16_1.wrnet16()),
                                      ("wrn16_10_meliketoy", f"{multi}/models/wrnet2.py:wrnet16", wrn16_10.wrnet16()),
                                      ("mobilenet_cifar", f"{multi}/models/mobilenet.py:MobileNet",
                                       mobilenet.MobileNet())):
            entry, out = network_case(tag, model, x, gradients=True)
            case["networks"][tag] = {"reference": reference, **entry}
            arrays.update(out)
            print(f"{tag}: {entry['parameters']:,} parameters")
    files = [f"{C100}/models/wrnet.py", f"{C100}/models/mobilenetv2.py", f"{C10}/models/wrnet16_1.py",
             f"{MULTI.format('1T2S')}/models/wrnet2.py", f"{MULTI.format('1T2S')}/models/mobilenet.py"]
    common.write(args.out, "switokd_networks", REPOSITORY, COMMIT, files, case, arrays)


def main():
    args = common.arguments(__doc__.splitlines()[0])
    torch.manual_seed(0)
    torch.set_num_threads(1)  # one reduction order: the test runs one thread too (tests/golden/test_switokd.py)
    networks_fixture(args)

    def two(root):
        from models import wrnet
        return {"model": wrnet.wrnet16(), "model_ks2": wrnet.Wide_ResNet(16, 1, 0.3, 100)}

    run_case(args, "switokd_1t1s", C100, two, {"model": 0.1, "model_ks2": 0.01}, ["model", "model_ks2"],
             ["s_label", "t_label", "ps_pt", "epsilon", "delta", "loss_ks2", "loss_full"], "model_ks2",
             {"topology": "1T1S", "teacher": "model: models/wrnet.py wrnet16() (WRN-16-2)",
              "student": "model_ks2: models/wrnet.py Wide_ResNet(16, 1, 0.3, 100)"})

    def three(root):
        from models import wrnet
        return {name: wrnet.Wide_ResNet(16, 1, 0.3, 100) for name in ("model", "model2", "model_ks2")}

    names = ["s_label", "t_label", "ps_pt", "epsilon", "delta", "s_label2", "t_label2", "ps_pt2", "epsilon2",
             "delta2", "loss_full", "loss_full2", "loss_ks2"]
    lrs = {"model": 0.1, "model2": 0.1, "model_ks2": 0.01}
    # 1T2S: teacher model2, students model and model_ks2; labels from the teacher, then from each student
    run_case(args, "switokd_1t2s", MULTI.format("1T2S"), three, lrs, ["model2", "model_ks2", "model"], names,
             "model_ks2", {"topology": "1T2S", "teacher": "model2", "students": ["model", "model_ks2"]})
    # 2T1S: teachers model and model2, student model_ks2
    run_case(args, "switokd_2t1s", MULTI.format("2T1S"), three, lrs, ["model", "model_ks2", "model2"], names,
             "model_ks2", {"topology": "2T1S", "teachers": ["model", "model2"], "student": "model_ks2"})


if __name__ == "__main__":
    main()
