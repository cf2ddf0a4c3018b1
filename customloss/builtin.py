r"""The built-in catalogue of elementwise losses, registered as the default plugin.

Every loss is written in the design DSL, so its formula and gradient can be read
(``customloss.get("focal").grad()``), and every one is registered through the same
``register_losses`` hook as a third-party plugin's (plugin name ``builtin``).

Input names: ``p`` is a prediction (a value or a probability), ``x`` a logit or score,
``y`` the target.  Each loss is elementwise; calling it reduces with
``reduction="mean"`` by default, like ``torch.nn.functional``.
"""

from __future__ import annotations

from customloss.dsl import (
    abs,
    cosh,
    exp,
    log,
    log_sigmoid,
    maximum,
    sigmoid,
    where,
)
from customloss.hookspecs import RegisterLoss, hookimpl
from customloss.loss import Loss, loss

__all__ = [
    "CATALOGUE",
    "asymmetric",
    "bce",
    "bce_with_logits",
    "focal",
    "hinge",
    "huber",
    "log_cosh",
    "mae",
    "mse",
    "poisson_nll",
    "quantile",
    "register_losses",
    "smooth_l1",
]

#: ``torch.nn.functional.binary_cross_entropy`` clamps each log at this value.
BCE_LOG_CLAMP = -100


@loss(references=("PyTorch: torch.nn.functional.mse_loss",))
def mse(p, y):
    r"""Mean squared error.

    .. math:: \ell(p, y) = (p - y)^2

    Args:
        p: prediction.
        y: target.

    References:
        Gauss (1809), least squares; same values as ``torch.nn.functional.mse_loss``.
    """
    return (p - y) ** 2


@loss(references=("PyTorch: torch.nn.functional.l1_loss",))
def mae(p, y):
    r"""Mean absolute error (L1 loss).

    .. math:: \ell(p, y) = |p - y|

    The gradient at ``p == y`` is 0 (the sign), as in ``torch.nn.functional.l1_loss``.

    References:
        Same values as ``torch.nn.functional.l1_loss``.
    """
    return abs(p - y)


@loss(
    params={"delta": 1.0},
    domains={"delta": "positive"},
    references=(
        "Huber, P. J. (1964). Robust Estimation of a Location Parameter. "
        "Annals of Mathematical Statistics 35(1), eq. (4)",
        "PyTorch: torch.nn.functional.huber_loss",
    ),
)
def huber(p, y, delta):
    r"""Huber loss: quadratic near zero, linear (slope ``delta``) beyond ``|r| = delta``.

    .. math::
        \ell = \tfrac12 r^2 \text{ if } |r| < \delta, \quad
        \delta (|r| - \tfrac12 \delta) \text{ otherwise}, \qquad r = p - y

    Args:
        delta: where the loss turns from quadratic to linear (> 0).

    References:
        Huber (1964), eq. (4); same values as ``torch.nn.functional.huber_loss``.
    """
    r = p - y
    # |r| < delta, as Huber's eq. (4) and torch's kernel: at |r| = delta the value and
    # slope agree either way; the second derivative is torch's (0, the linear branch)
    return where(abs(r) < delta, r**2 / 2, delta * (abs(r) - delta / 2))


@loss(
    params={"beta": 1.0},
    domains={"beta": "nonnegative"},
    references=(
        "Girshick, R. (2015). Fast R-CNN. ICCV, eq. (3)",
        "PyTorch: torch.nn.functional.smooth_l1_loss",
    ),
)
def smooth_l1(p, y, beta):
    r"""Smooth L1 loss: Huber divided by ``beta``; plain L1 for ``beta = 0``.

    .. math::
        \ell = \tfrac{1}{2\beta} r^2 \text{ if } |r| < \beta, \quad
        |r| - \tfrac12 \beta \text{ otherwise}, \qquad r = p - y

    Args:
        beta: width of the quadratic zone (>= 0).

    References:
        Girshick (2015), Fast R-CNN, eq. (3); same values as
        ``torch.nn.functional.smooth_l1_loss``.
    """
    r = p - y
    return where(abs(r) < beta, r**2 / (2 * beta), abs(r) - beta / 2)


@loss(
    references=(
        "Chen, P., Chen, G., Zhang, S. (2019). Log Hyperbolic Cosine Loss Improves "
        "Variational Auto-Encoder. (log-cosh reconstruction loss)",
    )
)
def log_cosh(p, y):
    r"""Log-cosh loss: about :math:`r^2/2` for small and :math:`|r| - \log 2` for large residuals.

    .. math:: \ell(p, y) = \log\cosh(p - y)

    The compiled code evaluates :math:`|r| + \operatorname{softplus}(-2|r|) - \log 2`,
    which does not overflow for large residuals.

    References:
        Chen et al. (2019), Log Hyperbolic Cosine Loss.
    """
    return log(cosh(p - y))


@loss(
    params={"q": 0.5},
    domains={"q": "probability"},
    references=(
        "Koenker, R., Bassett, G. (1978). Regression Quantiles. Econometrica 46(1), "
        "the check function rho_tau",
    ),
)
def quantile(p, y, q):
    r"""Quantile (pinball) loss; its minimiser is the ``q``-quantile of the target.

    .. math:: \ell(p, y) = \max\big(q (y - p),\ (q - 1)(y - p)\big)

    ``q = 0.5`` gives half the absolute error.

    Args:
        q: the quantile level in [0, 1] (0 and 1 give the one-sided hinges).

    References:
        Koenker and Bassett (1978), Regression Quantiles, the check function.
    """
    return maximum(q * (y - p), (q - 1) * (y - p))


@loss(
    domains={"p": "probability", "y": "probability"},
    references=("PyTorch: torch.nn.functional.binary_cross_entropy",),
)
def bce(p, y):
    r"""Binary cross-entropy on probabilities, each log clamped at -100 like PyTorch.

    .. math::
        \ell(p, y) = -\big[y \max(\log p, -100) + (1 - y) \max(\log(1 - p), -100)\big]

    Values equal ``torch.nn.functional.binary_cross_entropy``.  The gradient is the
    exact derivative of this formula; PyTorch instead divides by
    ``max(p (1 - p), 1e-12)``, so the two differ only where ``p (1 - p) < 1e-12``.
    Prefer ``bce_with_logits`` when you have logits.

    Args:
        p: predicted probability in [0, 1].
        y: target in [0, 1].

    References:
        Cover and Thomas (2006), Elements of Information Theory, eq. (2.1) (entropy)
        and Sec. 2.3 (relative entropy); the clamp follows
        ``torch.nn.functional.binary_cross_entropy``.
    """
    # maximum() propagates a NaN prediction; its derivative is guarded by the compiler
    # (the clamped branch has an exactly zero derivative, also at p = 0).
    log_p = maximum(log(p), BCE_LOG_CLAMP)
    log_1mp = maximum(log(1 - p), BCE_LOG_CLAMP)
    return -(y * log_p + (1 - y) * log_1mp)


@loss(
    domains={"y": "probability"},
    params={"pos_weight": 1.0},
    references=("PyTorch: torch.nn.functional.binary_cross_entropy_with_logits",),
)
def bce_with_logits(x, y, pos_weight):
    r"""Binary cross-entropy on logits, with a weight on the positive term.

    .. math::
        \ell(x, y) = -\big[w_{pos}\, y \log\sigma(x) + (1 - y) \log(1 - \sigma(x))\big]

    Stable for any logit (compiled with softplus).  ``pos_weight`` may be a scalar
    or, at call time, a per-class tensor broadcasting over the last axis.

    Args:
        x: logit.
        y: target in [0, 1].
        pos_weight: weight of the positive term.

    References:
        Same values as ``torch.nn.functional.binary_cross_entropy_with_logits``.
    """
    return -(pos_weight * y * log_sigmoid(x) + (1 - y) * log_sigmoid(-x))


@loss(
    domains={"y": "sign"},
    references=(
        "Cortes, C., Vapnik, V. (1995). Support-Vector Networks. Machine Learning 20, "
        "the soft-margin objective (hinge on the margin y f(x))",
    ),
)
def hinge(x, y):
    r"""Hinge loss for targets in {-1, +1}.

    .. math:: \ell(x, y) = \max(0,\ 1 - y x)

    At the kink (``y x = 1``) the gradient is half of each side's, ``-y/2``, as
    ``torch.maximum`` splits a tie; ``torch.relu(1 - y*x)`` would give 0 there.

    Args:
        x: the score (decision value).
        y: target, -1 or +1.

    References:
        Cortes and Vapnik (1995), Support-Vector Networks.
    """
    return maximum(0, 1 - y * x)


@loss(
    domains={"y": "probability", "gamma": "nonnegative"},
    params={"alpha": 0.25, "gamma": 2.0},
    references=(
        "Lin, T.-Y., Goyal, P., Girshick, R., He, K., Dollar, P. (2017). Focal Loss for "
        "Dense Object Detection. ICCV, eq. (5)",
        "torchvision.ops.sigmoid_focal_loss",
    ),
)
def focal(x, y, alpha, gamma):
    r"""Sigmoid focal loss on logits (alpha-balanced); ``alpha < 0`` disables the balancing.

    .. math::
        \ell = -\alpha_t (1 - p_t)^\gamma \log p_t, \quad p = \sigma(x),\
        p_t = p y + (1 - p)(1 - y),\ \alpha_t = \alpha y + (1 - \alpha)(1 - y)

    with :math:`-\log p_t` the binary cross-entropy on logits (also for soft targets).
    Same values as ``torchvision.ops.sigmoid_focal_loss`` with ``reduction="mean"``.

    Args:
        x: logit.
        y: target in [0, 1].
        alpha: weight of the positive class; < 0 for no weighting.
        gamma: focusing parameter (>= 0); 0 gives (alpha-weighted) cross-entropy.

    References:
        Lin et al. (2017), Focal Loss for Dense Object Detection, eq. (5).
    """
    ce = -(y * log_sigmoid(x) + (1 - y) * log_sigmoid(-x))
    # 1 - p_t, written without the cancellation of 1 - (p y + (1 - p)(1 - y)).
    one_minus_p_t = y * sigmoid(-x) + (1 - y) * sigmoid(x)
    # Where 1 - p_t underflows to 0, d/d gamma = ce (1 - p_t)**gamma log(1 - p_t) is
    # 0 * -inf; the compiler guards b**g * log(b) at b = 0 (the true value is 0).
    focal_term = ce * one_minus_p_t**gamma
    alpha_t = alpha * y + (1 - alpha) * (1 - y)
    return where(alpha >= 0, alpha_t * focal_term, focal_term)


@loss(
    domains={
        "y": "probability",
        "gamma_pos": "nonnegative",
        "gamma_neg": "nonnegative",
        "clip": "probability",
    },
    params={"gamma_pos": 0.0, "gamma_neg": 4.0, "clip": 0.05},
    references=(
        "Ridnik, T., Ben-Baruch, E., Zamir, N., Noy, A., Friedman, I., Protter, M., "
        "Zelnik-Manor, L. (2021). Asymmetric Loss For Multi-Label Classification. "
        "ICCV, eqs. (4)-(6)",
    ),
)
def asymmetric(x, y, gamma_pos, gamma_neg, clip):
    r"""Asymmetric loss (ASL) for multi-label classification, on logits.

    .. math::
        \ell = -\big[y (1 - p)^{\gamma_+} \log p
        + (1 - y)\, p_m^{\gamma_-} \log(1 - p_m)\big], \quad
        p = \sigma(x),\ p_m = \max(p - m, 0)

    Averaged like every loss here (the authors' module sums: use
    ``reduction="sum"`` for their numbers).  For ``clip = 0`` the negative log is
    computed from the logit, so it stays finite for large logits.

    Args:
        x: logit.
        y: target in {0, 1}.
        gamma_pos: focusing exponent of the positive term.
        gamma_neg: focusing exponent of the negative term.
        clip: probability margin ``m`` shifted off the negatives (>= 0).

    References:
        Ridnik et al. (2021), Asymmetric Loss For Multi-Label Classification,
        eqs. (4)-(6).
    """
    p = sigmoid(x)
    positive = y * (1 - p) ** gamma_pos * log_sigmoid(x)
    # p_m = max(p - clip, 0), written as a where() so that below the clip the term
    # and all its derivatives (also d/d gamma_neg: p_m**g * log(p_m)) are exactly 0.
    p_m = p - clip
    log_1m_pm = where(clip > 0, log(1 - p_m), log_sigmoid(-x))
    negative = (1 - y) * where(p > clip, p_m**gamma_neg * log_1m_pm, 0)
    return -(positive + negative)


@loss(
    domains={"y": "nonnegative"},
    references=("PyTorch: torch.nn.functional.poisson_nll_loss(log_input=True, full=False)",),
)
def poisson_nll(x, y):
    r"""Poisson negative log-likelihood with the log-rate as input, without ``log(y!)``.

    .. math:: \ell(x, y) = e^x - y x

    Args:
        x: log of the predicted rate.
        y: observed count (>= 0).

    References:
        McCullagh and Nelder (1989), Generalized Linear Models, Sec. 6.2 (Poisson
        log-likelihood); same values as ``torch.nn.functional.poisson_nll_loss``
        with ``log_input=True, full=False``.
    """
    return exp(x) - y * x


#: The built-in losses, in catalogue order.
CATALOGUE: tuple[Loss, ...] = (
    mse,
    mae,
    huber,
    smooth_l1,
    log_cosh,
    quantile,
    bce,
    bce_with_logits,
    hinge,
    focal,
    asymmetric,
    poisson_nll,
)


@hookimpl
def register_losses(register: RegisterLoss) -> None:
    """Register the built-in catalogue (this module is the ``builtin`` plugin).

    The class-axis losses of :mod:`customloss.builtin_classes` belong to it too.
    """
    from customloss.builtin_classes import CLASS_LOSSES

    for item in (*CATALOGUE, *CLASS_LOSSES):
        register(item)
