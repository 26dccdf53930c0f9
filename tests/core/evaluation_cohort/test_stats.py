"""Statistics against published worked examples (R documentation, Fleiss 1971 via Wikipedia)
and hand calculations. Published values are printed to 4-7 significant digits, so the
tolerances are half a unit of the last printed digit."""

import math

import numpy as np
import pytest

from core.errors import InputError
from core.evaluation.stats import (bonferroni, binomial_test, fleiss_kappa, mean_ci95, paired_test,
                                   proportion_ci95)

# R `sleep` data (Student 1908): extra sleep with drug 1 and drug 2 in the same 10 patients.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_paired_t_matches_r_sleep_example():
    # R: t.test(extra ~ group, data = sleep, paired = TRUE):
    # t = -4.0621, df = 9, p-value = 0.002833, 95 % CI -2.4598858 -0.7001142, mean diff -1.58
    r = paired_test(SLEEP_1, SLEEP_2)
    assert r.n == 10
    assert r.t == pytest.approx(-4.0621, abs=5e-5)
    assert r.p == pytest.approx(0.002833, abs=5e-7)
    assert r.mean_diff == pytest.approx(-1.58, abs=1e-12)
    assert r.ci95[0] == pytest.approx(-2.4598858, abs=5e-8)
    assert r.ci95[1] == pytest.approx(-0.7001142, abs=5e-8)


def test_wilcoxon_check_matches_r_hollander_wolfe_example():
    # R ?wilcox.test (Hollander & Wolfe p. 29): one-sided "greater" p = 0.01953 (V = 40);
    # no ties or zeros, so the exact two-sided p is twice that: 10/512 * 2 = 0.0390625.
    x = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30]
    y = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29]
    assert paired_test(x, y).p_wilcoxon == pytest.approx(0.0390625, abs=1e-9)


def test_paired_t_by_hand_df2():
    # d = (1, 2, 3): mean 2, sd 1, t = 2 sqrt(3); for df = 2 the t CDF is closed-form
    # F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(12/14).
    r = paired_test([10, 20, 30], [9, 18, 27])
    assert r.t == pytest.approx(2 * math.sqrt(3), rel=1e-12)
    assert r.p == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-10)


def test_identical_pairs_have_no_p_and_bad_input_is_typed():
    r = paired_test([1, 2, 3], [1, 2, 3])
    assert math.isnan(r.p) and math.isnan(r.p_wilcoxon) and r.mean_diff == 0
    with pytest.raises(InputError):
        paired_test([1, 2], [1, 2, 3])
    with pytest.raises(InputError):
        paired_test([1, np.nan], [1, 2])
    with pytest.raises(InputError):
        paired_test([1], [2])


def test_binomial_test_and_exact_ci_match_r():
    # R ?binom.test: binom.test(682, 925, p = 0.75): p-value = 0.3825, CI 0.7076683 0.7654066
    assert binomial_test(682, 925, 0.75) == pytest.approx(0.3825, abs=5e-5)
    p = proportion_ci95(682, 925)
    assert p.ci95[0] == pytest.approx(0.7076683, abs=5e-8)
    assert p.ci95[1] == pytest.approx(0.7654066, abs=5e-8)
    # by hand: 10 of 10 correct against chance: p = 2 * 0.5^10
    assert binomial_test(10, 10) == pytest.approx(2 / 1024, rel=1e-12)
    # Clopper-Pearson upper limit for 0 of n is 1 - 0.025^(1/n)
    assert proportion_ci95(0, 6).ci95[1] == pytest.approx(1 - 0.025 ** (1 / 6), rel=1e-9)


def test_fleiss_kappa_matches_published_example():
    # Fleiss' kappa worked example (Wikipedia "Fleiss' kappa", 10 subjects, 14 raters,
    # 5 categories): P_bar = 0.378, P_e = 0.213, kappa = 0.210 (3 printed decimals).
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(table) == pytest.approx(0.210, abs=5e-4)
    # perfect agreement on two categories -> 1; every rating one category -> undefined
    assert fleiss_kappa([[3, 0], [0, 3], [3, 0]]) == pytest.approx(1.0)
    assert math.isnan(fleiss_kappa([[3, 0], [3, 0]]))
    with pytest.raises(InputError):
        fleiss_kappa([[2, 1], [1, 1]])


def test_bonferroni_and_mean_ci():
    assert bonferroni(0.01, 3) == pytest.approx(0.03)
    assert bonferroni(0.5, 3) == 1.0
    np.testing.assert_allclose(bonferroni([0.001, 0.2], 10), [0.01, 1.0])
    # mean of (1, 2, 3): 2, half-width t_{0.975,2} * 1/sqrt(3) = 4.302653 / sqrt(3)
    m, lo, hi = mean_ci95([1, 2, 3])
    assert m == 2 and hi - m == pytest.approx(4.302653 / math.sqrt(3), abs=1e-6)
