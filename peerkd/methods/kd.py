"""KD: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NIPS workshop 2014.

A student learns from the labels and from a fixed teacher trained earlier (any peerkd run: ``teacher_run`` is its
run folder, ``teacher_key`` the ``predict`` key to export from it, e.g. ``peer0``; empty means that method's default):

    L = (1 - alpha) * CE(z_s, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

(``ce_weight`` replaces the ``1 - alpha``: ``ce_weight: 1, alpha: lambda`` is the ``CE + lambda T^2 KL`` form of KDCL's
eq. 2.)

Readings: the teacher stays in eval mode (BatchNorm uses its running statistics) and receives no gradient; its
weights are part of this method's state, so a checkpoint holds them and a KD run can be evaluated or resumed after
the teacher's run folder is gone (``teacher_model`` records the teacher's architecture for that).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from peerkd.core.errors import ConfigError
from peerkd.losses import hard_ce, kd_kl
from peerkd.core.method import Method, StepOutput
from peerkd.methods.parts.cohort import build_cohort, export_member
from peerkd.core.registry import register_method
from peerkd.models import build_model


@register_method("kd")
class KD(Method):
    """Hinton knowledge distillation from a teacher trained in an earlier peerkd run."""

    @dataclass
    class Options:
        student: str = "resnet32"
        model_options: dict = field(default_factory=dict)  # keyword arguments for the student's factory
        teacher_run: str = ""  # run folder of the trained teacher (required)
        teacher_key: str = ""  # predict key of that run to export as the teacher ("" = its default)
        temperature: float = 4.0  # T; 4 is the common CIFAR choice (Hinton's paper leaves it to the task)
        alpha: float = 0.9  # weight of the distillation term; 0.9 as in the CIFAR KD benchmarks (Tian et al. 2020)
        ce_weight: float | None = None  # weight of CE; None: 1 - alpha (Hinton). KDCL eq. 2: 1, with alpha = lambda
        teacher_model: str = ""  # filled in from the teacher run: its registered architecture
        teacher_model_options: dict = field(default_factory=dict)  # filled in likewise

    def __init__(self, options, task):
        super().__init__(options, task)
        self.student = build_cohort([options.student], task.num_classes, options.model_options)
        if task.restoring and options.teacher_model:
            teacher = build_model(options.teacher_model, task.num_classes, **options.teacher_model_options)
        else:
            teacher = self._load_teacher(options, task)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher

    @staticmethod
    def _load_teacher(options, task):
        from peerkd.training.checkpoint import load_run
        from peerkd.core.errors import RunError

        if not options.teacher_run:
            raise ConfigError("method.teacher_run: KD needs the run folder of a trained teacher")
        if not Path(options.teacher_run).is_dir():
            raise ConfigError(f"method.teacher_run: '{options.teacher_run}' is not a run folder; train the teacher "
                              "first (peerkd train ...) and pass its folder")
        try:
            run = load_run(options.teacher_run, device="cpu")
        except RunError as err:
            raise ConfigError(f"method.teacher_run: {err}") from None
        try:
            teacher = run.method.export(options.teacher_key or None)
        except KeyError as err:
            raise ConfigError(f"method.teacher_key: {err.args[0]}") from None
        spec = getattr(teacher, "peerkd_spec", None)
        if spec is None:  # e.g. CSS's masked networks: the student's checkpoint could not rebuild it by name
            raise ConfigError(f"method.teacher_key: the teacher run exports '{options.teacher_key or 'its default'}' "
                              "as a composite module, not one registered network; name a key that is one")
        if spec["num_classes"] != task.num_classes:
            raise ConfigError(f"method.teacher_run: the teacher predicts {spec and spec['num_classes']} classes, "
                              f"this dataset has {task.num_classes}")
        options.teacher_model, options.teacher_model_options = spec["name"], dict(spec["kwargs"])
        return teacher

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher is fixed: its BatchNorm keeps its running statistics
        return self

    def forward(self, batch) -> StepOutput:
        x = batch.view(0)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        student_logits = self.student[0](x)
        ce = hard_ce(student_logits, batch)
        kl = kd_kl(student_logits, teacher_logits, self.options.temperature)
        ce_weight = 1 - self.options.alpha if self.options.ce_weight is None else self.options.ce_weight
        loss = ce_weight * ce + self.options.alpha * kl
        return StepOutput(loss, {"ce": ce.detach(), "kl": kl.detach()})

    def predict(self, x):
        return {"student": self.student[0](x), "teacher": self.teacher(x)}

    def export(self, key=None):
        if key in (None, "student"):
            return export_member(self.student, "peer0")
        raise KeyError(f"cannot export '{key}': KD exports 'student'")
