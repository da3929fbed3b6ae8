"""Eval statistics checked against values computed by hand, and the regression gate on seeded data."""

from __future__ import annotations

import math
import random

import pytest

from batch_ops.errors import ConfigurationError
from batch_ops.evals.record import Comparison
from batch_ops.evals.stats import (
    aggregate,
    bootstrap_interval,
    clustered_interval,
    gate,
    mean_interval,
    mean_pass_at_k,
    paired,
    pass_at_k,
)

# Ten graded items, seven right.
SCORES = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1]
Z = 1.959964


def test_stderr_interval_by_hand() -> None:
    # mean 0.7; sample variance (7 * 0.3^2 + 3 * 0.7^2) / 9 = 2.1 / 9; se = sqrt(2.1 / 9 / 10) = 0.152753
    a = mean_interval(SCORES)
    assert a.n == 10 and a.mean == pytest.approx(0.7)
    assert a.stderr == pytest.approx(math.sqrt(2.1 / 90)) == pytest.approx(0.152753, abs=1e-6)
    assert (a.ci_low, a.ci_high) == pytest.approx((0.7 - Z * 0.152753, 0.7 + Z * 0.152753), abs=1e-5)
    assert (round(a.ci_low, 4), round(a.ci_high, 4)) == (0.4006, 0.9994)
    assert a.method == "stderr" and a.level == 0.95
    # Bounded scores: the interval is clipped to 0..1; 99 % is wider.
    assert mean_interval([1, 1, 1, 0]).ci_high == 1.0
    wider = mean_interval(SCORES, level=0.99)
    assert wider.ci_low < a.ci_low and wider.ci_high > a.ci_high


def test_clustered_stderr_by_hand() -> None:
    # Residuals from 0.7 summed per cluster: a -0.1, b -0.1, c +0.6, d -0.4; squares sum 0.54;
    # C/(C-1) = 4/3 -> 0.72; se = sqrt(0.72) / 10 = 0.0848528
    clusters = ["a", "a", "a", "b", "b", "b", "c", "c", "d", "d"]
    a = clustered_interval(SCORES, clusters, key="source")
    assert a.stderr == pytest.approx(math.sqrt(0.72) / 10) == pytest.approx(0.0848528, abs=1e-7)
    assert a.method == "clustered_stderr" and a.cluster == "source"
    # Items that move together in a cluster widen the interval past the unclustered one.
    together = [1, 1, 1, 0, 0, 0, 1, 1, 0, 0]
    wide = clustered_interval(together, ["a", "a", "a", "b", "b", "b", "c", "c", "d", "d"])
    assert wide.stderr > mean_interval(together).stderr  # type: ignore[operator]
    # One cluster: nothing to correct for, said so.
    assert clustered_interval(SCORES, ["x"] * 10).method == "stderr"
    with pytest.raises(ConfigurationError, match="cluster labels"):
        aggregate(SCORES, method="clustered")


def test_bootstrap_is_seeded_and_close_to_the_analytic_stderr() -> None:
    a = bootstrap_interval(SCORES, seed=11, resamples=4000)
    assert a == bootstrap_interval(SCORES, seed=11, resamples=4000)  # same seed, same interval
    assert a != bootstrap_interval(SCORES, seed=12, resamples=4000)
    # The bootstrap's se estimates the population-sd standard error: sqrt(0.21 / 10) = 0.1449
    assert a.stderr == pytest.approx(math.sqrt(0.21 / 10), abs=0.006)
    assert a.ci_low == pytest.approx(0.4, abs=0.05) and a.ci_high == 1.0
    assert (a.method, a.seed, a.resamples) == ("bootstrap", 11, 4000)


def test_pass_at_k_unbiased_by_hand() -> None:
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(4, 1, 1) == 0.25  # pass@1 = c / n
    assert pass_at_k(3, 0, 3) == 0.0 and pass_at_k(3, 1, 3) == 1.0
    passes = {"a": [True, False, False, False], "b": [True, True, False, False], "c": [False] * 4}
    # pass@2: a 1 - C(3,2)/C(4,2) = 0.5; b 1 - C(2,2)/C(4,2) = 5/6; c 0 -> mean 4/9
    assert mean_pass_at_k(passes, 2) == pytest.approx((0.5 + 5 / 6 + 0) / 3)
    with pytest.raises(ConfigurationError, match="1 <= k <= n"):
        pass_at_k(3, 1, 4)


def test_paired_comparison_by_hand() -> None:
    current = {"a": 1.0, "b": 1.0, "c": 0.0, "d": 1.0}
    reference = {"a": 1.0, "b": 0.0, "c": 0.0, "d": 0.0, "only-before": 1.0}
    p = paired(current, reference)
    # differences 0, 1, 0, 1: mean 0.5, sd sqrt(1/3), se sqrt(1/3)/2 = 0.288675; z = 1.7320508
    assert (p.n, p.mean, p.reference_mean, p.diff) == (4, 0.75, 0.25, 0.5)
    assert p.stderr == pytest.approx(0.288675, abs=1e-6)
    assert p.p_value == pytest.approx(0.083265, abs=1e-6)
    assert not p.significant(0.05) and p.significant(0.10)
    assert (p.ci_low, p.ci_high) == pytest.approx((0.5 - Z * 0.288675, 0.5 + Z * 0.288675), abs=1e-5)
    # Pairing removes item difficulty: the same means unpaired would give a wider interval.
    unpaired_se = math.sqrt(mean_interval([1, 1, 0, 1]).stderr ** 2 + mean_interval([1, 0, 0, 0]).stderr ** 2)  # type: ignore[operator]
    assert p.stderr < unpaired_se


def _runs(seed: int, *, items: int, drop: float) -> tuple[dict[str, float], dict[str, float]]:
    """Two runs of one model on the same items: each item has its own difficulty; the second run's chance
    of a right answer is lower by ``drop`` (0: the same model, fresh sampling noise)."""
    rng = random.Random(seed)
    chance = [rng.choice([0.1, 0.5, 0.7, 0.9, 0.95]) for _ in range(items)]
    before = {f"q{i}": float(rng.random() < p) for i, p in enumerate(chance)}
    after = {f"q{i}": float(rng.random() < max(0.0, p - drop)) for i, p in enumerate(chance)}
    return after, before


def _decide(after: dict[str, float], before: dict[str, float], min_drop: float) -> str:
    c = paired(after, before).comparison(model="m", kind="previous_run", reference="yesterday")
    return gate([c], min_drop=min_drop).status


def _same_mean(seed: int, before: dict[str, float], swaps: int) -> dict[str, float]:
    """Another night with exactly the same mean: ``swaps`` right answers become wrong and as many wrong ones right."""
    rng = random.Random(seed)
    after = dict(before)
    right = [k for k, v in before.items() if v == 1.0]
    wrong = [k for k, v in before.items() if v == 0.0]
    for a, b in zip(rng.sample(right, swaps), rng.sample(wrong, swaps), strict=True):
        after[a], after[b] = 0.0, 1.0
    return after


def test_gate_fires_on_a_seeded_significant_drop_and_stays_quiet_on_noise_of_the_same_mean() -> None:
    seeds = range(20)
    assert [_decide(*_runs(s, items=400, drop=0.15), min_drop=0.05) for s in seeds] == ["fail"] * 20
    quiet = []
    for s in seeds:
        _, before = _runs(s, items=400, drop=0.0)
        quiet.append(_decide(_same_mean(s, before, swaps=40), before, min_drop=0.05))  # 80 items changed
    assert quiet == ["pass"] * 20


def test_gate_false_alarms_on_sampling_noise_stay_below_alpha() -> None:
    # Fresh sampling noise (same model, same chances): the test may fire by chance at most about alpha / 2
    # of the nights (a drop, one side of a two-sided 5 % test), less with the minimum; the old fixed
    # 2-point rule fires far more often on the same nights.
    nights = [_runs(s, items=400, drop=0.0) for s in range(200)]
    fired = sum(_decide(after, before, min_drop=0.02) == "fail" for after, before in nights)
    old_rule = sum(sum(before.values()) - sum(after.values()) > 0.02 * 400 for after, before in nights)
    assert fired <= 6, fired  # 3 %
    assert old_rule >= 4 * max(fired, 1), (old_rule, fired)
    caught = sum(_decide(*_runs(s, items=400, drop=0.10), min_drop=0.02) == "fail" for s in range(200))
    assert caught >= 190, caught


def test_gate_needs_the_minimum_too() -> None:
    after, before = _runs(3, items=4000, drop=0.02)  # a real but small drop, significant on 4000 items
    c = paired(after, before).comparison(model="m", kind="previous_run", reference="yesterday")
    assert c.significant and -c.diff < 0.05
    decision = gate([c], min_drop=0.05)
    assert decision.status == "pass" and "smaller than the 5.0-point minimum" in decision.reason
    assert gate([c], min_drop=0.01).status == "fail"


def test_gate_reports_incomplete_apart_and_no_reference() -> None:
    quiet = Comparison(model="m", kind="previous_run", reference="r", n=100, mean=0.8, reference_mean=0.8, diff=0.0,
                       ci_low=-0.05, ci_high=0.05, p_value=1.0)
    d = gate([quiet], min_drop=0.03, incomplete={"m": "3 requests failed (3 expired)"})
    assert d.status == "incomplete" and d.ok and "3 expired" in d.reason and "never better" in d.reason
    strict = gate([quiet], min_drop=0.03, incomplete={"m": "3 requests failed"}, fail_on_incomplete=True)
    assert strict.status == "fail" and strict.failing == ["m"] and not strict.ok
    assert gate([], min_drop=0.03).status == "no_reference"
    # Only the comparisons asked for gate the run: a weaker second model is not a regression by default.
    weaker = quiet.model_copy(update={"kind": "baseline_model", "diff": -0.2, "p_value": 1e-6, "model": "small"})
    assert gate([quiet, weaker], min_drop=0.03).status == "pass"
    assert gate([quiet, weaker], min_drop=0.03, against=("baseline_model",)).failing == ["small"]
    with pytest.raises(ConfigurationError, match="min_drop"):
        gate([quiet], min_drop=-1)


def test_bonferroni_divides_alpha() -> None:
    c = Comparison(model="m", kind="previous_run", reference="r", n=100, mean=0.7, reference_mean=0.8, diff=-0.1,
                   ci_low=-0.19, ci_high=-0.01, p_value=0.03)
    other = c.model_copy(update={"model": "n", "diff": 0.0, "p_value": 1.0})
    assert gate([c, other], min_drop=0.05).status == "fail"
    assert gate([c, other], min_drop=0.05, correction="bonferroni").status == "pass"  # 0.03 > 0.05 / 2
