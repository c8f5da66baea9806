"""Which audits a recertification may use, and how it counts the unlabelled ones (METHODS §8).

* **The current distribution only.** A certificate holds for traffic exchangeable with the samples
  it was computed on. After a change, audits drawn before it are not: pooling 2,000 pre-shift
  audits with 300–3,000 post-shift ones certified a threshold whose post-shift risk exceeded r* in
  80–96% of simulated repetitions. So the window is, by default, the audits of the calibration in
  force (its *epoch*: a new calibration, a new model version or a detected shift starts one), or
  those drawn since a time the user names (``since``) before seeing the labels. Older epochs are
  pooled only on request, and only when :func:`pool_checks` finds no evidence against it.
* **Non-response.** Reviewers who skip hard items make the labelled audits look better than the
  traffic (labels missing not at random). Every audit of the window counts: an unlabelled one —
  pending or expired — counts as an error, which bounds the risk whatever the missing labels are.
  :func:`pending_refusal` refuses while more than a stated share is unlabelled (waiting for labels
  costs less coverage than counting them as errors).

Everything here works on arrays (:class:`Audits`), so the simulation tests run the same code as
``abstain calibrate --from-feedback``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from serve.calibration.binomial import binomial_p_values
from serve.errors import AbstainError

POOL_ALPHA = 0.05
DEFAULT_MAX_PENDING = 0.05


@dataclass(frozen=True)
class Audits:
    """Audited samples as columns; ``epoch`` indexes ``epochs`` (calibration sha256s)."""

    scores: np.ndarray        # (n,) float64, the deployed score
    wrong: np.ndarray         # (n,) bool, labelled and the prediction was wrong
    labelled: np.ndarray      # (n,) bool
    epoch: np.ndarray         # (n,) int64 into ``epochs``
    ts: np.ndarray            # (n,) float64 unix seconds
    epochs: tuple[str, ...]

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]], epochs: Sequence[str]) -> Audits:
        """From :meth:`serve.feedback.store.Store.audits` rows."""
        index = {sha: i for i, sha in enumerate(epochs)}
        labelled = np.array([r["human_label"] is not None for r in rows], dtype=bool)
        wrong = np.array([r["human_label"] is not None and r["human_label"] != r["label"]
                          for r in rows], dtype=bool)
        return cls(scores=np.array([r["score"] for r in rows], dtype=np.float64), wrong=wrong,
                   labelled=labelled, epoch=np.array([index[r["calibration_sha256"]] for r in rows],
                                                     dtype=np.int64),
                   ts=np.array([r["ts"] for r in rows], dtype=np.float64), epochs=tuple(epochs))

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def errors(self) -> np.ndarray:
        """The pessimistic error indicator: wrong, or not labelled (pending or expired)."""
        return self.wrong | ~self.labelled

    @property
    def n_unlabelled(self) -> int:
        return int((~self.labelled).sum())

    def select(self, mask: np.ndarray) -> Audits:
        return Audits(self.scores[mask], self.wrong[mask], self.labelled[mask], self.epoch[mask],
                      self.ts[mask], self.epochs)

    def window_mask(self, current: str, since: float | None = None, until: float | None = None,
                    pool: bool = False) -> np.ndarray:
        """Which audits the window holds: by default the ``current`` epoch's; with ``since``,
        every epoch's from that time on; with ``pool``, every epoch's; ``until`` ends any."""
        keep = np.ones(len(self), dtype=bool)
        if since is not None:
            keep &= self.ts >= since
        elif not pool:
            cur = self.epochs.index(current) if current in self.epochs else -1
            keep &= self.epoch == cur
        if until is not None:
            keep &= self.ts < until
        return keep

    def window(self, current: str, since: float | None = None, until: float | None = None,
               pool: bool = False) -> Audits:
        """The audits of :meth:`window_mask`."""
        return self.select(self.window_mask(current, since, until, pool))


def pending_refusal(window: Audits, max_pending: float) -> str | None:
    """Why the window cannot be used while too many audits are unlabelled, or None."""
    n, u = len(window), window.n_unlabelled
    if n == 0 or u <= max_pending * n:
        return None
    return (f"{u} of the window's {n} audits ({u / n:.1%}) are unlabelled, more than --max-pending "
            f"{max_pending:g} allows: label {u - math.floor(max_pending * n)} more "
            "(GET /v1/review/queue?kind=audit), end the window before the newest ones with --until, "
            "or raise --max-pending to count every unlabelled audit as an error")


@dataclass(frozen=True)
class PoolCheck:
    """One test of "the window and an older epoch are exchangeable"; refuse pooling if rejected."""

    test: str
    epoch: str
    p_value: float

    @property
    def rejected(self) -> bool:
        return self.p_value <= POOL_ALPHA


def pool_checks(audits: Audits, current: str, threshold: float | None,
                target_risk: float) -> list[PoolCheck]:
    """Tests of exchangeability between the ``current`` epoch and each older one.

    Per older epoch: a two-sample Kolmogorov–Smirnov test on the scores (the traffic moved) and a
    one-sided Fisher exact test that the current epoch's error rate above ``threshold`` (the one
    certified on the pool) is higher. Once: a one-sided binomial test that the current epoch's
    risk at ``threshold`` exceeds r*. Each at level ``POOL_ALPHA``; more tests only refuse more.
    Failing to reject does not prove exchangeability: with few current audits these tests have
    little power, which is why pooling is never the default. [] when the current epoch has no
    audits (nothing to test against: do not pool).
    """
    cur = audits.epochs.index(current) if current in audits.epochs else -1
    mine = audits.epoch == cur
    if not mine.any():
        return []
    th = np.inf if threshold is None else threshold
    acc = audits.scores >= th
    err = audits.errors
    k_w, n_w = int((err & acc & mine).sum()), int((acc & mine).sum())
    out = []
    for e, sha in enumerate(audits.epochs):
        other = audits.epoch == e
        if e == cur or not other.any():
            continue
        out.append(PoolCheck("Kolmogorov–Smirnov on scores", sha,
                             float(stats.ks_2samp(audits.scores[mine], audits.scores[other]).pvalue)))
        k_o, n_o = int((err & acc & other).sum()), int((acc & other).sum())
        if n_w and n_o:
            p = stats.fisher_exact([[k_w, n_w - k_w], [k_o, n_o - k_o]], alternative="greater")[1]
            out.append(PoolCheck("Fisher: higher error above the pooled threshold", sha, float(p)))
    if n_w:
        p = 1.0 - float(binomial_p_values(k_w - 1, n_w, target_risk)) if k_w else 1.0
        out.append(PoolCheck(f"binomial: current risk at the pooled threshold > {target_risk:g}",
                             current, p))
    return out


CHANGE_ALPHA = 0.01
MIN_SEGMENT = 20


@dataclass(frozen=True)
class ChangeCheck:
    """A retrospective test that the window's error rate rose at some point within it."""

    what: str
    n: int
    p_value: float
    at: float | None          # time of the first audit of the most significant recent segment

    @property
    def rejected(self) -> bool:
        return self.p_value <= CHANGE_ALPHA


def recent_splits(n: int) -> np.ndarray:
    """Sizes m of the "last m audits" segments tested: a √2-geometric grid in [20, n − 20]."""
    if n < 2 * MIN_SEGMENT:
        return np.empty(0, np.int64)
    j = np.arange(int(math.log(n / MIN_SEGMENT, math.sqrt(2))) + 2)
    return np.unique(np.clip(np.round(MIN_SEGMENT * np.sqrt(2.0) ** j), MIN_SEGMENT,
                             n - MIN_SEGMENT)).astype(np.int64)


def change_check(errors: np.ndarray, ts: np.ndarray, what: str) -> ChangeCheck | None:
    """Do the most recent audits have more errors than the earlier ones?

    For each segment size m of :func:`recent_splits`, moved down to the nearest split between
    two distinct times (so that ``--since`` can name it: audits recorded in one batch share a
    time), the exact one-sided test that the last m audits hold as many errors as they do, given
    the window's total (a hypergeometric tail: exact when the window is exchangeable in time);
    the smallest p-value, Bonferroni-corrected by the number of segments tested. None when the
    window cannot be split.
    """
    order = np.argsort(ts, kind="stable")
    t = np.asarray(ts, dtype=np.float64)[order]
    x = np.asarray(errors, dtype=bool)[order]
    n = len(x)
    valid = n - np.flatnonzero(t[1:] != t[:-1])[::-1] - 1                # (V,) ascending sizes
    grid = recent_splits(n)
    if grid.size == 0 or valid.size == 0:
        return None
    pos = np.searchsorted(valid, grid, side="right") - 1                 # largest valid ≤ m
    m = np.unique(valid[pos[pos >= 0]])
    m = m[(m >= MIN_SEGMENT) & (m <= n - MIN_SEGMENT)]
    if m.size == 0:
        return None
    tail = np.cumsum(x[::-1])[m - 1]                                    # (G,) errors in the last m
    p = stats.hypergeom.sf(tail - 1, n, int(x.sum()), m)               # (G,)
    best = int(np.argmin(p))
    return ChangeCheck(what, n, float(min(1.0, p[best] * m.size)), float(t[n - int(m[best])]))


def change_checks(window: Audits, in_force: float | None) -> list[ChangeCheck]:
    """:func:`change_check` on every audit's (pessimistic) error, and on those the threshold in
    force accepts (where a rise in the live risk shows first)."""
    out = [change_check(window.errors, window.ts, "error rate of all audits")]
    if in_force is not None:
        acc = window.scores >= in_force
        out.append(change_check(window.errors[acc], window.ts[acc],
                                "error rate of audits the threshold in force accepts"))
    return [c for c in out if c is not None]


def labels_to_certify(scores: np.ndarray, errors: np.ndarray, threshold: float | None,
                      target_risk: float, delta: float) -> int | None:
    """How many more audits (labelled like these) would certify r* at ``threshold``'s coverage.

    At the window's coverage c and error rate p̂ above ``threshold``, the smallest accepted count m
    whose exact binomial test passes with ⌊p̂·m⌋ errors, as a number of audits ⌈m / c⌉, less the
    audits already in hand. An estimate (the fixed sequence must also pass every stricter
    threshold). None when p̂ ≥ r* (more labels at this error rate will not certify) or nothing
    is accepted.
    """
    if threshold is None or len(scores) == 0:
        return None
    acc = scores >= threshold
    n_acc = int(acc.sum())
    if n_acc == 0:
        return None
    phat = float(errors[acc].mean())
    if phat >= target_risk:
        return None
    m = np.unique(np.concatenate([np.arange(n_acc, n_acc + 2000),
                                  np.geomspace(n_acc, 1e9, 2000).round()]))      # (M,) tried
    passes = binomial_p_values(np.floor(phat * m + 1e-9), m, target_risk) <= delta
    if not passes.any():
        return None
    total = math.ceil(float(m[int(passes.argmax())]) * len(scores) / n_acc)
    return max(0, total - len(scores))


def parse_time(text: str) -> float:
    """Unix seconds from ``1733400000`` or an ISO 8601 time (``2026-12-06T15:00Z``; UTC if no zone)."""
    from datetime import datetime, timezone

    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AbstainError(f"{text!r} is not a time: pass unix seconds or ISO 8601, e.g. "
                           "2026-12-06T15:00Z") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()
