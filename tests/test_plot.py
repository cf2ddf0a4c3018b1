"""customloss.plot: the curves against closed forms, the figure, and the errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import sympy

import customloss as cl
from customloss import plot

LIN_GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_focal_p_t_curves_are_lin_et_al_figure_1():
    # Lin et al. (2017), fig. 1: FL(p_t) = -(1 - p_t)**gamma log(p_t), no alpha.
    curves = plot.curves("focal", param="gamma", values=LIN_GAMMAS, x="p_t")
    assert [c.label for c in curves] == [f"gamma = {g:g}" for g in LIN_GAMMAS]
    for gamma, c in zip(LIN_GAMMAS, curves, strict=True):
        p = c.x
        assert p.min() > 0 and p.max() < 1
        np.testing.assert_allclose(c.value, -((1 - p) ** gamma) * np.log(p), rtol=1e-9)
        # d FL / d logit, with p = sigmoid(x): gamma p (1-p)^g log p - (1-p)^(g+1)
        expected = gamma * p * (1 - p) ** gamma * np.log(p) - (1 - p) ** (gamma + 1)
        np.testing.assert_allclose(c.gradient, expected, rtol=1e-7, atol=1e-12)
        assert c.params["alpha"] == -1.0  # the preset: no alpha-balancing


def test_focal_alpha_set_by_caller_overrides_the_preset():
    (c,) = plot.curves("focal", params={"alpha": 0.25, "gamma": 2.0}, x="p_t")
    p = c.x
    np.testing.assert_allclose(c.value, -0.25 * (1 - p) ** 2 * np.log(p), rtol=1e-9)


def test_sweeping_alpha_is_not_overridden_by_the_preset():
    curves = plot.curves("focal", param="alpha", values=(0.25, 0.75), params={"gamma": 0.0})
    x = curves[0].x  # logit axis by default, target 1
    for alpha, c in zip((0.25, 0.75), curves, strict=True):
        np.testing.assert_allclose(c.value, alpha * np.log1p(np.exp(-x)), rtol=1e-9)


def test_regression_losses_on_the_residual_axis():
    (c,) = plot.curves("mse")
    assert plot.input_kind(cl.get("mse")) == "value"
    r = c.x
    assert (r.min(), r.max()) == (-3.0, 3.0)
    np.testing.assert_allclose(c.value, r**2, atol=1e-12)
    np.testing.assert_allclose(c.gradient, 2 * r, atol=1e-12)
    (h,) = plot.curves("huber", params={"delta": 1.0}, target=2.0, x_range=(-4.0, 4.0))
    r = h.x
    huber = np.where(np.abs(r) <= 1, r**2 / 2, np.abs(r) - 0.5)
    np.testing.assert_allclose(h.value, huber, atol=1e-12)
    np.testing.assert_allclose(h.gradient, np.clip(r, -1, 1), atol=1e-12)


def test_probability_losses_on_the_p_t_axis():
    (c,) = plot.curves("bce")
    assert plot.input_kind(cl.get("bce")) == "probability"
    p = c.x
    np.testing.assert_allclose(c.value, -np.log(p), rtol=1e-12)
    np.testing.assert_allclose(c.gradient, -1 / p, rtol=1e-9)
    (neg,) = plot.curves("bce", target=0.0)  # p_t = 1 - p for a negative
    np.testing.assert_allclose(neg.value, -np.log(neg.x), rtol=1e-9)


def test_logit_axis_with_a_negative_target():
    (c,) = plot.curves("bce_with_logits", target=0.0, x_range=(-3.0, 3.0), points=7)
    np.testing.assert_allclose(c.x, np.linspace(-3, 3, 7))
    np.testing.assert_allclose(c.value, np.log1p(np.exp(c.x)), rtol=1e-12)
    np.testing.assert_allclose(c.gradient, _sigmoid(c.x), rtol=1e-12)


def test_class_axis_losses_use_class_zero_as_ground_truth():
    (c,) = plot.curves("cross_entropy", classes=3)
    t = c.x  # logits (t, 0, 0), target class 0
    softmax0 = np.exp(t) / (np.exp(t) + 2)
    np.testing.assert_allclose(c.value, -np.log(softmax0), rtol=1e-10)
    np.testing.assert_allclose(c.gradient, softmax0 - 1, rtol=1e-9, atol=1e-12)
    (pt,) = plot.curves("cross_entropy", x="p_t", classes=4)
    np.testing.assert_allclose(pt.value, -np.log(pt.x), rtol=1e-9)
    (q,) = plot.curves("categorical_crossentropy", x="p_t")
    assert plot.input_kind(cl.get("categorical_crossentropy")) == "probability"
    np.testing.assert_allclose(q.value, -np.log(q.x), rtol=1e-12)
    np.testing.assert_allclose(q.gradient, -1 / q.x, rtol=1e-9)


def test_required_per_class_params_are_taken_from_params():
    counts = (1000.0, 10.0)
    (c,) = plot.curves("ldam", params={"counts": counts, "s": 1.0, "max_margin": 0.5})
    # Cao et al. (2019): margin of class 0 = 0.5 * (n0 / n_min)**(-1/4)
    m0 = 0.5 * (counts[0] ** -0.25) / max(n**-0.25 for n in counts)
    t = c.x
    logit0 = t - m0
    np.testing.assert_allclose(c.value, np.log1p(np.exp(-logit0)), rtol=1e-9)


def test_input_kinds():
    assert plot.input_kind(cl.get("focal")) == "logit"
    assert plot.input_kind(cl.get("cross_entropy")) == "logit"
    assert plot.input_kind(cl.get("kl_div")) == "probability"
    mine = cl.define("mine", "log(1 + p) - y", inputs=("p", "y"))
    assert plot.input_kind(mine) == "value"


def test_plot_loss_figure_has_the_curves_and_saves(tmp_path):
    # matplotlib: the plot extra, part of the dev install
    fig = plot.plot_loss("focal", param="gamma", values=LIN_GAMMAS, x="p_t")
    loss_ax, grad_ax = fig.axes
    assert len(loss_ax.lines) == len(LIN_GAMMAS)
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == [
        f"gamma = {g:g}" for g in LIN_GAMMAS
    ]
    x, y = loss_ax.lines[2].get_xydata().T  # gamma = 1
    np.testing.assert_allclose(y, -(1 - x) * np.log(x), rtol=1e-9)
    assert "Lin et al. (2017), fig. 1" in fig._suptitle.get_text()
    assert loss_ax.get_xlim() == (0.0, 1.0)
    out = tmp_path / "focal.png"
    fig.savefig(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    single = plot.plot_loss(cl.get("mse"), gradient=False)
    assert len(single.axes) == 1 and single.axes[0].get_legend() is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x": "prob"}, "unknown x axis 'prob'"),
        ({"param": "gama", "values": (1,)}, "has no param 'gama'"),
        ({"param": "gamma"}, "needs at least one value"),
        ({"values": (1, 2)}, "values= needs param="),
        ({"x": "p_t", "target": 0.5}, "needs the target 0 or 1"),
        ({"x": "p_t", "x_range": (0.0, 1.0)}, "inside (0, 1)"),
        ({"x_range": (2.0, 1.0)}, "low < high"),
        ({"points": 1}, "points must be"),
    ],
)
def test_mistakes_raise_value_errors(kwargs, message):
    with pytest.raises(ValueError) as info:
        plot.curves("focal", **kwargs)
    assert message in str(info.value)


def test_class_axis_mistakes():
    with pytest.raises(ValueError, match="needs a value for param 'counts'"):
        plot.curves("ldam")
    with pytest.raises(ValueError, match="not defined for the class-axis loss"):
        plot.curves("cross_entropy", x="residual")
    with pytest.raises(ValueError, match="do not pass target"):
        plot.curves("cross_entropy", target=1.0)


def test_latex_prints_powers_of_class_reductions():
    # the class reductions' LaTeX printers take the exponent SymPy hands them
    grad = cl.get("poly1").grad()
    text = sympy.latex(grad)
    assert r"\left(\sum_{c}\left(e^{z}\right)\right)^{2}" in text
    assert cl.get("poly1").grad_latex() == text


def test_importing_plot_does_not_import_matplotlib():
    code = "import sys, customloss.plot; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
