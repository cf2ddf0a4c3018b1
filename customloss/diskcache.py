"""Cache of derived artefacts on disk, shared across processes.

Differentiating a loss and generating its kernels is SymPy work that a fresh process
would repeat for the same mathematics (focal: about 70 ms of the cold start, measured
in ``docs/performance.md``).  This module keeps the results on disk:

* generated kernel source (``kind="kernel"``): stored as JSON text; a hit is compiled
  with Python's ``compile`` like a freshly generated kernel;
* symbolic derivatives returned by :meth:`customloss.loss.Loss.grad` and the parsed
  text of :func:`customloss.define` (``kind="expr"``): stored with :mod:`pickle`
  (SymPy's own pickling) and read back under ``evaluate(False)``: they were canonical
  when stored, so nothing is re-flattened (a warm process builds no SymPy ``Add``).

Keys are the mathematics (``Loss._key``: the ``srepr`` of the expression, the input
and param names) plus what was asked for, hashed with SHA-256 together with the
versions of customloss, SymPy and Python, :data:`SCHEMA` and a hash of the source of
the modules that parse, derive and generate (``parse``, ``calculus``, ``differentiate``, ``codegen``,
``dsl``, ``loss``),
so an upgrade or a local edit never reads an old entry.

Where: ``CUSTOMLOSS_CACHE_DIR``, else ``$XDG_CACHE_HOME/customloss``, else
``~/.cache/customloss``.  ``CUSTOMLOSS_CACHE=0`` (also ``off``/``false``/``no``)
switches the cache off.

Safety (the decision): cache entries are code (kernel source) and pickles, so they are
trusted exactly like Python's own ``__pycache__`` or Inductor's cache directory.  The
directories are created with mode ``0o700`` and used only while they are owned by the
current user and not writable by group or others; an entry is read only if it is a
regular file (not a symlink) with the same owner and mode, checked on the opened
file; and an entry records the digest of its key, so one moved onto another key's
name is ignored.  Anything else is ignored (and regenerated).  Entries are written to a temporary file and renamed
into place, so a concurrent reader sees a whole entry or none.  Every failure to read
or write (read-only home, full disk, a corrupt or truncated entry) falls back to
computing the artefact: the cache can make a process faster, never wrong.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "ENV_DIR",
    "ENV_SWITCH",
    "SCHEMA",
    "directory",
    "enabled",
    "hits",
    "load",
    "store",
]

#: Environment variable: the cache directory.
ENV_DIR = "CUSTOMLOSS_CACHE_DIR"
#: Environment variable: ``0``/``off``/``false``/``no`` disables the cache.
ENV_SWITCH = "CUSTOMLOSS_CACHE"
#: Bumped whenever the stored format or the meaning of a key changes.
SCHEMA = 1

#: Entries served from disk in this process (for tests and benchmarks).
hits = 0

_KINDS = ("kernel", "expr")


def enabled() -> bool:
    """Whether the disk cache is on (``CUSTOMLOSS_CACHE`` is not a false value)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "off", "false", "no")


def directory() -> Path:
    """The cache directory (not created)."""
    explicit = os.environ.get(ENV_DIR)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "customloss"


def _canon(key: Any) -> Any:
    """``key`` with sets sorted, so its ``repr`` is the same in every process."""
    if isinstance(key, (set, frozenset)):
        return ("<set>", *sorted(repr(_canon(k)) for k in key))
    if isinstance(key, (tuple, list)):
        return tuple(_canon(k) for k in key)
    return key


_FINGERPRINT: str | None = None
#: Modules whose code decides what is derived and generated: an edit to any of them
#: (a development checkout, a patched install) gives new keys.
_GENERATORS = ("calculus", "codegen", "differentiate", "dsl", "loss", "parse")


def _fingerprint() -> str:
    """SHA-256 of the generating modules' source files (computed once per process)."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        h = hashlib.sha256()
        here = Path(__file__).resolve().parent
        for mod in _GENERATORS:
            try:
                h.update((here / f"{mod}.py").read_bytes())
            except OSError:  # e.g. a zipped install: rely on the version alone
                h.update(mod.encode())
        _FINGERPRINT = h.hexdigest()
    return _FINGERPRINT


def _path(kind: str, key: Any) -> Path:
    import sympy

    from customloss import __version__

    ident = repr(
        (
            SCHEMA,
            __version__,
            _fingerprint(),
            sympy.__version__,
            sys.version_info[:2],
            kind,
            _canon(key),
        )
    )
    digest = hashlib.sha256(ident.encode()).hexdigest()
    suffix = ".json" if kind == "kernel" else ".pickle"
    return directory() / digest[:2] / (digest + suffix)


def _private(st: os.stat_result) -> bool:
    """Owned by the current user and not writable by group or others."""
    if st.st_mode & 0o022:
        return False
    return not hasattr(os, "getuid") or st.st_uid == os.getuid()


def _trusted_dirs(path: Path) -> bool:
    """The cache directory and the entry's sub-directory are real, private directories."""
    for d in (path.parent.parent, path.parent):
        try:
            st = d.lstat()
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode) or not _private(st):
            return False
    return True


def _read_trusted(path: Path) -> bytes | None:
    """The entry's bytes if it is a private regular file (checked on the open file, so
    it cannot be swapped between the check and the read; symlinks are refused)."""
    if not _trusted_dirs(path):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or not _private(st):
            return None
        return f.read()


def _entry(kind: str, key: Any) -> Path | None:
    """The entry's path; None when the cache is off.  Refuses an unknown ``kind``."""
    if kind not in _KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; valid: {', '.join(_KINDS)}")
    return _path(kind, key) if enabled() else None


def load(kind: str, key: Any) -> Any | None:
    """The stored artefact for ``key``, or None (missing, disabled, untrusted, corrupt).

    ``kind="kernel"`` gives the stored dict (``source``, ``ident``, ``outputs``);
    ``kind="expr"`` the unpickled SymPy expression.  Every entry records the digest of
    its key; an entry found under another key's name (moved or copied) is ignored.
    """
    global hits
    path = _entry(kind, key)
    if path is None:
        return None
    try:
        data = _read_trusted(path)
        if data is None:
            return None
        if kind == "kernel":
            value = json.loads(data)
            if not (
                isinstance(value, dict)
                and value.get("key") == path.stem
                and {"source", "ident", "outputs"} <= value.keys()
            ):
                return None
        else:
            from sympy.core.parameters import evaluate

            # stored expressions are canonical already: rebuilt without re-evaluation
            # (no flatten; SymPy's first Add flatten imports sympy.tensor, 40-60 ms)
            with evaluate(False):
                stored_key, value = pickle.loads(data)  # trusted: see the module docstring
            if stored_key != path.stem:
                return None
    except Exception:  # a corrupt or truncated entry: regenerate
        return None
    hits += 1
    return value


def _private_dir(d: Path) -> None:
    """Create ``d`` (and missing parents) with mode 0o700; raise if it is not private."""
    missing = []
    p = d
    while not p.exists():
        missing.append(p)
        p = p.parent
    for m in reversed(missing):
        with contextlib.suppress(FileExistsError):
            m.mkdir(mode=0o700)
    st = d.lstat()
    if not stat.S_ISDIR(st.st_mode) or not _private(st):
        raise PermissionError(f"cache directory {d} is not private")


def store(kind: str, key: Any, value: Any) -> bool:
    """Store ``value`` for ``key``; returns whether it was written (errors are ignored)."""
    path = _entry(kind, key)
    if path is None:
        return False
    try:
        data = (
            json.dumps({**value, "key": path.stem}).encode()
            if kind == "kernel"
            else pickle.dumps((path.stem, value), protocol=pickle.HIGHEST_PROTOCOL)
        )
        _private_dir(path.parent.parent)
        _private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except Exception:
        return False
    return True
