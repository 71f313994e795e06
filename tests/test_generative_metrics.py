"""jaxnet.generative.metrics against closed forms: the classifier score, confident fraction,
class coverage and the Fréchet distance (plain NumPy, no compile)."""

import numpy as np
import pytest

from jaxnet.generative import (class_coverage, classifier_score, confident_fraction, frechet_distance,
                               gaussian_stats)


def _with_stats(rng, n, mean, cov):
    """n points whose sample mean and (unbiased) sample covariance are exactly ``mean`` and ``cov``."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(axis=0)
    w = np.linalg.cholesky(np.atleast_2d(np.cov(z, rowvar=False)))
    z = z @ np.linalg.inv(w).T                          # sample cov exactly I
    return z @ np.linalg.cholesky(cov).T + mean


def _rotation(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# ---------------------------------------------------------------------------- classifier-based scores

@pytest.mark.parametrize("k", [2, 10])
def test_one_hot_balanced_scores_k_and_constant_scores_one(k):
    one_hot = np.eye(k)[np.tile(np.arange(k), 7)]
    assert classifier_score(one_hot) == pytest.approx(k, rel=1e-12)
    assert class_coverage(one_hot) == pytest.approx(1.0, abs=1e-12)
    assert confident_fraction(one_hot) == 1.0
    rng = np.random.default_rng(k)
    row = rng.dirichlet(np.ones(k))
    const = np.tile(row, (13, 1))
    assert classifier_score(const) == pytest.approx(1.0, abs=1e-12)
    # coverage of a constant prediction: the entropy of that row over log K
    assert class_coverage(const) == pytest.approx(-np.sum(row * np.log(row)) / np.log(k), rel=1e-10)


def test_one_class_has_zero_coverage_and_score_one():
    p = np.zeros((20, 10))
    p[:, 3] = 1.0
    assert class_coverage(p) == 0.0
    assert classifier_score(p) == pytest.approx(1.0, abs=1e-12)
    assert confident_fraction(p) == 1.0


def test_score_matches_the_kl_formula_and_lies_in_range():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(5, 0.3), size=40)
    m = p.mean(axis=0)
    want = np.exp(np.mean(np.sum(p * np.log(p / m), axis=1)))
    assert classifier_score(p.astype(np.float32)) == pytest.approx(want, rel=1e-5)
    assert 1.0 < classifier_score(p) < 5.0
    # half the images certain of class 0, half of class 1 (of K=4): score 2, coverage log 2 / log 4
    two = np.eye(4)[[0, 1] * 5]
    assert classifier_score(two) == pytest.approx(2.0, rel=1e-12)
    assert class_coverage(two) == pytest.approx(0.5, rel=1e-12)


def test_confident_fraction_counts_rows_at_or_above_threshold():
    p = np.array([[0.95, 0.05], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    assert confident_fraction(p) == 0.5                     # 0.95 and 0.9 (>= is inclusive)
    assert confident_fraction(p, threshold=0.7) == 0.75
    assert confident_fraction(p, threshold=1.0) == 0.0


# ---------------------------------------------------------------------------- Fréchet distance

def test_identical_sets_are_at_distance_zero():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((200, 16)) @ rng.standard_normal((16, 16))
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(f, f[::-1].copy()) == pytest.approx(0.0, abs=1e-8)   # order does not matter


def test_two_gaussians_match_the_closed_form():
    rng = np.random.default_rng(2)
    d = 6
    q = _rotation(rng, d)
    a, b = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
    ca, cb = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T            # commuting: sqrtm(Ca Cb) = Q diag(sqrt(ab)) Q^T
    mu_a, mu_b = rng.standard_normal(d), rng.standard_normal(d)
    want = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    xa, xb = _with_stats(rng, 300, mu_a, ca), _with_stats(rng, 500, mu_b, cb)
    mean, cov = gaussian_stats(xa)
    np.testing.assert_allclose(mean, mu_a, atol=1e-10)
    np.testing.assert_allclose(cov, ca, atol=1e-10)
    assert frechet_distance(xa, xb) == pytest.approx(want, rel=1e-7)
    assert frechet_distance((mu_a, ca), (mu_b, cb)) == pytest.approx(want, rel=1e-7)   # precomputed stats
    assert frechet_distance(xa, (mu_b, cb)) == pytest.approx(want, rel=1e-7)
    assert frechet_distance(xb, xa) == pytest.approx(want, rel=1e-7)                    # symmetric


def test_non_commuting_covariances_in_one_and_two_dimensions():
    rng = np.random.default_rng(3)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    x1 = _with_stats(rng, 50, np.array([1.0]), np.array([[4.0]]))
    x2 = _with_stats(rng, 70, np.array([-2.0]), np.array([[0.25]]))
    assert frechet_distance(x1, x2) == pytest.approx(9.0 + (2.0 - 0.5) ** 2, rel=1e-9)
    # 2-D, C1 = I: tr(I + C2 - 2 sqrt(C2)) = sum (1 - sqrt(lambda_i(C2)))^2 for any C2
    c2 = np.array([[2.0, 0.7], [0.7, 0.5]])
    lam = np.linalg.eigvalsh(c2)
    assert frechet_distance((np.zeros(2), np.eye(2)), (np.ones(2), c2)) == pytest.approx(
        2.0 + np.sum((1 - np.sqrt(lam)) ** 2), rel=1e-9)
    # a shift of the mean alone adds ||shift||^2
    x = rng.standard_normal((100, 4))
    assert frechet_distance(x, x + np.array([1.0, 0, 2.0, 0])) == pytest.approx(5.0, rel=1e-8)


# ---------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("fn", [classifier_score, confident_fraction, class_coverage])
@pytest.mark.parametrize("probs, message", [
    (np.full(10, 0.1), "shape (N, K)"),                                   # rank 1
    (np.full((2, 5, 2), 0.1), "shape (N, K)"),                            # rank 3
    (np.ones((4, 1)), "shape (N, K)"),                                    # one class
    (np.array([[0.5, np.nan], [0.5, 0.5]]), "finite"),
    (np.array([[0.6, 0.6], [0.5, 0.5]]), "sum to 1"),
    (np.array([[1.5, -0.5], [0.5, 0.5]]), ">= 0"),
])
def test_bad_probs_raise_one_line(fn, probs, message):
    with pytest.raises(ValueError) as e:
        fn(probs)
    text = str(e.value)
    assert text.startswith(f"{fn.__name__}: ") and message in text and "\n" not in text, text
    assert str(tuple(np.shape(probs))) in text or "shape" in text


@pytest.mark.parametrize("threshold", [0.0, 1.5, float("nan"), "0.9"])
def test_bad_threshold(threshold):
    with pytest.raises(ValueError, match=r"^confident_fraction: `threshold` must be a number in \(0, 1\]"):
        confident_fraction(np.eye(3), threshold=threshold)


@pytest.mark.parametrize("a, b, message", [
    (np.zeros((1, 3)), np.zeros((5, 3)), "N >= 2 samples"),              # one sample
    (np.zeros(6), np.zeros((5, 3)), "shape (N, F)"),                      # rank 1
    (np.zeros((5, 3)), np.zeros((5, 4)), "same width F"),
    (np.array([[0.0, np.inf], [1.0, 2.0]]), np.zeros((5, 2)), "finite"),
    ((np.zeros(3), np.eye(2)), np.zeros((5, 3)), "(F,) and (F, F)"),
    ((np.zeros(3), np.eye(3), 1), np.zeros((5, 3)), "(mean, cov) pair"),
])
def test_bad_features_raise_one_line(a, b, message):
    with pytest.raises(ValueError) as e:
        frechet_distance(a, b)
    text = str(e.value)
    assert text.startswith("frechet_distance: ") and message in text and "\n" not in text, text


def test_gaussian_stats_bad_input_names_the_function_and_shape():
    with pytest.raises(ValueError, match=r"^gaussian_stats: `features` must have shape \(N, F\).*got shape \(1, 4\)$"):
        gaussian_stats(np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"^gaussian_stats: `features` must be finite.*\(3, 2\)$"):
        gaussian_stats(np.array([[0.0, 1.0], [np.nan, 1.0], [2.0, 3.0]]))
