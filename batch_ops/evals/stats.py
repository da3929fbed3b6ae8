"""Statistics that survive noise: intervals, epochs and pass@k, paired comparisons, the regression gate.

Everything here is plain Python on lists of per-item scores in 0..1 (no numpy: the core stays
light), with the formulas written out so a reader can check them by hand:

* **stderr interval** — ``mean ± z · s / √n`` with ``s`` the sample standard deviation (n - 1) and
  ``z`` = 1.95996 for 95 % (normal approximation; as inspect_ai's ``stderr``), clipped to 0..1.
* **clustered stderr** — items in the same cluster (a metadata key: a source document, a template)
  are not independent: ``se = √(C/(C-1) · Σ_c (Σ_{i∈c} (x_i - mean))²) / n`` over C clusters (the
  sandwich estimator with a finite-cluster correction, as inspect_ai's ``stderr(cluster=…)``).
* **bootstrap** — the 2.5th and 97.5th percentiles of ``resamples`` means of samples drawn with
  replacement, from ``random.Random(seed)``: the same seed gives the same interval.
* **pass@k** — with n samples of an item of which c pass, ``1 - C(n-c, k) / C(n, k)``: the unbiased
  estimator of the chance that at least one of k samples passes (Chen et al., 2021).
* **paired comparison** — two runs (or two models) scored the same items: the mean of the per-item
  differences, its stderr ``s_d / √n``, the interval and a two-sided p-value (normal). Pairing removes
  the item-difficulty variance a comparison of two unpaired means would carry.
* **gate** — a model fails the gate only when its drop against the reference is *significant*
  (``p < alpha``) **and** at least ``min_drop``; noise of the same mean does not fail it, and a
  drop too small to matter does not either.

Examples:
    >>> a = mean_interval([1, 1, 1, 0])
    >>> a.mean, round(a.stderr, 6), (round(a.ci_low, 4), round(a.ci_high, 4))
    (0.75, 0.25, (0.26, 1.0))
    >>> pass_at_k(n=5, c=2, k=2)
    0.7
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

from batch_ops.errors import ConfigurationError
from batch_ops.evals.record import Aggregate, Comparison, GateDecision

__all__ = [
    "Paired",
    "aggregate",
    "bootstrap_interval",
    "clustered_interval",
    "gate",
    "mean_interval",
    "mean_pass_at_k",
    "paired",
    "pass_at_k",
    "z_value",
]

CiMethod = Literal["stderr", "bootstrap", "clustered"]


def z_value(level: float = 0.95) -> float:
    """The two-sided normal quantile for ``level`` (1.959964 for 0.95)."""
    if not 0 < level < 1:
        raise ConfigurationError(f"confidence level {level} is not between 0 and 1; fix: e.g. 0.95")
    return NormalDist().inv_cdf(0.5 + level / 2)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


def _empty(method: str, level: float) -> Aggregate:
    return Aggregate(n=0, mean=0.0, ci_low=0.0, ci_high=0.0, method="none", level=level)


def mean_interval(values: Sequence[float], *, level: float = 0.95) -> Aggregate:
    """Mean with a stderr interval (see the module). One value: no interval (``method="none"``).

    Examples:
        >>> mean_interval([0.5]).method, mean_interval([]).n
        ('none', 0)
    """
    n = len(values)
    if n == 0:
        return _empty("stderr", level)
    mean = _mean(values)
    if n == 1:
        return Aggregate(n=1, mean=mean, ci_low=mean, ci_high=mean, method="none", level=level)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (n - 1))
    se = sd / math.sqrt(n)
    z = z_value(level)
    return Aggregate(n=n, mean=mean, ci_low=_clip(mean - z * se), ci_high=_clip(mean + z * se), method="stderr",
                     level=level, stderr=se)


def clustered_interval(values: Sequence[float], clusters: Sequence[Hashable], *, level: float = 0.95,
                       key: str | None = None) -> Aggregate:
    """Mean with a clustered-stderr interval (see the module); ``key`` names the metadata key in the record.

    With fewer than two clusters there is nothing to correct for: the plain stderr interval, so said
    in ``method`` (``stderr``).

    Examples:
        >>> a = clustered_interval([1, 1, 0, 0], ["x", "x", "y", "y"])
        >>> a.mean, round(a.stderr, 6)
        (0.5, 0.5)
    """
    if len(values) != len(clusters):
        raise ConfigurationError(f"{len(values)} values for {len(clusters)} cluster labels; fix: one label each")
    n = len(values)
    groups = set(clusters)
    if n == 0 or len(groups) < 2:
        return mean_interval(values, level=level)
    mean = _mean(values)
    sums: dict[Hashable, float] = {}
    for x, c in zip(values, clusters, strict=True):
        sums[c] = sums.get(c, 0.0) + (x - mean)
    count = len(sums)
    se = math.sqrt(count / (count - 1) * math.fsum(s * s for s in sums.values())) / n
    z = z_value(level)
    return Aggregate(n=n, mean=mean, ci_low=_clip(mean - z * se), ci_high=_clip(mean + z * se),
                     method="clustered_stderr", level=level, stderr=se, cluster=key)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    # Linear interpolation between closest ranks (numpy's default, "linear").
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_interval(values: Sequence[float], *, seed: int = 0, resamples: int = 1000,
                       level: float = 0.95) -> Aggregate:
    """Mean with a percentile-bootstrap interval; ``stderr`` = the standard deviation of the resampled means.

    Examples:
        >>> a = bootstrap_interval([1, 0, 1, 1, 0, 1, 1, 1], seed=7, resamples=200)
        >>> a == bootstrap_interval([1, 0, 1, 1, 0, 1, 1, 1], seed=7, resamples=200), a.method, a.seed
        (True, 'bootstrap', 7)
    """
    n = len(values)
    if n < 2:
        return mean_interval(values, level=level)
    if resamples < 10:
        raise ConfigurationError(f"bootstrap with {resamples} resamples; fix: use 1000 or more")
    rng = random.Random(seed)
    vals = list(values)
    means = sorted(math.fsum(rng.choices(vals, k=n)) / n for _ in range(resamples))
    m = _mean(means)
    sd = math.sqrt(math.fsum((x - m) ** 2 for x in means) / (resamples - 1))
    alpha = 1 - level
    return Aggregate(n=n, mean=_mean(values), ci_low=_clip(_quantile(means, alpha / 2)),
                     ci_high=_clip(_quantile(means, 1 - alpha / 2)), method="bootstrap", level=level, stderr=sd,
                     seed=seed, resamples=resamples)


def aggregate(values: Sequence[float], *, method: CiMethod = "stderr", clusters: Sequence[Hashable] | None = None,
              cluster_key: str | None = None, seed: int = 0, resamples: int = 1000,
              level: float = 0.95) -> Aggregate:
    """The mean of ``values`` with the interval ``method`` asks for (``clustered`` needs ``clusters``)."""
    if method == "stderr":
        return mean_interval(values, level=level)
    if method == "bootstrap":
        return bootstrap_interval(values, seed=seed, resamples=resamples, level=level)
    if method == "clustered":
        if clusters is None:
            raise ConfigurationError("a clustered interval needs cluster labels; fix: name the metadata key "
                                     "(cluster='source') every item has")
        return clustered_interval(values, clusters, level=level, key=cluster_key)
    raise ConfigurationError(f"no interval method {method!r}; fix: 'stderr', 'bootstrap' or 'clustered'")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one item: n samples, c of them passing.

    Examples:
        >>> pass_at_k(5, 0, 3), pass_at_k(5, 5, 1), pass_at_k(4, 1, 1), pass_at_k(3, 1, 3)
        (0.0, 1.0, 0.25, 1.0)
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ConfigurationError(f"pass@{k} of {c} passing out of {n} samples; fix: 1 <= k <= n and 0 <= c <= n")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_pass_at_k(passes: Mapping[str, Sequence[bool]], k: int) -> float:
    """pass@k averaged over items, from each item's pass/fail per epoch.

    Examples:
        >>> round(mean_pass_at_k({"a": [True, False, False], "b": [False, False, False]}, 2), 6)
        0.333333
    """
    if not passes:
        return 0.0
    return _mean([pass_at_k(len(v), sum(v), k) for v in passes.values()])


@dataclass(frozen=True)
class Paired:
    """A paired difference: ``diff = mean(current - reference)`` over the ``n`` shared items."""

    n: int
    mean: float
    reference_mean: float
    diff: float
    stderr: float
    ci_low: float
    ci_high: float
    p_value: float
    method: str

    def significant(self, alpha: float = 0.05) -> bool:
        return self.n >= 2 and self.p_value < alpha

    def comparison(self, *, model: str, kind: Literal["previous_run", "baseline_model"], reference: str,
                   alpha: float = 0.05) -> Comparison:
        return Comparison(model=model, kind=kind, reference=reference, n=self.n, mean=self.mean,
                          reference_mean=self.reference_mean, diff=self.diff, ci_low=self.ci_low,
                          ci_high=self.ci_high, p_value=self.p_value, significant=self.significant(alpha),
                          method=self.method)


def paired(current: Mapping[str, float], reference: Mapping[str, float], *,
           clusters: Mapping[str, Hashable] | None = None, level: float = 0.95) -> Paired:
    """Compare per-item scores of the same items (keys present in both; the rest are left out).

    ``clusters`` (item id → label) gives the clustered stderr of the differences.

    Examples:
        >>> p = paired({"a": 1, "b": 1, "c": 0, "d": 1}, {"a": 1, "b": 0, "c": 0, "d": 0, "e": 1})
        >>> p.n, p.diff, round(p.stderr, 6), round(p.p_value, 4)
        (4, 0.5, 0.288675, 0.0833)
    """
    ids = sorted(set(current) & set(reference))
    n = len(ids)
    diffs = [float(current[i]) - float(reference[i]) for i in ids]
    cur = _mean([float(current[i]) for i in ids])
    ref = _mean([float(reference[i]) for i in ids])
    d = _mean(diffs)
    method = "paired_stderr"
    if n < 2:
        se = 0.0
    elif clusters is not None and len({clusters[i] for i in ids}) >= 2:
        sums: dict[Hashable, float] = {}
        for i, x in zip(ids, diffs, strict=True):
            sums[clusters[i]] = sums.get(clusters[i], 0.0) + (x - d)
        count = len(sums)
        se = math.sqrt(count / (count - 1) * math.fsum(s * s for s in sums.values())) / n
        method = "paired_clustered_stderr"
    else:
        se = math.sqrt(math.fsum((x - d) ** 2 for x in diffs) / (n - 1)) / math.sqrt(n)
    z = z_value(level)
    if se > 0:
        p = 2 * (1 - NormalDist().cdf(abs(d) / se))
    else:  # every item moved by the same amount: certain if it moved at all
        p = 1.0 if d == 0 or n < 2 else 0.0
    return Paired(n=n, mean=cur, reference_mean=ref, diff=d, stderr=se, ci_low=d - z * se, ci_high=d + z * se,
                  p_value=p, method=method)


def gate(
    comparisons: Sequence[Comparison],
    *,
    min_drop: float,
    alpha: float = 0.05,
    against: Sequence[str] = ("previous_run",),
    incomplete: Mapping[str, str] | None = None,
    fail_on_incomplete: bool = False,
    correction: Literal["none", "bonferroni"] = "none",
) -> GateDecision:
    """Decide the run: fail on a drop that is significant (``p < alpha``) **and** at least ``min_drop``.

    Args:
        comparisons: Paired comparisons (:func:`paired` → :meth:`Paired.comparison`).
        min_drop: The smallest drop that matters (a share: 0.03 = 3 points).
        alpha: The significance level of the two-sided test.
        against: Which comparisons gate the run: ``previous_run`` (default), ``baseline_model``.
        incomplete: Model → why its record is incomplete (errored, expired, cancelled, unparsed).
            Reported as ``incomplete`` (never as a pass with a better score); a failure only with
            ``fail_on_incomplete``.
        correction: ``bonferroni`` divides ``alpha`` by the number of gating comparisons (several
            models tested at once).

    Examples:
        >>> drop = Comparison(model="m", kind="previous_run", reference="r1", n=200, mean=0.7, reference_mean=0.8,
        ...                   diff=-0.1, ci_low=-0.15, ci_high=-0.05, p_value=0.0001, significant=True)
        >>> gate([drop], min_drop=0.05).status, gate([drop], min_drop=0.2).status
        ('fail', 'pass')
    """
    if min_drop < 0:
        raise ConfigurationError(f"min_drop={min_drop}; fix: a share of the score, 0 or more (0.03 = 3 points)")
    gating = [c for c in comparisons if c.kind in against]
    level = alpha / len(gating) if correction == "bonferroni" and gating else alpha
    failing: list[str] = []
    notes: list[str] = []
    for c in gating:
        drop = -c.diff
        where = f"{c.model} vs {c.reference}"
        p = c.p_value if c.p_value is not None else 1.0
        if drop >= min_drop - 1e-12 and p < level and c.n >= 2:
            failing.append(c.model)
            notes.append(f"{where}: {c.mean:.1%} from {c.reference_mean:.1%} ({c.diff * 100:+.1f} points, "
                         f"95% CI {c.ci_low * 100:+.1f} to {c.ci_high * 100:+.1f}, p={p:.3g}) over {c.n} items: "
                         f"a significant drop of at least {min_drop * 100:.1f} points")
        elif drop > 0:
            why = "not significant" if p >= level else f"smaller than the {min_drop * 100:.1f}-point minimum"
            notes.append(f"{where}: {c.diff * 100:+.1f} points (p={p:.3g}), {why}")
    broken = dict(incomplete or {})
    if broken:
        notes.append("incomplete: " + "; ".join(f"{m}: {why}" for m, why in broken.items())
                     + " (not-graded samples count as 0 in the score, never better)")
    if failing or (broken and fail_on_incomplete):
        status: Literal["pass", "fail", "incomplete", "no_reference"] = "fail"
        failing = sorted(set(failing) | (set(broken) if fail_on_incomplete else set()))
    elif broken:
        status = "incomplete"
    elif not gating:
        status = "no_reference"
        notes.insert(0, "nothing to compare with yet (first run, or no baseline)")
    else:
        status = "pass"
        if not notes:
            notes.append("no drop")
    return GateDecision(status=status, reason="; ".join(notes), min_drop=min_drop, alpha=alpha, failing=failing)
