"""A user method for peerkd, in its own file: two peers, each trained on its labels and on the other's softened
predictions, with the distillation weight ramped up linearly over the first epochs."""
from dataclasses import dataclass, field

import torch

from peerkd import Method, StepOutput, build_model, hard_ce, kd_kl, register_method


@register_method("my_ml")
class MyMutualLearning(Method):
    """Two peers, CE + a ramped-up KL towards each other (a user method)."""

    @dataclass
    class Options:
        models: list[str] = field(default_factory=lambda: ["resnet8", "resnet8"])  # the two peers
        temperature: float = 3.0  # T of the KL
        rampup_epochs: int = 2  # the KL weight grows from 0 to 1 over these epochs

    def __init__(self, options, task):
        super().__init__(options, task)
        self.peers = torch.nn.ModuleList(build_model(name, task.num_classes) for name in options.models)
        self.register_buffer("kd_weight", torch.zeros(()))  # state lives in the module: checkpoints keep it

    def on_epoch_start(self, epoch, epochs):
        self.kd_weight.fill_(min(1.0, epoch / max(1, self.options.rampup_epochs)))

    def forward(self, batch):
        a, b = (peer(batch.x) for peer in self.peers)
        t = self.options.temperature
        ce = hard_ce(a, batch) + hard_ce(b, batch)
        kd = kd_kl(a, b.detach(), t) + kd_kl(b, a.detach(), t)
        return StepOutput(ce + self.kd_weight * kd, {"ce": ce.detach(), "kd": kd.detach()})

    def predict(self, x):
        a, b = (peer(x) for peer in self.peers)
        return {"peer0": a, "peer1": b, "ensemble": (a.softmax(-1) + b.softmax(-1)).div(2).log()}

