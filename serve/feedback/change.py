"""A change detector on audited errors: has the live risk *jumped* above r*, even after calm?

The live-risk confidence sequence (``risk.py``) bounds the *average* risk since the calibration
took effect, so after a long calm period a jump is diluted: at r* = 0.02, 2,000 calm labels at
0.5 r* then 3 r* take a median of ~1,200 labels to alarm. This detector looks for the jump itself.

X_i = 1 when the i-th labelled audit of accepted traffic was wrong, in the order the labels
arrived (a sequential stream: a label is appended when it comes, never inserted in the past).
Audits still pending or expired are missing: the detector assumes they are missing at random;
the live-risk bound's pessimistic end is what guards against reviewers who skip hard items. For an alternative error rate q > r*, the Shiryaev–Roberts statistic

    R_t(q) = (R_{t−1}(q) + 1) · L_t(q),   L_t(q) = (q / r*)^X_t ((1 − q) / (1 − r*))^(1 − X_t)

is the sum over every start j ≤ t of the likelihood ratio of "rate q since j" against r*. Under
any stationary rate p ≤ r*, E[L_t(q)] ≤ 1, so R_t(q) − t is a supermartingale; so is the mixture
D_t = Σ_k w_k R_t(q_k) over a grid of q_k (weights summing to 1). D is an e-detector (Shin,
Ramdas & Rinaldo 2022): the alarm τ = first t with D_t ≥ A has

    E[τ] ≥ A   (average run length to a false alarm, in labels)  and  P(τ ≤ N) ≤ N / A

(the second by Ville's inequality on D_t + N − t). The defaults, A = 100,000 and q_k = r* × (1.5,
2, 3, 4, 6), find a jump to 3 r* at r* = 0.02 after a median of ~250 labels when it follows 2,000
calm labels at 0.5 r*; at a stationary p = r* the chance of any alarm within 5,000 labels is
≤ 5% (``bench/shift_monitors.py``, docs/METHODS.md §9).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

MULTIPLES = (1.5, 2.0, 3.0, 4.0, 6.0)
ARL = 100_000.0


def grid(target: float, multiples: tuple[float, ...] = MULTIPLES) -> np.ndarray:
    """The alternatives q_k = r* × multiple, kept below 1."""
    q = np.asarray(multiples, np.float64) * target
    q = q[q < 1.0]
    return q if q.size else np.array([0.5 * (1.0 + target)])


def log_statistic(errors: ArrayLike, target: float,
                  multiples: tuple[float, ...] = MULTIPLES) -> np.ndarray:
    """log D_t after each observation, vectorised over leading axes: shape of ``errors``.

    Closed form of the recursion: log R_t(q) = Λ_t + log Σ_{j ≤ t} exp(−Λ_{j−1}) with
    Λ_t = Σ_{i ≤ t} log L_i(q), so each q costs two cumulative passes (O(n)), no Python loop.
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"the target risk must be in (0, 1); got {target!r}")
    x = np.asarray(errors, np.float64)
    if x.shape[-1] == 0:
        return x.copy()
    q = grid(target, multiples)
    out = np.full(x.shape, -math.inf)
    log_w = -math.log(q.size)
    for qk in q:
        llr = x * math.log(qk / target) + (1.0 - x) * math.log1p(-qk) - (1.0 - x) * math.log1p(-target)
        lam = np.cumsum(llr, axis=-1)                                 # Λ_1..Λ_t
        prev = np.concatenate([np.zeros(x.shape[:-1] + (1,)), -lam[..., :-1]], axis=-1)  # −Λ_{j−1}
        log_r = lam + np.logaddexp.accumulate(prev, axis=-1)
        out = np.logaddexp(out, log_w + log_r)
    return out


@dataclass(frozen=True)
class ChangeStatus:
    """The detector over one epoch's labelled audits.

    Attributes:
        observations: labelled audits of accepted samples.
        log_statistic: log D_t now.
        log_threshold: log A.
        alarm: D reached A at some point of this epoch (it stays: a new calibration clears it).
        alarm_at: the observation count at which it first did (None before).
        arl: A, the average run length to a false alarm, in observations.
    """

    observations: int
    log_statistic: float
    log_threshold: float
    alarm: bool
    alarm_at: int | None
    arl: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect(errors: ArrayLike, target: float | None, arl: float = ARL) -> ChangeStatus:
    """The detector's status after the 0/1 ``errors`` (in arrival order) of one epoch."""
    x = np.asarray(errors, np.float64).ravel()
    level = math.log(arl)
    if target is None or not 0.0 < target < 1.0 or x.size == 0:
        return ChangeStatus(int(x.size), -math.inf, level, False, None, float(arl))
    stat = log_statistic(x, target)
    hit = np.flatnonzero(stat >= level)
    return ChangeStatus(int(x.size), float(stat[-1]), level, bool(hit.size),
                        int(hit[0]) + 1 if hit.size else None, float(arl))
