r"""Robust regression losses for customloss (the ``robust`` plugin).

Barron's general adaptive robust loss and the classic special cases it contains, all
written in the customloss DSL on the scaled residual :math:`u = ((p - y)/c)^2`.

References:
    Barron, J. T. (2019). A General and Adaptive Robust Loss Function. CVPR,
    eqs. (1)-(8) (the loss, its limits and its special cases).
"""

from __future__ import annotations

import sympy

import customloss as cl

__version__ = "0.1.0"

__all__ = [
    "LOSSES",
    "cauchy",
    "charbonnier",
    "geman_mcclure",
    "general_robust",
    "register_losses",
    "welsch",
]

#: ``alpha`` at or beyond these values selects the alpha = -inf / +inf limits.  In
#: float32 the constants round to -inf/+inf, so only the infinities themselves match;
#: finite alphas of this size are numerically the limits anyway.
NEG_INF_ALPHA = -1e300
POS_INF_ALPHA = 1e300

BARRON_2019 = (
    "Barron, J. T. (2019). A General and Adaptive Robust Loss Function. CVPR, "
    "eq. (1) (general form) and eq. (8) (limits)"
)


def _u(p: sympy.Expr, y: sympy.Expr, c: sympy.Expr) -> sympy.Expr:
    return ((p - y) / c) ** 2


@cl.loss(params={"alpha": 1.0, "c": 1.0}, references=(BARRON_2019,))
def general_robust(p, y, alpha, c):
    r"""Barron's general and adaptive robust loss; ``alpha`` may be any real or +-inf.

    .. math::
        \rho(x, \alpha, c) = \frac{|\alpha - 2|}{\alpha}
        \left(\left(\frac{(x/c)^2}{|\alpha - 2|} + 1\right)^{\alpha/2} - 1\right),
        \qquad x = p - y

    with its limits selected where the formula is singular:
    :math:`\alpha = 2`: :math:`\tfrac12 (x/c)^2`;
    :math:`\alpha = 0`: :math:`\log(\tfrac12 (x/c)^2 + 1)`;
    :math:`\alpha = -\infty`: :math:`1 - \exp(-\tfrac12 (x/c)^2)`;
    :math:`\alpha = +\infty`: :math:`\exp(\tfrac12 (x/c)^2) - 1`.
    The power is written as ``exp((alpha/2) log1p(.))`` so the compiled code uses
    ``expm1``/``log1p`` and stays accurate as ``alpha`` approaches 0 or -inf.  At
    ``alpha == 0`` the branch also carries the first-order term in ``alpha`` (zero in
    value), so a learnable ``alpha`` gets its true gradient there; at ``alpha == 2``
    that gradient diverges (like ``log|alpha - 2|``) and the branch reports 0.

    Args:
        p: prediction.
        y: target.
        alpha: shape: 2 = L2, 1 = Charbonnier, 0 = Cauchy, -2 = Geman-McClure,
            -inf = Welsch; may be a learnable tensor.
        c: scale (> 0) of the quadratic bowl near zero; may be a learnable tensor.

    References:
        Barron (2019), A General and Adaptive Robust Loss Function, eqs. (1) and (8).
    """
    u = _u(p, y, c)
    b = cl.abs(alpha - 2)
    general = b / alpha * (cl.exp(alpha / 2 * cl.log(u / b + 1)) - 1)
    log_term = cl.log(u / 2 + 1)
    # d rho / d alpha at alpha = 0 (the limit of the derivative; see the tests).
    d_alpha_at_0 = log_term**2 / 4 - log_term / 2 + u / (2 * (u + 2))
    return cl.where(
        alpha <= NEG_INF_ALPHA,
        1 - cl.exp(-u / 2),
        cl.where(
            sympy.Eq(alpha, 0),
            log_term + alpha * d_alpha_at_0,
            cl.where(
                sympy.Eq(alpha, 2),
                u / 2,
                cl.where(alpha >= POS_INF_ALPHA, cl.exp(u / 2) - 1, general),
            ),
        ),
    )


@cl.loss(params={"c": 1.0}, references=(BARRON_2019, "Cauchy / Lorentzian loss"))
def cauchy(p, y, c):
    r"""Cauchy (Lorentzian) loss, Barron's ``alpha = 0``.

    .. math:: \rho(x, c) = \log\left(\tfrac12 (x/c)^2 + 1\right), \qquad x = p - y

    Args:
        c: scale (> 0).

    References:
        Black and Anandan (1996); Barron (2019), eq. (8), alpha = 0.
    """
    return cl.log(_u(p, y, c) / 2 + 1)


@cl.loss(params={"c": 1.0}, references=(BARRON_2019, "Geman and McClure (1985)"))
def geman_mcclure(p, y, c):
    r"""Geman-McClure loss, Barron's ``alpha = -2``.

    .. math:: \rho(x, c) = \frac{2 (x/c)^2}{(x/c)^2 + 4}, \qquad x = p - y

    Args:
        c: scale (> 0).

    References:
        Geman and McClure (1985); Barron (2019), Sec. 2, alpha = -2.
    """
    u = _u(p, y, c)
    return 2 * u / (u + 4)


@cl.loss(params={"c": 1.0}, references=(BARRON_2019, "Dennis and Welsch (1978)"))
def welsch(p, y, c):
    r"""Welsch (Leclerc) loss, Barron's ``alpha = -inf``.

    .. math:: \rho(x, c) = 1 - \exp\left(-\tfrac12 (x/c)^2\right), \qquad x = p - y

    Args:
        c: scale (> 0).

    References:
        Dennis and Welsch (1978); Barron (2019), eq. (8), alpha = -inf.
    """
    return 1 - cl.exp(-_u(p, y, c) / 2)


@cl.loss(params={"c": 1.0}, references=(BARRON_2019, "Charbonnier et al. (1994)"))
def charbonnier(p, y, c):
    r"""Charbonnier (pseudo-Huber, L1-L2) loss, Barron's ``alpha = 1``.

    .. math:: \rho(x, c) = \sqrt{(x/c)^2 + 1} - 1, \qquad x = p - y

    Written as :math:`u / (\sqrt{u + 1} + 1)`, equal but without cancellation for
    small residuals.

    Args:
        c: scale (> 0).

    References:
        Charbonnier et al. (1994); Barron (2019), Sec. 2, alpha = 1.
    """
    u = _u(p, y, c)
    return u / (cl.sqrt(u + 1) + 1)


#: The losses this plugin registers.
LOSSES = (general_robust, cauchy, geman_mcclure, welsch, charbonnier)


@cl.hookimpl
def register_losses(register):
    """Register the robust losses with customloss."""
    for loss in LOSSES:
        register(loss)
