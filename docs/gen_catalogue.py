"""The loss catalogue page, generated from the registry when the site is built.

Used as an mkdocs hook (``hooks: [docs/gen_catalogue.py]`` in ``mkdocs.yml``): on every
build it adds ``catalogue.md`` and one PNG plot per loss to the site, from whatever
losses are registered in the building environment (the built-ins and the installed
plugins).  Each entry shows the formula and its gradient in LaTeX, the params, the
provider, the references and the loss and gradient curves
(:func:`customloss.plot.plot_loss`).

Run it as a script to write the page and plots into a folder for a look::

    python docs/gen_catalogue.py /tmp/catalogue
"""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.gen_catalogue")

#: The page's path in the site.
PAGE = "catalogue.md"
#: Folder of the plots, next to the page.
IMAGES = "catalogue"

#: Param sweeps drawn for built-in losses: name -> (param, values).
SWEEPS: dict[str, tuple[str, tuple[float, ...]]] = {
    "focal": ("gamma", (0.0, 0.5, 1.0, 2.0, 5.0)),  # Lin et al. (2017), fig. 1
    "asymmetric": ("gamma_neg", (0.0, 1.0, 2.0, 4.0)),
    "huber": ("delta", (0.5, 1.0, 2.0)),
    "smooth_l1": ("beta", (0.5, 1.0, 2.0)),
    "quantile": ("q", (0.1, 0.5, 0.9)),
    "bce_with_logits": ("pos_weight", (1.0, 3.0)),
    "softmax_focal": ("gamma", (0.0, 1.0, 2.0, 5.0)),
    "class_balanced_focal": ("gamma", (0.0, 1.0, 2.0)),
    "poly1": ("epsilon", (-1.0, 0.0, 1.0, 2.0)),
    "general_robust": ("alpha", (-2.0, 0.0, 1.0, 2.0)),
}
#: Values for params without a default, by param name (two classes: frequent, rare).
EXAMPLE_VALUES: dict[str, Any] = {"counts": (1000.0, 10.0)}

_BAR = "\u2223"  # DIVIDES, which looks like "|"
_ROLE_KIND = {"logit": "logit", "probability": "probability", "value": "value"}


def _anchor(name: str) -> str:
    """The id Python-Markdown's toc gives the heading ``## name``."""
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", name).strip().lower())


def _value(v: Any) -> str:
    if v is None:
        return "required"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(f"{x:g}" for x in v) + "]"
    return f"{float(v):g}"


def rst_to_markdown(text: str) -> str:
    """The docstring conventions of the catalogue (reST bits) as Markdown.

    ``.. math::`` blocks become ``$$ ... $$``, ``:math:`x``` becomes ``$x$``, double
    backquotes single ones; ``Args:`` and ``References:`` sections become lists.
    """
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(".. math::"):
            body = [stripped[len(".. math::") :].strip()]
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                body.append(lines[i].strip())
                i += 1
            formula = " ".join(b for b in body if b)
            out += ["", "$$", formula, "$$", ""]
            continue
        if stripped in ("Args:", "References:", "Returns:", "Note:", "Example:"):
            out += ["", f"**{stripped[:-1]}**", ""]
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                item = lines[i].strip()
                if item:
                    if lines[i].startswith(" " * 8) and out and out[-1].startswith("- "):
                        out[-1] += " " + item
                    else:
                        out.append(f"- {item}")
                i += 1
            out.append("")
            continue
        out.append(line)
        i += 1
    md = "\n".join(out)
    md = re.sub(r":math:`([^`]+)`", r"$\1$", md)
    md = re.sub(r"``([^`]+)``", r"`\1`", md)
    return re.sub(r"\n{3,}", "\n\n", md).strip()


def _plot_png(loss: Any) -> tuple[bytes | None, str]:
    """The loss's plot as PNG bytes and a caption."""
    from customloss.plot import PRESETS, plot_loss

    params = {
        k: EXAMPLE_VALUES[k] for k, v in loss.params.items() if v is None and k in EXAMPLE_VALUES
    }
    missing = [k for k, v in loss.params.items() if v is None and k not in params]
    if missing:
        return None, f"No plot: param `{missing[0]}` has no default."
    param, values = SWEEPS.get(loss.name, (None, ()))
    if param is not None and param not in loss.params:
        param, values = None, ()
    fig = plot_loss(loss, param=param, values=values, params=params, points=240)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    notes = [f"`{k} = {_value(v)}`" for k, v in params.items()]
    preset = PRESETS.get(loss.name)
    if preset is not None and param not in preset.params:
        notes.append(preset.note)
    caption = "Loss (left) and its gradient with respect to the prediction (right)"
    if loss.classes:
        caption += ", two classes, ground truth in class 0"
    caption += "; " + "; ".join(notes) + "." if notes else "."
    return buffer.getvalue(), caption


def _entry(name: str) -> tuple[str, dict[str, bytes]]:
    import customloss as cl
    from customloss.plot import input_kind

    loss = cl.get(name)
    info = cl.info(name)
    kind = _ROLE_KIND[input_kind(loss)]
    provider = f"plugin `{info.plugin}`" if info.plugin else "`customloss.register()`"
    if info.distribution:
        provider += f" ({info.distribution}{' ' + info.version if info.version else ''})"
    params = ", ".join(f"`{k} = {_value(v)}`" for k, v in loss.params.items()) or "none"
    inputs = f"`{loss.inputs[0]}` (prediction: {kind}), `{loss.inputs[1]}` (target)"
    if loss.classes:
        inputs += "; class axis"
    lines = [
        f"## {name}",
        "",
        rst_to_markdown(loss.doc.splitlines()[0]) if loss.doc else "",
        "",
        "| | |",
        "|---|---|",
        f"| inputs | {inputs} |",
        f"| params | {params} |",
        f"| provider | {provider} |",
        "",
        "Loss:",
        "",
        "$$",
        loss.latex(),
        "$$",
        "",
        f"Gradient $\\partial \\ell / \\partial {loss.inputs[0]}$:",
        "",
        "$$",
        loss.grad_latex(),
        "$$",
        "",
    ]
    body = "\n".join(loss.doc.splitlines()[1:]).strip()
    if body:
        lines += ['??? note "Documentation"', ""]
        lines += ["    " + ln if ln else "" for ln in rst_to_markdown(body).splitlines()]
        lines.append("")
    if loss.references:
        lines += ["References:", ""] + [f"- {rst_to_markdown(r)}" for r in loss.references] + [""]
    png, caption = _plot_png(loss)
    images = {}
    if png is not None:
        file = f"{_anchor(name)}.png"
        images[file] = png
        lines += [f"![{name}: loss and gradient]({IMAGES}/{file})", "", f"*{caption}*", ""]
    else:
        lines += [f"*{caption}*", ""]
    return "\n".join(lines), images


def render(names: Sequence[str] | None = None) -> tuple[str, dict[str, bytes]]:
    """The catalogue page (Markdown) and its plots (file name -> PNG bytes).

    Args:
        names: the losses to include; default every registered loss.
    """
    import customloss as cl

    names = list(cl.names() if names is None else names)
    head = [
        "# Loss catalogue",
        "",
        "Every loss registered when this site was built: the built-in catalogue and the "
        "installed plugins. Generated from the registry by `docs/gen_catalogue.py`; "
        "`customloss list` and `customloss show NAME` print the same in a terminal, and "
        "`customloss plot NAME` draws the curves.",
        "",
        "Formulas are the elementwise loss $\\ell$ as written in the DSL; calling a loss "
        'reduces it (`reduction="mean"` by default). The gradients are derived '
        "symbolically; the compiled code evaluates their stable forms "
        "([DSL guide](dsl.md#stability-what-the-compilers-guarantee)).",
        "",
        "| loss | inputs | params | provider | |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        info = cl.info(name)
        params = ", ".join(f"`{k}`" for k in info.params) or ""
        where = info.plugin or "register()"
        summary = rst_to_markdown(info.summary).replace("|", _BAR)  # "|" would split the cell
        head.append(
            f"| [{name}](#{_anchor(name)}) | {', '.join(info.inputs)} | {params} | {where} | "
            f"{summary} |"
        )
    head.append("")
    sections, images = [], {}
    for name in names:
        text, imgs = _entry(name)
        sections.append(text)
        images.update(imgs)
    return "\n".join(head) + "\n" + "\n".join(sections), images


# ---------------------------------------------------------------------------
# mkdocs hook
# ---------------------------------------------------------------------------
def on_files(files: Any, config: Any) -> Any:
    """Add the generated catalogue page and its plots to the site."""
    from mkdocs.structure.files import File

    existing = files.get_file_from_path(PAGE)
    if existing is not None:  # a placeholder on disk is replaced
        files.remove(existing)
    markdown, images = render()
    files.append(File.generated(config, PAGE, content=markdown))
    for name, data in images.items():
        files.append(File.generated(config, f"{IMAGES}/{name}", content=data))
    log.info("gen_catalogue: %d losses, %d plots", markdown.count("\n## "), len(images))
    return files


def main(argv: Sequence[str] | None = None) -> int:
    """Write the page and the plots into a folder (``python docs/gen_catalogue.py DIR``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python docs/gen_catalogue.py OUTPUT_DIR", file=sys.stderr)
        return 2
    out = Path(args[0])
    (out / IMAGES).mkdir(parents=True, exist_ok=True)
    markdown, images = render()
    (out / PAGE).write_text(markdown, encoding="utf-8")
    for name, data in images.items():
        (out / IMAGES / name).write_bytes(data)
    print(f"wrote {out / PAGE} and {len(images)} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
