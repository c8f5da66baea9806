"""The shed hold's policy (serve/server/shed_hold.py): jitter, strikes, and gRPC's peer table."""

from __future__ import annotations

from serve.server.shed_hold import MAX_STRIKES, PeerHolds, hold_s


def test_a_hold_is_jittered_and_doubles_per_strike_up_to_8x():
    for strikes in range(6):
        factor = 2 ** min(strikes, MAX_STRIKES)
        got = [hold_s(0.2, strikes) for _ in range(200)]
        assert all(0.1 * factor <= g <= 0.3 * factor for g in got)
        assert max(got) - min(got) > 0.1 * factor            # jittered, not one value


def test_peers_are_held_once_per_burst_and_reset_when_served():
    holds = PeerHolds(1.0)
    assert not holds and holds.wait_s("a", 0.0) == 0.0
    holds.shed("a", arrived=0.0, now=0.1)
    first = holds.wait_s("a", 0.1)
    assert 0.5 <= first <= 1.5 and holds.wait_s("b", 0.1) == 0.0
    holds.shed("a", arrived=0.05, now=0.12)                 # same burst: no second strike
    assert holds.wait_s("a", 0.1) == first
    end = 0.1 + first
    holds.shed("a", arrived=0.2, now=end)                   # waited it out, refused again: 2×
    assert 1.0 <= holds.wait_s("a", end) <= 3.0
    holds.served("a", end + 0.01)                           # a hold on stays on …
    assert holds.wait_s("a", end + 0.01) > 0
    later = end + 4.0
    holds.shed("a", arrived=later, now=later)               # … but the strikes start over
    assert 0.5 <= holds.wait_s("a", later) <= 1.5
    holds.served("a", later + 2.0)                          # served after its hold: forgotten
    assert not holds


def test_the_peer_table_is_bounded_and_expires():
    holds = PeerHolds(10.0, max_peers=3)                  # none expires: the oldest go
    for i in range(10):
        holds.shed(f"p{i}", arrived=float(i), now=float(i))
    assert list(holds._peers) == ["p7", "p8", "p9"]
    holds = PeerHolds(0.1, max_peers=3)                   # expired ones go first
    holds.shed("old", arrived=0.0, now=0.0)
    holds.shed("p1", arrived=9.0, now=9.0)
    holds.shed("p2", arrived=9.0, now=9.0)
    holds.shed("p3", arrived=9.5, now=9.5)
    assert list(holds._peers) == ["p1", "p2", "p3"]
    assert holds.wait_s("p3", 100.0) == 0.0 and "p3" not in holds._peers   # long over: forgotten
