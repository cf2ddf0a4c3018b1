r"""Robust regression losses for customloss (the ``robust`` plugin).

Barron's general adaptive robust loss and the classic special cases it contains, all
written in the customloss DSL on the residual :math:`x = p - y` and the scaled residual
:math:`u = (x/c)^2`.

Every loss is finite wherever its true value is, in float32 and bfloat16 too, for
residuals up to the dtype's range (``customloss.check`` scans ``x`` to ``1e30``, where
:math:`u = 10^{60}` does not fit a float32).  Each one is a ``where`` on the size of the
residual: while :math:`|x| \le` :data:`LARGE` :math:`\cdot |c|` it is the textbook
formula in :math:`u`; beyond, an equal form that never squares :math:`x/c` (such as
:math:`\log(1 + v^2) = 2 \log|v| + \log(1 + v^{-2})`), so neither the value nor any
derivative meets ``inf/inf`` or ``0 * inf``.  The forms are equal, not approximations:
the branch only decides which is evaluated.

References:
    Barron, J. T. (2019). A General and Adaptive Robust Loss Function. CVPR,
    eqs. (1)-(8) (the loss, its limits and its special cases).
"""

from __future__ import annotations

import sympy

import customloss as cl

__version__ = "0.1.0"

__all__ = [
    "LARGE",
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

#: Residuals with ``|x| > LARGE * |c|`` use the large-residual forms.  Below it the
#: squares stay small (``u <= 1e4`` fits even float16); above it the large-residual forms
#: are as accurate as the textbook ones (no cancellation once ``|x/c| >= 1``).
LARGE = 100.0

BARRON_2019 = (
    "Barron, J. T. (2019). A General and Adaptive Robust Loss Function. CVPR, "
    "eq. (1) (general form) and eq. (8) (limits)"
)


class _Residual:
    """The residual ``x = p - y``, which branch a point takes, and the scale to use."""

    def __init__(self, p: sympy.Expr, y: sympy.Expr, c: sympy.Expr, k: sympy.Expr = 1) -> None:
        self.x = p - y
        #: True where the textbook forms are used: ``|x| <= LARGE |c| k``.  With
        #: ``c == 0`` only ``x == 0`` is small (the loss is 0 there, its limit).
        self.small = cl.abs(self.x) <= LARGE * cl.abs(c) * k
        #: the scale in the small branch: ``c``, or 1 at ``c == 0`` (where ``x == 0``)
        self.c_small = cl.where(sympy.Eq(c, 0), 1, c)
        self.c = c

    def u_small(self) -> sympy.Expr:
        """``u = (x/c)^2`` for the small branch."""
        return (self.x / self.c_small) ** 2


def _log1p_sq(r: _Residual, k: sympy.Expr = 1) -> sympy.Expr:
    r"""``log(1 + v^2)`` for ``v = x / (c k)``: ``2 log|v| + log1p(v^-2)`` when ``|v|`` is large."""
    small = (r.x / (r.c_small * k)) ** 2
    v = r.x / (r.c * k)
    return cl.where(r.small, cl.log1p(small), 2 * cl.log(cl.abs(v)) + cl.log1p(v**-2))


def _share(r: _Residual, k: sympy.Expr = 1) -> sympy.Expr:
    r"""``v^2 / (1 + v^2)`` for ``v = x / (c k)``: ``1 / (1 + v^-2)`` when ``|v|`` is large."""
    small = (r.x / (r.c_small * k)) ** 2
    v = r.x / (r.c * k)
    return cl.where(r.small, small / (small + 1), 1 / (1 + v**-2))


def _welsch(r: _Residual) -> sympy.Expr:
    r"""``1 - exp(-u/2)``; exactly 1 for large ``|x/c|``.

    Beyond ``|x| = LARGE |c|`` (``u/2 > 5000``) ``exp(-u/2)`` is below the smallest
    float64 subnormal (``exp(-745)``), so the loss is 1 and its derivatives (the true
    values are about ``e^{-5000}`` times a polynomial) are 0 in every floating-point
    type; writing the constant avoids ``u`` overflowing and ``0 * inf`` in ``d/dc``.
    At ``c == 0`` (and ``x != 0``) the loss is its limit, 1.
    """
    # the test is "large" (not "not small") so that a NaN residual takes the formula
    # and propagates
    large = cl.abs(r.x) > LARGE * cl.abs(r.c)
    return cl.where(large, 1, 1 - cl.exp(-r.u_small() / 2))


def _half_u(r: _Residual) -> sympy.Expr:
    """``u / 2`` (alpha = 2)."""
    # |x/c|**2 stays a square of the quotient (SymPy would expand (x/c)**2 into
    # x**2/c**2, and x**2 overflows first)
    return cl.where(r.small, r.u_small() / 2, cl.abs(r.x / r.c) ** 2 / 2)


@cl.loss(params={"alpha": 1.0, "c": 1.0}, domains={"c": "positive"}, references=(BARRON_2019,))
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
    The power is written as ``exp((alpha/2) L)`` with
    :math:`L = \log(1 + v^2)`, :math:`v = x / (c \sqrt{|\alpha - 2|})`, so the compiled
    code uses ``expm1``/``log1p`` and stays accurate as ``alpha`` approaches 0 or -inf.
    Where :math:`|v| > 100` (:data:`LARGE`), :math:`L` is computed as
    :math:`2 \log|v| + \log(1 + v^{-2})`, which never squares ``v``: the value and the
    gradients stay finite for residuals to the dtype's range (an ``inf`` only where the
    true value itself exceeds it); the limits use the forms of :func:`cauchy` and
    :func:`welsch`.  At ``alpha == 0`` the branch also carries the first-order term in
    ``alpha`` (zero in value), so a learnable ``alpha`` gets its true gradient there; at
    ``alpha == 2`` that gradient diverges (like ``log|alpha - 2|``) and the branch
    reports 0.

    Args:
        p: prediction.
        y: target.
        alpha: shape: 2 = L2, 1 = Charbonnier, 0 = Cauchy, -2 = Geman-McClure,
            -inf = Welsch; may be a learnable tensor.
        c: scale (> 0) of the quadratic bowl near zero; may be a learnable tensor.

    References:
        Barron (2019), A General and Adaptive Robust Loss Function, eqs. (1) and (8).
    """
    b = cl.abs(alpha - 2)
    k = cl.sqrt(b)
    # |alpha - 2|/alpha, written as 2/alpha - 1 (alpha < 2) or 1 - 2/alpha (alpha > 2) so
    # that its alpha-derivative is one term (-+2/alpha^2), not sign(alpha - 2)/alpha -
    # b/alpha^2: two products with an overflowing power would make inf - inf where the
    # true gradient is only large.  Next to alpha = 2 (no overflow there for moderate
    # residuals) b/alpha itself, which has no cancellation.
    b_over_alpha = cl.where(
        cl.abs(alpha - 2) < sympy.Rational(1, 2),
        b / alpha,
        cl.where(alpha < 2, 2 / alpha - 1, 1 - 2 / alpha),
    )
    general = b_over_alpha * (cl.exp(alpha / 2 * _log1p_sq(_Residual(p, y, c, k), k)) - 1)
    r2 = _Residual(p, y, c, sympy.sqrt(2))
    log_term = _log1p_sq(r2, sympy.sqrt(2))
    # d rho / d alpha at alpha = 0 (the limit of the derivative; see the tests):
    # log_term^2/4 - log_term/2 + u/(2(u + 2)), the last term as share/2
    d_alpha_at_0 = log_term**2 / 4 - log_term / 2 + _share(r2, sympy.sqrt(2)) / 2
    r = _Residual(p, y, c)
    return cl.where(
        alpha <= NEG_INF_ALPHA,
        _welsch(r),
        cl.where(
            sympy.Eq(alpha, 0),
            log_term + alpha * d_alpha_at_0,
            cl.where(
                sympy.Eq(alpha, 2),
                _half_u(r),
                cl.where(alpha >= POS_INF_ALPHA, cl.exp(_half_u(r)) - 1, general),
            ),
        ),
    )


@cl.loss(
    params={"c": 1.0},
    domains={"c": "positive"},
    references=(BARRON_2019, "Cauchy / Lorentzian loss"),
)
def cauchy(p, y, c):
    r"""Cauchy (Lorentzian) loss, Barron's ``alpha = 0``.

    .. math:: \rho(x, c) = \log\left(\tfrac12 (x/c)^2 + 1\right), \qquad x = p - y

    Written as :math:`\log(1 + v^2)` with :math:`v = x / (\sqrt2 c)`; where
    :math:`|x/c| > 100` (:data:`LARGE`) as :math:`2 \log|v| + \log(1 + v^{-2})`, which
    never squares ``v`` (finite value and gradients for residuals to ``1e30`` in float32).

    Args:
        c: scale (> 0).

    References:
        Black and Anandan (1996); Barron (2019), eq. (8), alpha = 0.
    """
    k = sympy.sqrt(2)
    return _log1p_sq(_Residual(p, y, c, k), k)


@cl.loss(
    params={"c": 1.0},
    domains={"c": "positive"},
    references=(BARRON_2019, "Geman and McClure (1985)"),
)
def geman_mcclure(p, y, c):
    r"""Geman-McClure loss, Barron's ``alpha = -2``.

    .. math:: \rho(x, c) = \frac{2 (x/c)^2}{(x/c)^2 + 4}, \qquad x = p - y

    Where :math:`|x/c| > 100` (:data:`LARGE`) written as :math:`2 / (1 + 4 (c/x)^2)`,
    which never squares ``x/c`` (no ``inf/inf`` for residuals to ``1e30`` in float32).

    Args:
        c: scale (> 0).

    References:
        Geman and McClure (1985); Barron (2019), Sec. 2, alpha = -2.
    """
    r = _Residual(p, y, c)
    u = r.u_small()
    return cl.where(r.small, 2 * u / (u + 4), 2 / (1 + 4 * (r.c / r.x) ** 2))


@cl.loss(
    params={"c": 1.0},
    domains={"c": "positive"},
    references=(BARRON_2019, "Dennis and Welsch (1978)"),
)
def welsch(p, y, c):
    r"""Welsch (Leclerc) loss, Barron's ``alpha = -inf``.

    .. math:: \rho(x, c) = 1 - \exp\left(-\tfrac12 (x/c)^2\right), \qquad x = p - y

    Where :math:`|x/c| > 100` (:data:`LARGE`) the loss is its limit, the constant 1
    (:math:`1 - e^{-5000}` is 1 in float64), with derivative 0, so no derivative is
    ``0 * inf``. ``c`` must be positive.

    Args:
        c: scale (> 0).

    References:
        Dennis and Welsch (1978); Barron (2019), eq. (8), alpha = -inf.
    """
    return _welsch(_Residual(p, y, c))


@cl.loss(
    params={"c": 1.0},
    domains={"c": "positive"},
    references=(BARRON_2019, "Charbonnier et al. (1994)"),
)
def charbonnier(p, y, c):
    r"""Charbonnier (pseudo-Huber, L1-L2) loss, Barron's ``alpha = 1``.

    .. math:: \rho(x, c) = \sqrt{(x/c)^2 + 1} - 1, \qquad x = p - y

    Written as :math:`u / (\sqrt{u + 1} + 1)`, equal but without cancellation for
    small residuals; where :math:`|x/c| > 100` (:data:`LARGE`) as
    :math:`|x/c| \sqrt{1 + (c/x)^2} - 1`, which never squares ``x/c``.

    Args:
        c: scale (> 0).

    References:
        Charbonnier et al. (1994); Barron (2019), Sec. 2, alpha = 1.
    """
    r = _Residual(p, y, c)
    u = r.u_small()
    v = r.x / r.c
    return cl.where(r.small, u / (cl.sqrt(u + 1) + 1), cl.abs(v) * cl.sqrt(1 + v**-2) - 1)


#: The losses this plugin registers.
LOSSES = (general_robust, cauchy, geman_mcclure, welsch, charbonnier)


@cl.hookimpl
def register_losses(register):
    """Register the robust losses with customloss."""
    for loss in LOSSES:
        register(loss)
