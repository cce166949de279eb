"""The statistics of ``peerkd report``: a bootstrap confidence interval of a cell over seeds, the paired comparison
of two configs on matched seeds, and the ranking of several configs (Friedman test, Nemenyi post-hoc, the
critical-difference plot). Every distribution comes from scipy (``scipy.stats.bootstrap``, ``wilcoxon``,
``ttest_rel``, ``friedmanchisquare``, ``studentized_range``); nothing here is a hand-written distribution.

Protocol, stated in every report that prints these numbers (:data:`CI_METHOD`):

- **confidence interval**: 95 %, bias-corrected and accelerated (BCa) bootstrap of the cell's statistic (the mean,
  or the median under a paper's ``median_of``) over seeds, :data:`RESAMPLES` resamples drawn from a generator seeded
  with :data:`BOOTSTRAP_SEED`, so a report is the same every time. Fewer than :data:`MIN_SEEDS_FOR_CI` seeds give no
  interval (with 1 there is nothing to resample; with 2 every resample is one of 3 means and the "interval" is just
  the two values); seeds that all agree give the point itself. Even with 3-5 seeds a bootstrap interval is narrow
  for its nominal 95 % (it cannot see beyond the values it has): read it as a description, not a guarantee.
- **paired comparison** (``--compare A B``): runs of A and B with the same seed are a pair (the same initialisation
  seed and, when their ``data`` sections agree, the same data order); the statistic is the mean of the per-seed
  differences B - A, its bootstrap CI as above, and two tests of "no difference": the Wilcoxon signed-rank test
  (two-sided, exact for small n; zero differences dropped) and the paired t-test. Seeds only one side has are listed
  as unpaired and enter nothing.
- **ranking** (``--rank``): configs x seeds common to all of them (a seed is a block); ranks within each seed (1 =
  best, ties averaged), the Friedman test over the blocks, and the Nemenyi critical difference
  ``CD = q_alpha(k, inf) / sqrt(2) * sqrt(k (k + 1) / (6 N))`` (Demšar 2006) with ``q`` the studentized range
  quantile: two configs whose mean ranks differ by less than CD are not told apart at alpha = 0.05.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path
from typing import Mapping, Sequence

from peerkd.experiments.aggregate import ReportError

CONFIDENCE = 0.95  # two-sided level of every interval and 1 - alpha of every test
RESAMPLES = 9999  # bootstrap resamples (scipy's default; enough for a stable 2.5 % quantile)
BOOTSTRAP_SEED = 0  # the bootstrap's generator seed: the same runs give the same interval every time
MIN_SEEDS_FOR_CI = 3  # fewer values than this give no interval (see the module docstring)
CI_METHOD = (f"95 % CI: BCa bootstrap over seeds, {RESAMPLES} resamples, seed {BOOTSTRAP_SEED}; "
             f"none below {MIN_SEEDS_FOR_CI} seeds")
# the direction in which a metric is better (peerkd.metrics: top-1/top-5 in %, the rest are errors or costs);
# agreement and diversity have none, so they are not ranked
HIGHER_IS_BETTER = {"top1": True, "top5": True, "error": False, "top5_error": False, "nll": False, "ece": False,
                    "aurc": False, "eaurc": False}


class StatisticsUnavailable(ReportError):
    """scipy is not installed (``pip install 'peerkd[stats]'``): a report error, one line, exit 2."""


def _scipy_stats():
    try:
        import scipy.stats
    except ImportError:
        raise StatisticsUnavailable("the report's statistics need scipy: pip install 'peerkd[stats]'") from None
    return scipy.stats


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def bootstrap_ci(values: Sequence[float], statistic: str = "mean") -> tuple[float, float] | None:
    """The :data:`CONFIDENCE` BCa bootstrap interval of ``statistic`` ("mean" or "median") of ``values``; None below
    :data:`MIN_SEEDS_FOR_CI` values; ``(v, v)`` when every value is ``v``."""
    import numpy as np

    if len(values) < MIN_SEEDS_FOR_CI:
        return None
    data = np.asarray(values, dtype=float)
    if np.all(data == data[0]):
        return float(data[0]), float(data[0])
    stats = _scipy_stats()
    seeded = {"rng": BOOTSTRAP_SEED} if "rng" in inspect.signature(stats.bootstrap).parameters else {
        "random_state": BOOTSTRAP_SEED}  # scipy < 1.15 names the seed random_state
    result = stats.bootstrap((data,), np.median if statistic == "median" else np.mean, n_resamples=RESAMPLES,
                             confidence_level=CONFIDENCE, method="BCa", **seeded)
    low, high = _finite(result.confidence_interval.low), _finite(result.confidence_interval.high)
    return None if low is None or high is None else (low, high)


# ------------------------------------------------------------------------------------------- paired comparison

@dataclasses.dataclass
class Paired:
    """B - A on the seeds both have."""

    seeds: list[int]  # the paired seeds, sorted
    a: list[float]
    b: list[float]
    only_a: list[int]  # seeds of A without a run of B: reported, not tested
    only_b: list[int]
    ci: tuple[float, float] | None
    wilcoxon_p: float | None
    t_p: float | None

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def differences(self) -> list[float]:
        return [y - x for x, y in zip(self.a, self.b)]

    @property
    def mean_difference(self) -> float | None:
        return sum(self.differences) / self.n if self.n else None


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> Paired:
    """Pair ``a`` and ``b`` (seed -> value) on their common seeds and test B - A: the mean difference, its bootstrap
    CI, the two-sided Wilcoxon signed-rank p-value and the paired t-test p-value (None where undefined: fewer than 2
    pairs, or every difference zero)."""
    seeds = sorted(set(a) & set(b))
    xs, ys = [float(a[s]) for s in seeds], [float(b[s]) for s in seeds]
    differences = [y - x for x, y in zip(xs, ys)]
    wilcoxon_p = t_p = None
    if len(seeds) >= 2 and any(d != 0 for d in differences):
        stats = _scipy_stats()
        wilcoxon_p = _finite(stats.wilcoxon(ys, xs).pvalue)
        t_p = _finite(stats.ttest_rel(ys, xs).pvalue)
    return Paired(seeds, xs, ys, sorted(set(a) - set(b)), sorted(set(b) - set(a)), bootstrap_ci(differences),
                  wilcoxon_p, t_p)


# ----------------------------------------------------------------------------------------------------- ranking

@dataclasses.dataclass
class Ranking:
    """Configs ranked over seeds (blocks) by one metric."""

    names: list[str]  # the configs, best mean rank first
    mean_ranks: list[float]  # in the order of ``names`` (1 = best)
    means: list[float]  # each config's mean of the metric over the blocks
    seeds: list[int]  # the blocks
    friedman_statistic: float | None
    friedman_p: float | None
    critical_difference: float

    def tied_with(self, i: int) -> list[str]:
        """The configs whose mean rank is within the critical difference of config ``i`` (itself excluded)."""
        return [n for j, n in enumerate(self.names)
                if j != i and abs(self.mean_ranks[j] - self.mean_ranks[i]) < self.critical_difference]


def nemenyi_critical_difference(k: int, n: int, alpha: float = 1 - CONFIDENCE) -> float:
    """Demšar's (2006) critical difference of mean ranks for ``k`` configs over ``n`` blocks, from scipy's
    studentized range distribution with infinite degrees of freedom."""
    q = _scipy_stats().studentized_range.ppf(1 - alpha, k, math.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6.0 * n)))


def rank(values: Mapping[str, Mapping[int, float]], higher_is_better: bool) -> Ranking:
    """Rank the configs of ``values`` (config -> seed -> value) on the seeds all of them have; ``ValueError`` when
    fewer than 3 configs or 2 common seeds are left (Friedman's test needs both)."""
    import numpy as np

    names = list(values)
    seeds = sorted(set.intersection(*(set(v) for v in values.values()))) if values else []
    if len(names) < 3:
        raise ValueError(f"a ranking needs at least 3 configs, got {len(names)}; compare two with --compare A B")
    if len(seeds) < 2:
        raise ValueError(f"a ranking needs at least 2 seeds common to all {len(names)} configs, got "
                         f"{len(seeds)}")
    stats = _scipy_stats()
    table = np.array([[values[name][s] for name in names] for s in seeds], dtype=float)  # blocks x configs
    ranks = np.vstack([stats.rankdata(-row if higher_is_better else row) for row in table])
    mean_ranks = ranks.mean(axis=0)
    if np.all(table == table[:, :1]):  # every config scores alike in every block: nothing to test
        statistic = p = None
    else:
        result = stats.friedmanchisquare(*table.T)
        statistic, p = _finite(result.statistic), _finite(result.pvalue)
    order = np.argsort(mean_ranks, kind="stable")
    return Ranking([names[i] for i in order], [float(mean_ranks[i]) for i in order],
                   [float(table[:, i].mean()) for i in order], seeds, statistic, p,
                   nemenyi_critical_difference(len(names), len(seeds)))


def cd_plot(ranking: Ranking, path: str | Path, title: str) -> Path:
    """Demšar's critical-difference diagram: the mean-rank axis (1 = best, at the left), each config at its mean
    rank, the CD as a bar, and a thick line joining configs that the Nemenyi test does not tell apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(ranking.names)
    half = (k + 1) // 2
    fig, ax = plt.subplots(figsize=(7.0, 1.6 + 0.3 * half))
    ax.set_xlim(0.5, k + 0.5)
    ax.set_ylim(-(half + 1.5), 2.0)
    ax.axis("off")
    ax.hlines(0, 1, k, color="black", lw=1)
    for r in range(1, k + 1):
        ax.vlines(r, 0, 0.15, color="black", lw=1)
        ax.text(r, 0.3, str(r), ha="center", fontsize=8)
    cd = ranking.critical_difference
    ax.hlines(1.3, 1, 1 + cd, color="black", lw=2)
    ax.text(1 + cd / 2, 1.5, f"CD = {cd:.2f}", ha="center", fontsize=8)
    for i, (name, r) in enumerate(zip(ranking.names, ranking.mean_ranks)):
        left = i < half
        level = -(i + 1 if left else k - i) - 0.3
        edge = 0.6 if left else k + 0.4
        ax.plot([r, r, edge], [0, level, level], color="tab:blue", lw=1)
        ax.text(edge + (-0.05 if left else 0.05), level, f"{name} ({r:.2f})", ha="right" if left else "left",
                va="center", fontsize=8)
    cliques = []  # maximal runs of configs (in rank order) whose extreme ranks differ by less than CD
    for i in range(k):
        j = max(j for j in range(i, k) if ranking.mean_ranks[j] - ranking.mean_ranks[i] < cd)
        if j > i and not any(a <= i and j <= b for a, b in cliques):
            cliques.append((i, j))
    for depth, (i, j) in enumerate(cliques):
        y = -0.3 - 0.2 * depth  # below the axis, one level per clique
        ax.hlines(y, ranking.mean_ranks[i] - 0.03, ranking.mean_ranks[j] + 0.03, color="black", lw=4)
    p = "—" if ranking.friedman_p is None else f"{ranking.friedman_p:.3g}"
    ax.set_title(f"{title}\nFriedman p = {p}, Nemenyi alpha = {1 - CONFIDENCE:.2f}, "
                 f"{len(ranking.seeds)} seeds", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
