"""The reliability diagram of a finished run. matplotlib is optional: it is imported inside the function that draws.

``reliability_diagram(run_dir)`` writes the reliability diagram (accuracy against confidence in equal-width bins,
the bins of the ECE in :mod:`peerkd.metrics`) of one ``predict`` key of a run on its test set, as a PNG.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from peerkd.core.run_files import reliability_plot
from peerkd.metrics import ECE_BINS


@dataclass
class ReliabilityBins:
    """Per equal-width confidence bin ``(lo, hi]``: image count, mean accuracy and mean confidence (0 where empty)."""

    edges: torch.Tensor  # (bins + 1,) from 0 to 1
    counts: torch.Tensor  # (bins,) int64
    accuracy: torch.Tensor  # (bins,) float64, fraction correct
    confidence: torch.Tensor  # (bins,) float64, mean top-1 probability

    @property
    def ece(self) -> float:
        """``sum_b |B_b|/N |acc_b - conf_b|`` as a fraction (the metrics report it in percent)."""
        total = self.counts.sum().clamp_min(1)
        return float((self.counts / total * (self.accuracy - self.confidence).abs()).sum())


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> ReliabilityBins:
    """Bin images by top-1 confidence into ``bins`` equal-width bins ``(lo, hi]`` (a confidence of 0 goes to the
    first), as :func:`peerkd.metrics.expected_calibration_error` does."""
    confidence, correct = confidence.double().cpu(), correct.double().cpu()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.bucketize(confidence, edges[1:-1], right=False)
    counts = torch.bincount(which, minlength=bins)
    safe = counts.clamp_min(1).double()
    accuracy = torch.bincount(which, weights=correct, minlength=bins) / safe
    mean_conf = torch.bincount(which, weights=confidence, minlength=bins) / safe
    return ReliabilityBins(edges, counts, accuracy, mean_conf)


@torch.no_grad()
def _test_predictions(run, key: str | None, data_dir: str | None, device: str):
    from peerkd.config import build_config
    from peerkd.data.pipeline import build_loaders

    overrides = [f"data.root={data_dir}"] if data_dir else []
    config = build_config(run.config.to_dict(), overrides)
    request = type(run.method).data_request(config.method.options)
    loaders = build_loaders(config.data, request, seed=config.seed, device=torch.device(device), channels_last=False)
    confidence, correct = [], []
    chosen = key
    for batch in loaders.test:
        predictions = run.method.predict(batch.x)
        if chosen is None:
            chosen = "ensemble" if "ensemble" in predictions else next(iter(predictions))
        if chosen not in predictions:
            raise KeyError(f"no prediction '{chosen}' in this run; its keys are {', '.join(predictions)}")
        conf, pred = F.softmax(predictions[chosen].float(), dim=-1).max(-1)
        confidence.append(conf.cpu())
        correct.append((pred == batch.y).cpu())
    return chosen, torch.cat(confidence), torch.cat(correct)


def reliability_diagram(run_dir: str | Path, out: str | Path | None = None, key: str | None = None,
                        data_dir: str | None = None, device: str = "cpu", bins: int | None = None) -> Path:
    """Draw the reliability diagram of ``predict`` key ``key`` (default: ``ensemble`` when the method has one, else
    its first key) of the run in ``run_dir`` on its test set and write it as a PNG to ``out`` (default
    ``<run_dir>/reliability_<key>.png``) with ``bins`` bins (default: the run's ``trainer.ece_bins``, as its ECE).
    Returns the PNG's path. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("the reliability diagram needs matplotlib: pip install matplotlib") from None
    from peerkd.training.checkpoint import load_run

    run = load_run(run_dir, device=device)
    bins = bins or run.config.trainer.ece_bins  # the run's own ECE bins unless asked otherwise
    key, confidence, correct = _test_predictions(run, key, data_dir, device)
    binned = reliability_bins(confidence, correct, bins)
    out = Path(out) if out else Path(run_dir) / reliability_plot(key)

    lefts = binned.edges[:-1].numpy()
    width = 1.0 / bins
    filled = (binned.counts > 0).numpy()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.bar(lefts[filled], binned.accuracy.numpy()[filled], width=width, align="edge", color="#4878d0",
           edgecolor="black", linewidth=0.5, label="accuracy")
    gap_low = torch.minimum(binned.accuracy, binned.confidence).numpy()[filled]
    gap = (binned.accuracy - binned.confidence).abs().numpy()[filled]
    ax.bar(lefts[filled], gap, bottom=gap_low, width=width, align="edge", color="#ee854a", alpha=0.5,
           edgecolor="#c44e52", hatch="//", linewidth=0.5, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    accuracy = 100.0 * float(correct.double().mean())
    ax.set_title(f"{run.config.name} / {key}\ntop-1 {accuracy:.2f} %, ECE {100.0 * binned.ece:.2f} % ({bins} bins)",
                 fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out
