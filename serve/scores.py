"""Confidence score functions on raw logits, one registry shared by training, calibration and serving.

Convention: higher score = more confident = accepted first. Every score is computed in float64
on a batch of logits ``(n, K)`` and returns ``(n,)``. Formulas: METHODS.md §2.

Spec strings name a score: ``msp``, ``log_msp``, ``maxlogit``, ``centred_maxlogit``,
``pnorm:<p>`` (p ≥ 0; p = 0 is centred MaxLogit), ``energy``, ``margin``. A temperature T > 0
divides the logits first. It leaves the ranking of maxlogit, centred_maxlogit, margin and pnorm
unchanged (pnorm's values too: it is scale-invariant) but can reorder msp/log_msp and energy
(``T·logsumexp(z/T)``): as T grows, MSP ranks like centred MaxLogit; as T → 0, like the margin.

Snapping (``snap_scores``, applied to every score as its last step). Rounding noise must not
rank samples whose scores are equal in exact arithmetic (with ``pnorm:1`` every sample whose top
logit is the only one above the mean scores exactly 1/2, yet float64 spreads those over
0.4999999999999992 … 0.5000000000000007). So every score ``s`` (float64, elementwise) becomes::

    c = s * 1025.0                       # 1025 = 2**10 + 1
    t = c - (c - s)                      # Veltkamp split: s rounded to nearest with a 43-bit significand
    snapped = t if abs(s) < 2.0**1000 else s   # (guard: c would overflow)

three IEEE-754 double operations (Mul, Sub, Sub; then Abs, Less, Where), no FMA, bit-exact in
numpy and in an ONNX graph in double. The grid is relative: spacing 2⁻⁴³·2^⌊log2|s|⌋ (≈ 1.1e-13
relative), far above float64 noise of a few ulps (≈ 1e-16 relative) and far below any
difference that ranks. Values equal in exact arithmetic and computed to within a few ulps snap
to one float unless a grid midpoint falls between them (probability ≈ noise / spacing ≈ 1e-3
per pair); distinct values closer than the spacing become ties (accepted together, METHODS.md
§3). MSP keeps its resolution down to 1 − MSP ≈ 1e-13 (top-2 gaps up to ~30); ``log_msp`` keeps
its full range because the grid is relative.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from serve.errors import AbstainError

Array = np.ndarray
_NORM_FLOOR = 1e-12
SNAP_SPLITTER = 1025.0          # 2**10 + 1: keeps 53 − 10 = 43 significand bits
SNAP_GUARD = 2.0 ** 1000        # |s| at or above this is left as is (s · 1025 would overflow)


class ScoreError(AbstainError, ValueError):
    """A bad score spec or bad logits."""


_FAST = (np.dtype(np.float32), np.dtype(np.float64))


def as_logits(logits: Array) -> Array:
    """Validate and convert logits to a float64 ``(n, K)`` array (K ≥ 2, all finite)."""
    if type(logits) is np.ndarray and logits.dtype in _FAST and logits.ndim == 2 \
            and logits.shape[1] >= 2:                       # the server's path: one check only
        z = logits.astype(np.float64, copy=False)
        if np.isfinite(z).all():
            return z
    z = np.asarray(logits)
    if z.ndim != 2:
        raise ScoreError(f"logits must be a 2-D array (n, K); got shape {z.shape}")
    if z.shape[1] < 2:
        raise ScoreError(f"logits need at least 2 classes; got K = {z.shape[1]}")
    if not np.issubdtype(z.dtype, np.number) or np.issubdtype(z.dtype, np.complexfloating):
        raise ScoreError(f"logits must be real numbers; got dtype {z.dtype}")
    z = z.astype(np.float64, copy=False)
    if not np.isfinite(z).all():
        bad = int((~np.isfinite(z)).any(axis=1).sum())
        raise ScoreError(f"logits contain NaN or inf in {bad} of {z.shape[0]} rows; "
                         "a score of a non-finite logit is meaningless")
    return z


def snap_scores(s: Array, bounded: bool = False) -> Array:
    """Round float64 scores to a 43-bit significand so exact-arithmetic ties compare equal.

    Exactly ``c = s·1025; t = c − (c − s)`` where ``|s| < 2**1000``, else ``s`` (module
    docstring): a deterministic elementwise float64 operation an ONNX graph reproduces bit for bit.
    ``bounded``: the caller knows ``|s| < 2**1000`` (msp, log_msp, pnorm:p>0), so the guard is
    skipped — the same values, three numpy calls fewer on the server's path.
    """
    s = np.asarray(s, dtype=np.float64)
    c = s * SNAP_SPLITTER
    t = c - (c - s)
    return t if bounded else np.where(np.abs(s) < SNAP_GUARD, t, s)


def _max_and_rest(z: Array) -> tuple[Array, Array]:
    """Row max ``m`` (n,) and ``Σ_{k ≠ argmax} exp(z_k − m)`` (n,).

    Keeping the argmax's 1 out of the sum lets callers use ``log1p(rest)``: ``log(1 + rest)``
    rounds to 0 once rest < 1.1e-16 (a top-2 gap above ~37), which would tie every confident
    sample's log-MSP at exactly 0.
    """
    rows = np.arange(z.shape[0])
    top = z.argmax(axis=1)                                     # (n,)
    m = z[rows, top]                                           # (n,)
    ez = np.exp(z - m[:, None])                                # (n, K), in (0, 1]
    ez[rows, top] = 0.0
    return m, ez.sum(axis=1)


def logsumexp(z: Array) -> Array:
    """Row-wise log Σ exp(z), stable. ``z``: (n, K) float64 → (n,)."""
    m, rest = _max_and_rest(z)
    return m + np.log1p(rest)


def log_softmax(z: Array) -> Array:
    """Row-wise log-softmax: (n, K) → (n, K), float64."""
    m, rest = _max_and_rest(z)
    # Shift first: z − logsumexp(z) would lose ~|z|·1e-16 to cancellation for large logits.
    return (z - m[:, None]) - np.log1p(rest)[:, None]


def softmax(z: Array) -> Array:
    """Row-wise softmax: (n, K) → (n, K), float64."""
    ez = np.exp(z - z.max(axis=1, keepdims=True))             # (n, K), max entry exactly 1
    return ez / ez.sum(axis=1, keepdims=True)


def _log_msp(z: Array) -> Array:
    # log max_k softmax(z)_k = z_max − logsumexp(z) = −log1p(Σ_{k≠max} e^{z_k − z_max}): exact
    # in float64 up to top-2 gaps of ~700, where MSP itself reads 1.0 beyond ~37 (float32: ~17).
    return -np.log1p(_max_and_rest(z)[1])


def _msp(z: Array) -> Array:
    return np.exp(_log_msp(z))


def _maxlogit(z: Array) -> Array:
    return z.max(axis=1)


def _centred(z: Array) -> Array:
    # z − mean(z), computed from z − max(z) so rounding scales with the logits' spread, not their
    # magnitude: equal logits centre to exact zeros (score 0) however large they are.
    d = z - z.max(axis=1, keepdims=True)                       # (n, K), ≤ 0
    return d - d.mean(axis=1, keepdims=True)


def _centred_maxlogit(z: Array) -> Array:
    return _centred(z).max(axis=1)


def _energy(z: Array) -> Array:
    # Negative free energy: logsumexp(z) (times T, applied by the caller's scaling convention).
    return logsumexp(z)


def _margin(z: Array) -> Array:
    # Gap between the two largest logits.
    top2 = np.partition(z, z.shape[1] - 2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def _pnorm(p: float) -> Callable[[Array], Array]:
    def score(z: Array) -> Array:
        u = _centred(z)                                          # (n, K)
        if p == 0:
            return u.max(axis=1)
        a = np.abs(u)
        if np.isinf(p):
            norm = a.max(axis=1)
        else:
            # Scale by the row max before the power so large p neither overflows nor underflows.
            scale = a.max(axis=1, keepdims=True)
            scale[scale == 0] = 1.0
            norm = scale[:, 0] * ((a / scale) ** p).sum(axis=1) ** (1.0 / p)
        return u.max(axis=1) / np.maximum(norm, _NORM_FLOOR)

    return score


_FIXED: dict[str, Callable[[Array], Array]] = {
    "msp": _msp,
    "log_msp": _log_msp,
    "maxlogit": _maxlogit,
    "centred_maxlogit": _centred_maxlogit,
    "energy": _energy,
    "margin": _margin,
}
_PARAMETRIC = {"pnorm": "pnorm:<p>  (p ≥ 0, e.g. pnorm:2; p = 0 is centred MaxLogit)"}


def list_scores() -> list[str]:
    """Every valid spec pattern."""
    return [*_FIXED, *_PARAMETRIC.values()]


@dataclass(frozen=True)
class Score:
    """A named, validated score function. Call it on logits ``(n, K)`` to get scores ``(n,)``."""

    spec: str
    temperature: float
    _fn: Callable[[Array], Array]
    min_classes: int = 2

    def __call__(self, logits: Array) -> Array:
        return self.of_logits(as_logits(logits))

    def of_logits(self, z: Array) -> Array:
        """The scores of logits :func:`as_logits` already validated (float64, finite, (n, K))."""
        if z.shape[1] < self.min_classes:
            raise ScoreError(
                f"score '{self.spec}' cannot rank with K = {z.shape[1]} classes: centred p-norm "
                f"scores are constant (2^(-1/p)) for K = 2. Use 'msp' or 'margin' instead")
        if self.temperature != 1.0:
            z = z / self.temperature
        s = self._fn(z)
        if self.spec == "energy":
            s = s * self.temperature
        return snap_scores(s, self.bounded)

    @property
    def bounded(self) -> bool:
        """|score| ≤ 1 (msp, pnorm:p>0) or ≤ ~745 (log_msp) whatever the logits."""
        return self.spec in ("msp", "log_msp") or (self.spec.startswith("pnorm:") and self.p > 0)

    @property
    def p(self) -> float | None:
        """The norm order of a ``pnorm`` score, else None."""
        return float(self.spec.split(":", 1)[1]) if self.spec.startswith("pnorm:") else None


def create_score(spec: str, temperature: float = 1.0) -> Score:
    """Build a score from its spec string, e.g. ``create_score("pnorm:2")``.

    Raises:
        ScoreError: unknown name or bad parameter; the message lists the valid specs.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ScoreError(f"score spec must be a non-empty string; valid: {', '.join(list_scores())}")
    if not (isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature > 0):
        raise ScoreError(f"temperature must be a finite number > 0; got {temperature!r}")
    name, _, arg = spec.strip().partition(":")
    if name in _FIXED:
        if arg:
            raise ScoreError(f"score '{name}' takes no parameter; got '{spec}'")
        return Score(name, float(temperature), _FIXED[name])
    if name == "pnorm":
        try:
            p = float(arg)
        except ValueError:
            p = float("nan")
        if not (p >= 0):
            raise ScoreError(f"pnorm needs a number p ≥ 0, e.g. 'pnorm:2'; got '{spec}'")
        canonical = f"pnorm:{int(p)}" if p.is_integer() else f"pnorm:{p:g}"
        # K = 2: the centred p-norm score is the constant 2^(-1/p); p = 0 (centred MaxLogit) still ranks.
        return Score(canonical, float(temperature), _pnorm(p), min_classes=3 if p > 0 else 2)
    raise ScoreError(f"unknown score '{spec}'; valid: {', '.join(list_scores())}")
