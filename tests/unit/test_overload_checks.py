"""bench/overload.py's verdicts: goodput ratios, drain-time bound per overload point, RSS."""

from __future__ import annotations

from bench.overload import OverloadPoint, checks, quantile


def _pt(mult: int, goodput: float, p99: float, refused_p99: float | None = 2.0,
        rss_after: float | None = None) -> OverloadPoint:
    return OverloadPoint(64, 2048, mult, 32 * mult, goodput, 0.0, 0.0, 30.0, p99, 30.0, p99, 0,
                         None if refused_p99 is None else 1.0, refused_p99, 100, 100.0, rss_after)


def test_verdicts_use_each_overload_points_own_drain_time():
    pts = [_pt(1, 1000, 90.0, None), _pt(4, 950, 30.0), _pt(16, 800, 42.0, 4.0, 105.0)]
    got = {what: (measured, ok) for what, measured, ok in checks(pts, 64)}
    assert got["64-sample, 4×: goodput vs 1×"] == ("0.95", True)
    assert got["64-sample, 16×: goodput vs 1×"] == ("0.80", False)
    (served,) = [v for k, v in got.items() if "served p99" in k]
    # 16×: (2048 + 64) / (800 · 64) s = 41.25 ms < 42 ms → the worst point, a miss; 1× is not
    # judged, only reported beside it: (2048 + 64) / (1000 · 64) s = 33.0 ms
    assert served == ("42.0 ms ≤ 41.2 ms at 16× (1×, no overload: 90.0 ms against 33.0)", False)
    (refused,) = [v for k, v in got.items() if "refused" in k]
    assert refused == ("4.00 ms", True)
    (rss,) = [v for k, v in got.items() if "RSS" in k]
    assert rss[1] is True and "+5.0%" in rss[0]


def test_quantile_interpolates_inside_a_bucket():
    before = {0.01: 0.0, 0.02: 0.0, float("inf"): 0.0}
    after = {0.01: 50.0, 0.02: 100.0, float("inf"): 100.0}
    assert abs(quantile(0.5, before, after) - 10.0) < 1e-9
    assert abs(quantile(0.75, before, after) - 15.0) < 1e-9
