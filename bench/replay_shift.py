"""A replayed shift, end to end: the shipped model on mnist1d traffic that changes under it.

The shipped ``models/mnist1d-maxsup/1`` (its real ONNX session and certified rule) serves
batches of 100 predictions: 20,000 from the distribution it was certified on, then traffic whose
signals are amplified by a random factor in [1.2, 1.45] (a sensor gain drift), which roughly
triples the error rate among accepted predictions. 5% of predictions are audited; a reviewer
labels each audit after an exponential delay (mean 3,000 predictions) and 10% are never
labelled. Beside the traffic run the server's monitors, with the server's code:

* the label-free shift monitor (``serve/monitoring/shift.py``, α = 0.01 over 10⁶ predictions);
* the live-risk confidence sequence over labelled audited accepted samples (``risk.py``);
* the risk-change detector over the same labels in arrival order (``change.py``);
* the guard with ``--on-risk-alarm defer`` (``guard.py``): from the batch after either alarm,
  the rule's ``force_defer`` defers every prediction.

Recertification: once 5,000 audits drawn *after the shift monitor's alarm* (a change point a
monitor found, no label looked at; the count fixed in advance) are labelled, the threshold is
certified on them alone with the calibration library (``serve.calibration``: Learn-then-Test
planned on a random 30% of them, certified on the other 70%, as ``abstain calibrate`` does), and
— for contrast — the same way on every labelled audit of the epoch (pre- and post-shift pooled,
what ``--from-feedback`` did before issue 25). Both thresholds are evaluated on held-out shifted
samples disjoint from the traffic; the first is then served (a hot reload: a new rule and a new
epoch, so the deferral ends) for the rest of the 200,000 predictions.

    PYTHONPATH=. .venv/bin/python bench/replay_shift.py [--out docs/replay.png]

Data: ``mnist1d?n=20000&seed=1`` (generated once, then cached): 6,000 samples feed the
pre-shift traffic, 10,000 the shifted traffic and 4,000 are held out (draws with replacement).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
from scipy.stats import beta

from serve.calibration.artifact import load_calibration
from serve.calibration.certify import certify
from serve.calibration.plan import plan_ltt
from serve.data import load_dataset
from serve.decision import DecisionRule
from serve.feedback.change import detect
from serve.feedback.guard import RiskGuard
from serve.feedback.risk import live_risk
from serve.monitoring.shift import ShiftMonitor
from serve.server.runtime import OnnxModel

MODEL = Path("models/mnist1d-maxsup/1")
BATCH, PRE, TOTAL = 100, 20_000, 200_000
AUDIT, DELAY, NEVER, RECERT_N = 0.05, 3000.0, 0.10, 5000
TUNE = 0.3


def cp(k: int, n: int) -> str:
    lo = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
    hi = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
    return f"{k / n:.4f} [{lo:.4f}, {hi:.4f}] ({k}/{n})" if n else "n/a"


def shifted(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (x * rng.uniform(1.2, 1.45, (len(x), 1))).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/replay.png"), help="the plot")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    cal = load_calibration(MODEL)
    model = OnnxModel(MODEL / "model.onnx")
    rule = DecisionRule(cal)
    r_star = cal.target_risk
    d = load_dataset("mnist1d?n=20000&seed=1")
    pre_pool, post_pool, held = np.arange(6000), np.arange(6000, 16_000), np.arange(16_000, 20_000)

    # Traffic: which sample, shifted or not, and its logits (one session run per batch).
    n_batches = TOTAL // BATCH
    idx = np.where(np.arange(TOTAL) < PRE, rng.choice(pre_pool, TOTAL), rng.choice(post_pool, TOTAL))
    x = d.x[idx].copy()
    x[PRE:] = shifted(x[PRE:], rng)
    y = d.y[idx]
    audit = rng.random(TOTAL) < AUDIT
    arrive = np.where(rng.random(TOTAL) < NEVER, np.inf,
                      np.arange(TOTAL) + rng.exponential(DELAY, TOTAL))
    mon = ShiftMonitor(cal.coverage, cal.n_cert, alpha=0.01, horizon=1_000_000)
    epoch_start, epoch_cal = 0, cal

    def recertify(rows: np.ndarray):
        """Learn-then-Test planned on a random 30% of ``rows``, certified on the rest."""
        rows = np.random.default_rng(a.seed + 2).permutation(rows)
        nt = int(TUNE * rows.size)
        tune, cert = rows[:nt], rows[nt:]
        plan = plan_ltt(score[tune], label[tune] != y[tune], cert.size, r_star, cal.delta)
        return certify(score[cert], label[cert] != y[cert], r_star, cal.delta, plan=plan)

    label_order: list[int] = []             # sample indices in label-arrival order
    pending = np.zeros(0, np.int64)          # audited samples not yet labelled
    served_accept = np.zeros(TOTAL, bool)
    label, score = np.zeros(TOTAL, np.int64), np.zeros(TOTAL)
    events: dict[str, int] = {}
    labels_at: dict[str, int] = {}                     # this epoch's labelled audits at an event
    trace = {k: [] for k in ("t", "cov", "shift", "lo", "hi", "change", "labels", "wrong")}
    wrong_served = 0
    for b in range(n_batches):
        s0, s1 = b * BATCH, (b + 1) * BATCH
        dec = rule(model.run(x[s0:s1]))
        label[s0:s1], score[s0:s1] = dec.label, dec.score
        acc = ~dec.reject
        served_accept[s0:s1] = acc
        wrong_served += int(((dec.label != y[s0:s1]) & acc)[np.arange(BATCH) + s0 >= PRE].sum())
        st = mon.update(int(acc.sum()), BATCH)
        if st.detected and "shift monitor" not in events:
            events["shift monitor"] = s1
        # Labels that arrived by now, in arrival order (audits of all traffic are labelled).
        pending = np.r_[pending, np.flatnonzero(audit[s0:s1]) + s0]
        now = arrive[pending] <= s1
        done = pending[now][np.argsort(arrive[pending[now]], kind="stable")]
        pending = pending[~now]
        label_order.extend(done.tolist())
        lab = np.array(label_order, np.int64)
        acc_lab = lab[served_accept[lab] & (lab >= epoch_start)]   # this epoch's audited ACCEPTED
        errs = (label[acc_lab] != y[acc_lab]).astype(int)
        pend_acc = int(served_accept[pending].sum())
        risk = live_risk("mnist1d-maxsup", "1", epoch_cal.sha256, r_star, int(errs.sum()),
                         errs.size, pend_acc, 0.05)
        change = detect(errs, r_star)
        tag = "" if epoch_start == 0 else " (new epoch)"
        if risk.status == "alarm" and "live-risk bound" + tag not in events:
            events["live-risk bound" + tag] = s1
        if change.alarm and "change detector" + tag not in events:
            events["change detector" + tag] = s1
        for k in events.keys() - labels_at.keys():
            labels_at[k] = errs.size
        if RiskGuard._reasons(risk, change) and not rule.force_defer:
            rule.force_defer = True                        # --on-risk-alarm defer
            events["defer engaged" + tag] = s1
        trace["t"].append(s1)
        trace["cov"].append(acc.mean())
        trace["shift"].append(st.log_e)
        trace["lo"].append(risk.lower)
        trace["hi"].append(risk.upper)
        trace["change"].append(change.log_statistic)
        trace["labels"].append(errs.size)
        trace["wrong"].append(wrong_served)
        if "shift monitor" in events and "recertified" not in events:
            lab_post = lab[(lab >= events["shift monitor"])]
            if lab_post.size >= RECERT_N:
                events["recertified"] = s1
                recert_post, recert_all = lab_post[:RECERT_N], lab.copy()
                c = recertify(recert_post)
                if c.certified:                            # hot reload: a new rule, a new epoch
                    epoch_cal = dataclasses.replace(cal, threshold=c.threshold, coverage=c.coverage,
                                                    n_cert=c.n, risk=c.risk,
                                                    risk_upper_bound=c.risk_upper_bound)
                    rule, epoch_start = DecisionRule(epoch_cal), s1
                    mon = ShiftMonitor(epoch_cal.coverage, epoch_cal.n_cert, alpha=0.01,
                                       horizon=1_000_000)

    if "recertified" not in events:
        print(f"the replay ended before {RECERT_N:,} post-alarm audits were labelled",
              file=sys.stderr)
        return 1
    # Held-out shifted data, scored by the same session.
    hx = shifted(d.x[held], np.random.default_rng(a.seed + 1))
    hz = model.run(hx)
    hs = rule.score.of_logits(hz.astype(np.float64))
    herr = hz.argmax(1) != d.y[held]

    def held_out(th: float | None) -> str:
        if th is None:
            return "defer everything"
        m = hs >= th
        return f"coverage {m.mean():.3f}, selective risk {cp(int(herr[m].sum()), int(m.sum()))}"

    print(f"# Replayed shift (seed {a.seed}): r* = {r_star:g}, δ = {cal.delta:g}, certified "
          f"coverage {cal.coverage:.3f}, threshold {cal.threshold:.6f}\n")
    pre_acc = served_accept[:PRE]
    print(f"- before the shift: coverage {pre_acc.mean():.3f}, accepted risk "
          f"{cp(int((label[:PRE] != y[:PRE])[pre_acc].sum()), int(pre_acc.sum()))}")
    keep_rule = DecisionRule(cal)
    post = keep_rule(model.run(x[PRE:]))
    pacc = ~post.reject
    print(f"- after the shift (had the rule been kept): coverage {pacc.mean():.3f}, accepted risk "
          f"{cp(int((post.label != y[PRE:])[pacc].sum()), int(pacc.sum()))}")
    for k in ("shift monitor", "change detector", "live-risk bound", "defer engaged", "recertified",
              "change detector (new epoch)", "live-risk bound (new epoch)"):
        v = events.get(k)
        n_lab = (f"; {labels_at[k]:,} labelled audited accepted samples in the epoch"
                 if k in labels_at and k != "recertified" else "")
        print(f"- {k}: " + (f"prediction {v:,} ({v - PRE:,} after the shift{n_lab})" if v else "never"))
    engaged = events.get("defer engaged", TOTAL)
    before = int(((label != y) & served_accept)[PRE:engaged].sum())
    print(f"- wrong accepted predictions served after the shift before defer engaged: {before}")
    if epoch_start:
        new = served_accept[epoch_start:]
        wrong_new = int((label[epoch_start:] != y[epoch_start:])[new].sum())
        print(f"- served with the new calibration (threshold {epoch_cal.threshold:.6f}), "
              f"{TOTAL - epoch_start:,} predictions: coverage {new.mean():.3f}, accepted risk "
              f"{cp(wrong_new, int(new.sum()))}")
    kept = np.cumsum((post.label != y[PRE:]) & pacc)
    kept_wrong = int(kept[-1])
    trace["kept"] = np.r_[np.zeros(PRE), kept][BATCH - 1::BATCH]
    print(f"- with --on-risk-alarm keep, to prediction {TOTAL:,}: {kept_wrong}")
    for name, rows in (("post-alarm audits only (deployed)", recert_post),
                       ("every audit of the epoch (contrast)", recert_all)):
        c = recertify(rows)
        th = c.threshold
        pre = int((rows < PRE).sum())
        print(f"- recertified on {name}: {rows.size} labelled, {pre} of them pre-shift, "
              f"{c.n} certify: threshold {'none' if th is None else f'{th:.6f}'} "
              f"(certification coverage {c.coverage:.3f}); held-out shifted data: {held_out(th)}")
    print(f"- the shipped threshold on held-out shifted data: {held_out(cal.threshold)}")
    _plot(a.out, trace, events, cal, r_star)
    print(f"\nplot: {a.out}")
    return 0


def _plot(out: Path, tr: dict, events: dict, cal, r_star: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array(tr["t"]) / 1000
    fig, ax = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    cov = np.convolve(tr["cov"], np.ones(20) / 20, mode="same")
    ax[0].plot(t, cov, label="acceptance rate (rolling 2,000)")
    ax[0].axhline(cal.coverage, ls=":", c="k", label="certified coverage")
    ax[0].set_ylabel("coverage")
    ax[1].plot(t, tr["lo"], label="live-risk lower bound")
    ax[1].plot(t, tr["hi"], label="live-risk upper bound")
    ax[1].axhline(r_star, ls=":", c="k", label="r*")
    ax[1].set_ylim(0, 0.05)
    ax[1].set_ylabel("accepted risk")
    ax[2].plot(t, tr["shift"], label="shift monitor log e")
    ax[2].axhline(ShiftMonitor(0.5, 10, alpha=0.01, horizon=1_000_000).log_threshold, ls=":", c="C0")
    ch = np.where(np.isfinite(tr["change"]), tr["change"], np.nan)
    ax[2].plot(t, ch, label="change detector log D", c="C1")
    ax[2].axhline(math.log(100_000), ls=":", c="C1")
    ax[2].set_ylim(-5, 30)
    ax[2].set_ylabel("log statistic")
    ax[3].plot(t, tr["kept"], label="--on-risk-alarm keep", c="grey")
    ax[3].plot(t, tr["wrong"], label="--on-risk-alarm defer, then the recertified threshold",
               c="C3")
    ax[3].set_ylabel("wrong accepted\nsince the shift")
    ax[3].set_xlabel("predictions served (thousands)")
    for axis in ax:
        axis.axvline(PRE / 1000, c="grey", lw=3, alpha=0.4)
        for k, c in (("shift monitor", "C0"), ("change detector", "C1"),
                     ("live-risk bound", "C2"), ("defer engaged", "C3"),
                     ("recertified", "C4"), ("defer engaged (new epoch)", "C5")):
            if k in events:
                axis.axvline(events[k] / 1000, c=c, ls="--", lw=1,
                             label=(k if k != "recertified" else "recertified, new calibration served")
                             if axis is ax[0] else None)
        axis.legend(fontsize=7, loc="upper right")
    ax[0].set_title("Replayed shift: grey = the shift; dashed = when each monitor fired\n"
                    "(defer engages in the batch after the first risk alarm)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
