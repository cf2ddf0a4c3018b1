"""Built-in class-axis losses (inputs carry a class axis, see ``classes=True``).

Registered by the built-in plugin together with :mod:`customloss.builtin`.  Every loss
is written in the DSL, so its gradient can be inspected with ``loss.grad()``.
"""

from __future__ import annotations

import customloss.dsl as cl
from customloss.loss import Loss, loss

__all__ = ["CLASS_LOSSES", "class_balanced"]


@loss(
    classes=True,
    params={"class_weight": 1.0, "label_smoothing": 0.0},
    class_params=("class_weight",),
    domains={"label_smoothing": "probability"},
    index_mean_weight=lambda z, y, class_weight, label_smoothing: cl.csum(class_weight * y),
    references=("PyTorch: torch.nn.functional.cross_entropy",),
)
def cross_entropy(z, y, class_weight, label_smoothing):
    r"""Cross-entropy on logits, torch's conventions.

    .. math:: \ell = -\sum_c w_c \tilde y_c \log \mathrm{softmax}(z)_c,
              \quad \tilde y = (1 - \varepsilon) y + \varepsilon / C

    Targets are class indices (gathered, never one-hot; ``ignore_index`` positions are
    dropped) or probabilities. With class indices the mean is torch's weighted mean
    ``sum_n l_n / sum_n w_{y_n}``; with probabilities it is the mean over samples.

    Args:
        class_weight: per-class weights ``w_c`` (scalar or length-C vector; default 1).
        label_smoothing: ``epsilon`` in [0, 1].

    References:
        PyTorch ``torch.nn.functional.cross_entropy``; Szegedy et al. 2016, "Rethinking
        the Inception Architecture", sec. 7 (label smoothing).
    """
    smoothed = (1 - label_smoothing) * y + label_smoothing / cl.num_classes()
    # (A where(label_smoothing > 0, ...) around the smoothing term would let the compiled
    # path drop its pass over all classes when label_smoothing = 0, 1.28x -> ~1.05x
    # F.cross_entropy, but it puts a kink in d/d label_smoothing at 0: not done.)
    return -cl.csum(class_weight * smoothed * cl.log_softmax(z))


@loss(
    domains={"q": "probability", "y": "probability"},
    classes=True,
    references=("Seed documents: categorical cross-entropy",),
)
def categorical_crossentropy(q, y):
    r"""Categorical cross-entropy on *probabilities*: :math:`-\sum_c y_c \log q_c`.

    ``0 log 0 = 0``: a class with ``y_c = 0`` contributes nothing, even where ``q_c = 0``.

    Cat 0.6 / dog 0.4 with truth cat gives :math:`-\log 0.6 = 0.5108`.

    References:
        Goodfellow, Bengio, Courville, "Deep Learning" (2016), sec. 6.2.2.3.
    """
    return -cl.csum(cl.xlogy(y, q))


@loss(
    domains={"q": "probability", "p": "probability"},
    classes=True,
    references=("PyTorch: F.kl_div(q.log(), p, reduction='batchmean') for (N, C) inputs",),
)
def kl_div(q, p):
    r"""Kullback-Leibler divergence :math:`\sum_c p_c \log(p_c / q_c)` (``0 log 0 = 0``).

    ``input`` is the predicted distribution ``q``, ``target`` the true distribution
    ``p``.  The mean is over samples: for ``(N, C)`` inputs it equals
    ``F.kl_div(q.log(), p, reduction="batchmean")``; for ``(N, C, d1, ...)`` every
    position is a sample, so it is ``batchmean`` divided by ``d1 * ...``.

    References:
        Kullback & Leibler 1951, "On Information and Sufficiency".
    """
    return cl.csum(cl.xlogy(p, p) - cl.xlogy(p, q))


@loss(
    classes=True,
    params={"alpha": 1.0, "gamma": 2.0},
    class_params=("alpha",),
    domains={"gamma": "nonnegative"},
    references=("Lin et al. 2017, Focal Loss for Dense Object Detection, eq. 5",),
)
def softmax_focal(z, y, alpha, gamma):
    r"""Multi-class focal loss on logits: :math:`-\alpha_t (1 - p_t)^\gamma \log p_t`.

    :math:`p_t = \sum_c y_c\,\mathrm{softmax}(z)_c`, :math:`\alpha_t = \sum_c y_c \alpha_c`.

    Args:
        alpha: per-class weights (default 1: no weighting).
        gamma: focusing parameter (0 gives cross-entropy).

    References:
        Lin et al. 2017, "Focal Loss for Dense Object Detection", eq. 5.
    """
    p_t = cl.csum(y * cl.softmax(z))
    return -cl.csum(alpha * y) * (1 - p_t) ** gamma * cl.log(p_t)


@loss(
    classes=True,
    params={"epsilon": 1.0},
    references=("Leng et al. 2022, PolyLoss, eq. 3 (Poly-1)",),
)
def poly1(z, y, epsilon):
    r"""Poly-1 loss: cross-entropy + :math:`\varepsilon (1 - p_t)`.

    References:
        Leng et al. 2022, "PolyLoss: A Polynomial Expansion Perspective of
        Classification Loss Functions", eq. 3.
    """
    ce = -cl.csum(y * cl.log_softmax(z))
    return ce + epsilon * (1 - cl.csum(y * cl.softmax(z)))


def class_balanced(base: str = "ce") -> Loss:
    r"""Class-balanced loss (Cui et al. 2019) on logits, for ``base`` in ce/focal/bce.

    Weights :math:`w_c = (1-\beta)/(1-\beta^{n_c})`, normalised to sum to ``C`` (the
    :math:`1-\beta` factor cancels in the normalisation and is left out). As in the
    paper's eq. 3 (and the authors' code), a sample weighs :math:`w_y`, its own
    class's weight (:math:`\sum_c y_c w_c` for probability targets), whatever the base:
    ``ce``: :math:`-w_y \log \mathrm{softmax}(z)_y`; ``bce``: :math:`w_y` times the
    binary cross-entropies with logits summed over the classes; ``focal``: :math:`w_y`
    times the sigmoid focal terms :math:`(1-p_t)^\gamma \mathrm{BCE}` summed over the
    classes.

    Args:
        base: ``"ce"``, ``"focal"`` or ``"bce"``.

    References:
        Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of Samples", eq. 3.
    """
    if base not in ("ce", "focal", "bce"):
        raise ValueError(f"class_balanced: unknown base {base!r}; valid: 'ce', 'focal', 'bce'")
    name = "class_balanced" if base == "ce" else f"class_balanced_{base}"
    params = {"counts": None, "beta": 0.999}
    if base == "focal":
        params["gamma"] = 2.0

    def weights(counts, beta):
        # (1 - beta) cancels in the normalisation; 1 - beta**n is written as
        # 1 - exp(n log beta), which the compilers turn into -expm1(n log beta): no
        # cancellation in float32 for beta near 1 (1 - 0.999**5 lost 4 digits before);
        # beta = 0 keeps the power (log 0 would make d/dn 0 * inf; the power's
        # derivatives are exact there, and d/dbeta = 1 for a count of 1)
        w = cl.where(beta > 0, 1 / (1 - cl.exp(counts * cl.log(beta))), 1 / (1 - beta**counts))
        return w * cl.num_classes() / cl.csum(w)

    if base == "ce":

        def fn(z, y, counts, beta):
            return -cl.csum(weights(counts, beta) * y * cl.log_softmax(z))

    elif base == "bce":

        def fn(z, y, counts, beta):
            bce = y * cl.softplus(-z) + (1 - y) * cl.softplus(z)
            return cl.csum(weights(counts, beta) * y) * cl.csum(bce)

    else:

        def fn(z, y, counts, beta, gamma):
            p = cl.sigmoid(z)
            bce = -(y * cl.log(p) + (1 - y) * cl.log(1 - p))
            p_t = p * y + (1 - p) * (1 - y)
            return cl.csum(weights(counts, beta) * y) * cl.csum(bce * (1 - p_t) ** gamma)

    built = loss(
        name,
        classes=True,
        params=params,
        # beta = 1 would be 0/0 in the weights (the limit is uniform weights)
        domains={"counts": "positive", "beta": "[0, 1)", "gamma": "nonnegative"}
        if "gamma" in params
        else {"counts": "positive", "beta": "[0, 1)"},
        doc=class_balanced.__doc__,
        references=("Cui et al. 2019, Class-Balanced Loss, eq. 3",),
    )(fn)
    built.variants["base"] = class_balanced  # cl.get("class_balanced", base="focal")
    return built


@loss(
    classes=True,
    params={"counts": None, "max_margin": 0.5, "s": 30.0},
    domains={"counts": "positive"},
    references=("Cao et al. 2019, LDAM loss, eq. 13",),
)
def ldam(z, y, counts, max_margin, s):
    r"""Label-distribution-aware margin loss on logits.

    Margins :math:`m_c \propto n_c^{-1/4}` with the largest equal to ``max_margin``;
    :math:`\ell = \mathrm{CE}(s (z - m \odot y), y)`. With class-index targets the
    one-hot is built inside the kernel (the margin makes the target enter non-linearly).

    References:
        Cao et al. 2019, "Learning Imbalanced Datasets with Label-Distribution-Aware
        Margin Loss", eq. 13.
    """
    m = max_margin * counts ** (-0.25) / cl.cmax(counts ** (-0.25))
    return -cl.csum(y * cl.log_softmax(s * (z - m * y)))


CLASS_LOSSES: tuple[Loss, ...] = (
    cross_entropy,
    categorical_crossentropy,
    kl_div,
    softmax_focal,
    poly1,
    class_balanced("ce"),
    class_balanced("focal"),
    class_balanced("bce"),
    ldam,
)
