"""The shed hold: after a 503, the client that got it is not served again for a while.

A client that ignores ``Retry-After`` and fires again at once would otherwise spend the capacity
the 503 protected on more refusals (refusing a 64-sample request still costs reading its 50 KB
body; at 16× the queue a 1 s hold left 14% of the goodput to refusals). So each transport holds
the client back for :func:`hold_s`: ``shed_hold_s`` ±50%, doubled for each further 503 in a row
(up to 8×; any other answer resets it) — the exponential back-off such a client does not do
itself. The jitter matters: a flood refused in one burst would otherwise come back in one burst
every hold, in lock-step (measured: ~480 refusals in one event-loop turn, a 90 ms stall for
every answer in flight).

HTTP holds a connection by not reading it (``serve/server/http_protocol.py``); gRPC multiplexes
calls on a connection it does not control, so it holds a peer's next calls before admission
(:class:`PeerHolds`, ``serve/server/grpc_service.py``): held, a call costs no capacity.
"""

from __future__ import annotations

import random

MAX_STRIKES = 3                 # the hold doubles up to 2**3 = 8× for repeat offenders
MAX_PEERS = 4096                # gRPC peers whose holds are remembered at once


def hold_s(base_s: float, strikes: int) -> float:
    """The hold after a 503 that follows ``strikes`` 503s in a row on the same client."""
    return base_s * 2 ** min(strikes, MAX_STRIKES) * random.uniform(0.5, 1.5)


class _Hold:
    __slots__ = ("since", "until", "strikes")

    def __init__(self) -> None:
        self.since = self.until = 0.0
        self.strikes = 0


class PeerHolds:
    """The holds of gRPC peers (one per client connection, ``context.peer()``).

    A peer is forgotten when it is answered with anything but a 503 after its hold, when its last
    hold has been over for as long as the longest hold, or — beyond ``max_peers`` — oldest
    first, so a flood from many connections cannot grow it without bound.
    """

    def __init__(self, base_s: float, max_peers: int = MAX_PEERS) -> None:
        self.base_s, self.max_peers = base_s, max_peers
        self.forget_s = base_s * 2 ** MAX_STRIKES * 1.5
        self._peers: dict[str, _Hold] = {}

    def __bool__(self) -> bool:
        """Whether any peer is remembered (calls skip the look-up while none is)."""
        return bool(self._peers)

    def wait_s(self, peer: str, now: float) -> float:
        """Seconds ``peer`` is still held at ``now`` (``time.monotonic()``); 0 when it is not."""
        hold = self._peers.get(peer)
        if hold is None:
            return 0.0
        if now >= hold.until + self.forget_s:
            del self._peers[peer]
            return 0.0
        return max(hold.until - now, 0.0)

    def shed(self, peer: str, arrived: float, now: float) -> None:
        """``peer``'s call that ``arrived`` at that time was answered 503: hold the peer — unless
        a hold started since the call arrived (a burst of calls is one strike, as a burst of
        pipelined requests on a held HTTP connection is; a call that waited out a hold arrived
        before its end, so its 503 starts the next)."""
        if self.base_s <= 0:
            return
        hold = self._peers.get(peer)
        if hold is None:
            if len(self._peers) >= self.max_peers:
                self._make_room(now)
            hold = self._peers[peer] = _Hold()
        elif hold.since > arrived:
            return
        hold.since, hold.until = now, now + hold_s(self.base_s, hold.strikes)
        hold.strikes += 1

    def served(self, peer: str, now: float) -> None:
        """``peer`` got another answer than a 503: its next 503 is a first one again (a hold
        already on stays on, as a held HTTP connection stays unread)."""
        hold = self._peers.get(peer)
        if hold is not None:
            if now >= hold.until:
                del self._peers[peer]
            else:
                hold.strikes = 0

    def _make_room(self, now: float) -> None:
        for peer in [p for p, h in self._peers.items() if now >= h.until + self.forget_s]:
            del self._peers[peer]
        while len(self._peers) >= self.max_peers:
            del self._peers[next(iter(self._peers))]
