"""DML: Deep Mutual Learning. Zhang, Xiang, Hospedales, Lu, "Deep Mutual Learning", CVPR 2018.

N peers trained together; each learns from the labels and from the others' predictions:

    L_i = CE(z_i, y) + w * 1/(N-1) * sum_{j != i} T^2 * KL(softmax(z_j / T) || softmax(z_i / T)),   L = sum_i L_i

Readings: the peers' targets are detached (each peer's loss trains that peer only, as in the paper's alternating
update, here done simultaneously in one step as in most later code); the KL to the other peers is averaged, as in
the paper's eq. 10 for N > 2; the temperature ``T`` (the paper uses T = 1) and the ``T^2`` factor follow the
online-KD papers that use DML as a baseline (T = 3). With ``views > 1`` (ICL-style) peer i trains on view i.
"""
from __future__ import annotations

from dataclasses import dataclass, field


from peerkd.losses import hard_ce, kd_kl
from peerkd.core.method import DataRequest, StepOutput
from peerkd.methods.parts.cohort import CohortMethod, build_cohort, run_cohort
from peerkd.core.registry import register_method


@register_method("dml")
class DML(CohortMethod):
    """Deep Mutual Learning (Zhang et al. 2018): peers distil from each other's softened predictions."""

    @dataclass
    class Options:
        models: list[str] = field(default_factory=lambda: ["resnet32", "resnet32"])  # the peers, 2 or more
        model_options: dict = field(default_factory=dict)  # keyword arguments for every model's factory
        temperature: float = 3.0  # softening T of both sides of the KL (the CSS/MDE tables' DML setting)
        kl_weight: float = 1.0  # w: weight of the mutual term relative to CE (1 in the paper)
        separate_views: bool = False  # True: each peer sees its own augmentation of the batch (asks N views)

    def __init__(self, options, task):
        super().__init__(options, task)
        if len(options.models) < 2:
            from peerkd.core.errors import ConfigError
            raise ConfigError("method.models: DML needs at least two peers")
        self.models = build_cohort(options.models, task.num_classes, options.model_options)

    @classmethod
    def data_request(cls, options):
        return DataRequest(views=len(options.models) if options.separate_views else 1)

    def forward(self, batch) -> StepOutput:
        n = len(self.models)
        inputs = batch.x[:n] if self.options.separate_views else batch.view(0)
        logits = run_cohort(self.models, inputs)
        total, logs = 0.0, {}
        for i, z in enumerate(logits):
            ce = hard_ce(z, batch)
            mutual = sum(kd_kl(z, logits[j].detach(), self.options.temperature) for j in range(n) if j != i) / (n - 1)
            total = total + ce + self.options.kl_weight * mutual
            logs[f"ce{i}"], logs[f"kl{i}"] = ce.detach(), mutual.detach()
        return StepOutput(total, logs)
