"""Small, checked statistics used by the cohort comparison and the review study.

Every test here is a thin wrapper around :mod:`scipy.stats` so the numbers are the
ones a statistician would get from scipy or R on the same input; the wrappers only
fix conventions (two-sided, paired, NaN handling) and return plain floats. Fleiss'
kappa is not in scipy and is written out from Fleiss (1971).

scipy is imported inside the functions: ``import core.evaluation.stats`` stays cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.errors import InputError


@dataclass(frozen=True)
class PairedTest:
    """Paired comparison of ``a`` and ``b`` (differences ``a - b``).

    Attributes
    ----------
    n : int
        Number of pairs.
    mean_diff : float
        Mean of ``a - b``.
    sd_diff : float
        Sample standard deviation (ddof=1) of ``a - b``.
    ci95 : tuple of 2 float
        Two-sided 95 % t confidence interval of the mean difference.
    t : float
        Student t statistic of the paired test.
    p : float
        Two-tailed p-value of the paired t-test (NaN when all differences are equal,
        where the t statistic is undefined).
    p_wilcoxon : float
        Two-sided Wilcoxon signed-rank p-value (scipy default method), the
        distribution-free check; NaN when every difference is zero.
    """

    n: int
    mean_diff: float
    sd_diff: float
    ci95: tuple
    t: float
    p: float
    p_wilcoxon: float


def _as_pairs(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise InputError(f"paired samples differ in length ({a.size} vs {b.size})")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InputError("paired samples hold missing or non-finite values")
    return a, b


def mean_ci95(x) -> tuple[float, float, float]:
    """Mean and two-sided 95 % Student-t confidence interval of ``x``.

    Returns ``(mean, lo, hi)``; with fewer than 2 values the interval is NaN.
    """
    from scipy import stats

    x = np.asarray(x, dtype=float).ravel()
    if x.size == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if x.size < 2:
        return m, math.nan, math.nan
    se = float(x.std(ddof=1)) / math.sqrt(x.size)
    h = float(stats.t.ppf(0.975, x.size - 1)) * se
    return m, m - h, m + h


def paired_test(a, b) -> PairedTest:
    """Two-tailed paired t-test of ``a`` vs ``b`` plus the Wilcoxon signed-rank check.

    Parameters
    ----------
    a, b : (n,) array_like of float
        Paired values, same patient order. Needs n >= 2.

    Returns
    -------
    PairedTest
    """
    from scipy import stats

    a, b = _as_pairs(a, b)
    n = a.size
    if n < 2:
        raise InputError(f"a paired test needs at least 2 patients, got {n}")
    d = a - b
    mean, lo, hi = mean_ci95(d)
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        # scipy returns NaN here too (0/0); say it explicitly instead of warning.
        t, p = math.nan, math.nan
    else:
        res = stats.ttest_rel(a, b)
        t, p = float(res.statistic), float(res.pvalue)
    if np.all(d == 0):
        pw = math.nan
    else:
        pw = float(stats.wilcoxon(a, b).pvalue)
    return PairedTest(n=n, mean_diff=mean, sd_diff=sd, ci95=(lo, hi), t=t, p=p, p_wilcoxon=pw)


def bonferroni(p, m: int) -> np.ndarray | float:
    """Bonferroni-adjusted p-values ``min(1, p * m)``; NaN stays NaN."""
    if m < 1:
        raise InputError(f"Bonferroni correction needs at least one test, got {m}")
    arr = np.minimum(1.0, np.asarray(p, dtype=float) * m)
    return float(arr) if arr.ndim == 0 else arr


@dataclass(frozen=True)
class Proportion:
    """``k`` successes out of ``n`` with an exact (Clopper-Pearson) 95 % interval."""

    k: int
    n: int
    share: float
    ci95: tuple


def proportion_ci95(k: int, n: int) -> Proportion:
    """Share ``k / n`` with its exact Clopper-Pearson 95 % confidence interval.

    Clopper-Pearson is conservative (coverage >= 95 %), the usual choice for the small
    reviewer panels of a plan-acceptance study. ``n == 0`` gives NaNs.
    """
    from scipy import stats

    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise InputError(f"a proportion needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Proportion(0, 0, math.nan, (math.nan, math.nan))
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return Proportion(k, n, k / n, (float(ci.low), float(ci.high)))


def binomial_test(k: int, n: int, p0: float = 0.5) -> float:
    """Two-sided exact binomial test of ``k`` successes in ``n`` against chance ``p0``."""
    from scipy import stats

    if n <= 0:
        return math.nan
    return float(stats.binomtest(int(k), int(n), p0, alternative="two-sided").pvalue)


def fleiss_kappa(counts) -> float:
    """Fleiss' kappa for N subjects each rated by the same number of raters.

    Parameters
    ----------
    counts : (N, K) array_like of int
        ``counts[i, j]`` = number of raters who put subject ``i`` in category ``j``;
        every row must sum to the same number of raters n >= 2.

    Returns
    -------
    float
        ``(P_bar - P_e) / (1 - P_e)`` (Fleiss 1971). When every rating falls in one
        category ``P_e == 1`` and kappa is undefined: NaN.
    """
    c = np.asarray(counts, dtype=float)
    if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
        raise InputError(f"Fleiss' kappa needs a subjects x categories table, got shape {c.shape}")
    if np.any(c < 0):
        raise InputError("Fleiss' kappa: counts must be >= 0")
    n_raters = c.sum(axis=1)
    if not np.all(n_raters == n_raters[0]) or n_raters[0] < 2:
        raise InputError("Fleiss' kappa needs the same number (>= 2) of ratings for every subject")
    n = n_raters[0]
    big_n = c.shape[0]
    p_j = c.sum(axis=0) / (big_n * n)
    p_i = (np.sum(c * c, axis=1) - n) / (n * (n - 1))
    p_bar = float(p_i.mean())
    p_e = float(np.sum(p_j ** 2))
    if abs(1.0 - p_e) < 1e-12:
        return math.nan
    return (p_bar - p_e) / (1.0 - p_e)
