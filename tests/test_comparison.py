"""The pass rule and the report figures, checked against direct numpy computations."""

import numpy as np

from deploytool.verify.comparison import compare


def test_figures_match_numpy():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((3, 4)).astype(np.float32)
    out = ref.copy()
    out[1, 2] += 0.01
    out[2, 3] -= 0.002
    c = compare("y", "ort", out, ref, atol=1e-5, rtol=1e-3)
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    assert c.max_abs_error == diff.max()
    assert c.mean_abs_error == diff.mean()
    assert c.max_rel_error == (diff / np.abs(ref.astype(np.float64))).max()
    excess = diff - 1e-3 * np.abs(ref.astype(np.float64))
    assert c.worst_index == list(np.unravel_index(np.argmax(excess), ref.shape)) == [1, 2]
    assert c.min_atol == excess.max()
    assert not c.passed
    assert compare("y", "ort", out, ref, atol=c.min_atol * 1.0001, rtol=1e-3, max_error=None).passed


def test_pass_rule_is_allclose():
    ref = np.array([1.0, -2.0, 100.0])
    for out in (ref + [1e-5, 0, 0.1], ref + [2e-5, 0, 0], ref + [0, 0, 0.2]):
        expected = bool(np.all(np.abs(out - ref) <= 1e-5 + 1e-3 * np.abs(ref)))
        assert compare("y", "r", out, ref, 1e-5, 1e-3, max_error=None).passed == expected


def test_nan_never_passes():
    ref = np.array([1.0, np.nan])
    c = compare("y", "r", np.array([1.0, np.nan]), ref, 1.0, 1.0)
    assert not c.passed and c.nan_count == 1
    assert not compare("y", "r", np.array([np.nan, 2.0]), np.array([1.0, 2.0]), 1, 1).passed


def test_matching_infinities_pass_and_others_fail():
    ref = np.array([np.inf, -np.inf, 1.0])
    assert compare("y", "r", ref.copy(), ref, 0, 0).passed
    assert not compare("y", "r", np.array([-np.inf, -np.inf, 1.0]), ref, 1, 1).passed
    assert not compare("y", "r", np.array([1e30, -np.inf, 1.0]), ref, 1, 1).passed
    assert not compare("y", "r", np.array([np.inf, -np.inf, np.inf]), ref, 1, 1).passed


def test_shape_mismatch_fails():
    assert not compare("y", "r", np.zeros(3), np.zeros(4), 1, 1).passed


def test_integer_outputs_compare_exactly_at_zero_tolerance():
    assert compare("ids", "r", np.array([1, 2, 3]), np.array([1, 2, 3]), 0, 0).passed
    assert not compare("ids", "r", np.array([1, 2, 4]), np.array([1, 2, 3]), 0, 0).passed


def test_scaled_error_cosine_and_snr_match_numpy():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal(1000) * 1e-9  # tiny outputs: the scale rule still sees errors
    out = ref + rng.standard_normal(1000) * 1e-12
    c = compare("y", "r", out, ref)
    diff = np.abs(out - ref)
    assert c.scale == np.abs(ref).max()
    assert c.scaled_error == diff.max() / np.abs(ref).max()
    assert np.isclose(c.cosine, out @ ref / np.linalg.norm(out) / np.linalg.norm(ref))
    assert np.isclose(c.snr_db, 10 * np.log10((ref ** 2).sum() / ((out - ref) ** 2).sum()))
    assert c.passed == (c.scaled_error <= 1e-4)


def test_tiny_outputs_fail_when_wrong_though_within_the_old_atol():
    ref = np.array([1e-8, -2e-8, 3e-8])
    assert not compare("y", "r", ref * 1.01, ref).passed  # 1% off: fails at any scale
    assert compare("y", "r", ref * (1 + 1e-6), ref).passed


def test_huge_outputs_pass_at_fp32_rounding():
    ref = np.array([6.7e11, 1.0, -3e11], dtype=np.float32)
    out = ref.copy()
    out[1] = 1.0 + 8e8  # absolute error far above 1e-5, but 1.2e-3 of the scale
    assert not compare("y", "r", out, ref).passed
    out[1] = ref[1] + 6.7e11 * 1e-6  # fp32 rounding at that magnitude
    assert compare("y", "r", out, ref).passed


def test_atol_and_rtol_add_the_allclose_rule():
    ref = np.array([1.0, 2.0])
    out = ref + 5e-5
    assert compare("y", "r", out, ref).passed  # 2.5e-5 of the scale
    assert not compare("y", "r", out, ref, atol=1e-5, rtol=0).passed


def test_integer_outputs_must_match_exactly_by_default():
    big = np.array([100000, 5])
    assert not compare("ids", "r", big + [1, 0], big).passed
