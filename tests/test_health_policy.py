"""Health policies (rise/fall, outlier detection, ejection time) and the supervisor that
combines them, driven by a FakeClock: pure, synchronous, no I/O, no sleeps."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest

from haproxy_ai.backends import Backend, BackendSnapshot, Registry
from haproxy_ai.clock import FakeClock
from haproxy_ai.health import HealthSupervisor, ProbeResult, State, UnknownBackend
from haproxy_ai.health.checks import RiseFall
from haproxy_ai.health.passive import OutlierDetector, ejection_time, is_failure
from haproxy_ai.metrics import Metrics
from haproxy_ai.outcome import Outcome, retry_after_seconds
from haproxy_ai.settings import BackendSettings, HealthSettings, PassiveSettings, parse_settings

# -- helpers -------------------------------------------------------------------------------------


def _backend_config(n: int, weights: dict[int, int] | None = None) -> list[dict[str, Any]]:
    weights = weights or {}
    return [{"url": f"http://127.0.0.1:{9000 + i}", "name": f"b{i}", "weight": weights.get(i, 1)} for i in range(n)]


def _health(**health: Any) -> HealthSettings:
    return parse_settings({"health": health}, require_backends=False).health


def _passive(**passive: Any) -> PassiveSettings:
    return _health(passive=passive).passive


def _backend_settings(n: int, weights: dict[int, int] | None = None) -> tuple[BackendSettings, ...]:
    return parse_settings({"backends": _backend_config(n, weights)}).backends


@dataclass
class Harness:
    clock: FakeClock
    registry: Registry
    metrics: Metrics
    sup: HealthSupervisor
    backends: list[Backend]

    def snap(self) -> BackendSnapshot:
        return self.registry.snapshot()

    def routable(self) -> list[str]:
        return [b.name for b in self.snap().routable]

    def weights(self) -> dict[str, float]:
        snap = self.snap()
        return {b.name: w for b, w in zip(snap.routable, snap.weights, strict=True)}

    def state(self, i: int) -> State:
        return self.sup.get(f"b{i}").state

    def fail(self, i: int, times: int = 1, outcome: Outcome = Outcome.SERVER_ERROR) -> None:
        for _ in range(times):
            self.sup.record(self.backends[i], outcome)

    def probe(self, i: int, ok: bool, times: int = 1) -> None:
        result = ProbeResult(
            ok=ok,
            status=200 if ok else 503,
            detail="200" if ok else "status 503 not expected",
            duration=0.01,
            at=self.clock.time(),
        )
        for _ in range(times):
            self.sup.probe_result(self.backends[i], result)

    def step(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.sup.tick()

    def sample(self, name: str, **labels: str) -> float:
        if "backend" in labels or name == "haproxy_ai_panic_mode":
            labels = {"pool": "default", **labels}
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def make(n: int = 3, *, weights: dict[int, int] | None = None, **health: Any) -> Harness:
    settings = parse_settings({"backends": _backend_config(n, weights), "health": health})
    clock = FakeClock()
    backends = [Backend(b.name, b.url, b.weight) for b in settings.backends]
    registry = Registry(backends)
    metrics = Metrics()
    sup = HealthSupervisor(
        settings.health,
        registry,
        clock=clock,
        metrics=metrics,
        rng=random.Random(0),
        backend_settings=settings.backends,
    )
    return Harness(clock, registry, metrics, sup, backends)


# -- 1. RiseFall ---------------------------------------------------------------------------------


def test_rise_fall_goes_down_after_fall_failures() -> None:
    rf = RiseFall(rise=2, fall=3)
    assert rf.up and not rf.changing
    assert rf.record(False, "boom") is None
    assert rf.changing
    assert rf.record(False, "boom") is None
    assert rf.record(False, "boom") is False
    assert not rf.up and not rf.changing
    assert rf.cause == "probe failed 3x: boom"


def test_rise_fall_comes_up_after_rise_passes() -> None:
    rf = RiseFall(rise=2, fall=3, up=False)
    assert rf.record(False) is None  # already down: no streak
    assert not rf.changing
    assert rf.record(True) is None
    assert rf.changing
    assert rf.record(True) is True
    assert rf.up and not rf.changing
    assert rf.cause == "probe passed 2x"


def test_rise_fall_pass_resets_failing_streak() -> None:
    rf = RiseFall(rise=2, fall=3)
    for ok in (False, False, True, False, False):
        assert rf.record(ok) is None
    assert rf.up and rf.changing
    assert rf.record(False) is False


# -- 2. is_failure -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "throttle_is_failure", "expected"),
    [
        (Outcome.SUCCESS, False, False),
        (Outcome.CLIENT_ERROR, False, None),
        (Outcome.CLIENT_GONE, False, None),
        (Outcome.TOTAL_TIMEOUT, False, None),
        (Outcome.THROTTLED, False, None),
        (Outcome.THROTTLED, True, True),
        (Outcome.SERVER_ERROR, False, True),
        (Outcome.CONNECT_FAILED, False, True),
        (Outcome.CONNECT_TIMEOUT, False, True),
        (Outcome.RESET, False, True),
        (Outcome.FIRST_BYTE_TIMEOUT, False, True),
        (Outcome.IDLE_TIMEOUT, False, True),
    ],
)
def test_is_failure(outcome: Outcome, throttle_is_failure: bool, expected: bool | None) -> None:
    assert is_failure(outcome, _passive(throttle_is_failure=throttle_is_failure)) is expected


# -- 3. ejection_time ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ejections", "expected"),
    [(0, 30.0), (1, 30.0), (2, 60.0), (3, 90.0), (10, 300.0), (11, 300.0), (1000, 300.0)],
)
def test_ejection_time_grows_and_is_capped(ejections: int, expected: float) -> None:
    settings = _passive(base_ejection_time=30, max_ejection_time=300)
    assert ejection_time(settings, ejections) == expected


# -- 4. OutlierDetector --------------------------------------------------------------------------


def test_detector_consecutive_failures_trigger() -> None:
    detector = OutlierDetector(_passive(consecutive_failures=3))
    assert detector.record(True, 0.0) is None
    assert detector.record(True, 0.1) is None
    assert detector.record(True, 0.2) == "consecutive_failures"


def test_detector_success_resets_streak() -> None:
    detector = OutlierDetector(_passive(consecutive_failures=3))
    for failure in (True, True, False, True, True):
        assert detector.record(failure, 0.0) is None
    assert detector.consecutive == 2
    assert detector.record(True, 0.0) == "consecutive_failures"


def test_detector_failure_rate_needs_min_requests() -> None:
    detector = OutlierDetector(
        _passive(consecutive_failures=0, failure_rate=0.5, failure_rate_min_requests=10, failure_rate_window=30)
    )
    # S F S F ...: the rate is 50% from the start, but only 10 requests make it count.
    for i in range(9):
        assert detector.record(i % 2 == 1, float(i)) is None
    assert detector.counts(9.0) == (9, 4)
    assert detector.record(True, 9.0) == "failure_rate"


def test_detector_consecutive_zero_disables_that_trigger() -> None:
    detector = OutlierDetector(_passive(consecutive_failures=0, failure_rate_min_requests=100))
    assert all(detector.record(True, 0.0) is None for _ in range(99))


@pytest.mark.parametrize(("elapsed", "expected"), [(29.9, "failure_rate"), (30.0, None), (45.0, None)])
def test_detector_window_slides(elapsed: float, expected: str | None) -> None:
    detector = OutlierDetector(
        _passive(consecutive_failures=0, failure_rate=0.5, failure_rate_min_requests=10, failure_rate_window=30)
    )
    for _ in range(9):
        assert detector.record(True, 0.0) is None
    assert detector.record(True, elapsed) == expected
    if expected is None:
        assert detector.counts(elapsed) == (1, 1)


def test_detector_error_rate_and_reset() -> None:
    detector = OutlierDetector(_passive(consecutive_failures=0))
    assert detector.error_rate(0.0) is None
    for failure in (True, False, False, False):
        detector.record(failure, 0.0)
    assert detector.error_rate(0.0) == 0.25
    detector.reset()
    assert detector.error_rate(0.0) is None
    assert detector.consecutive == 0


# -- 5. passive ejection -------------------------------------------------------------------------


def test_passive_ejection_and_recovery() -> None:
    h = make(3)
    h.fail(0, 4)
    assert h.routable() == ["b0", "b1", "b2"]
    h.fail(0)
    assert h.routable() == ["b1", "b2"]
    assert h.state(0) is State.EJECTED
    record = h.sup.get("b0")
    assert record.ejections == 1
    last = record.history[-1]
    assert (last.from_state, last.to_state) == (State.HEALTHY, State.EJECTED)
    assert last.cause.startswith("consecutive_failures: server_error")
    assert "30s" in last.cause
    assert h.sample("haproxy_ai_ejections_total", backend="b0", reason="consecutive_failures") == 1

    h.step(29.9)
    assert h.state(0) is State.EJECTED
    h.step(0.1)
    assert h.state(0) is State.HEALTHY
    assert "b0" in h.routable()
    assert record.history[-1].cause == "ejection ended"


def test_second_ejection_lasts_twice_as_long() -> None:
    h = make(3)
    h.fail(0, 5)
    h.step(30)
    assert h.state(0) is State.HEALTHY
    h.fail(0, 5)
    assert h.sup.get("b0").ejections == 2
    h.step(59.9)
    assert h.state(0) is State.EJECTED
    h.step(0.1)
    assert h.state(0) is State.HEALTHY


@pytest.mark.parametrize(("gap", "ejections", "duration"), [(300.0, 2, 60.0), (301.0, 1, 30.0)])
def test_ejection_count_resets_when_ejections_are_far_apart(gap: float, ejections: int, duration: float) -> None:
    h = make(3, passive={"max_ejection_time": 300})
    h.fail(0, 5)
    h.step(30)  # the first ejection ends here
    h.step(gap)
    h.fail(0, 5)
    record = h.sup.get("b0")
    assert record.ejections == ejections
    assert record.ejected_until - h.clock.monotonic() == duration


def test_failures_during_ejection_do_not_count_after_recovery() -> None:
    h = make(3)
    h.fail(0, 5)
    assert h.state(0) is State.EJECTED
    h.fail(0, 4)  # attempts that were in flight when b0 was ejected finish with errors
    h.step(30)
    assert h.state(0) is State.HEALTHY
    h.fail(0)  # the first failure after recovery: a streak of one, not five
    assert h.state(0) is State.HEALTHY


# -- 6. max_ejection_percent ---------------------------------------------------------------------


def test_max_ejection_percent_limits_concurrent_ejections() -> None:
    h = make(4, passive={"max_ejection_percent": 50})
    h.fail(0, 5)
    h.fail(1, 5)
    assert [h.state(i) for i in range(4)] == [State.EJECTED, State.EJECTED, State.HEALTHY, State.HEALTHY]
    h.fail(2, 5)
    assert h.state(2) is State.HEALTHY
    assert "b2" in h.routable()
    assert h.sup.get("b2").ejections == 0
    assert h.sample("haproxy_ai_ejections_skipped_total", backend="b2") == 1
    # Once an ejection ends there is room again.
    h.step(30)
    h.fail(2, 5)
    assert h.state(2) is State.EJECTED


# -- 7. panic ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threshold", "unhealthy", "panic"),
    [(0.5, 1, False), (0.5, 2, False), (0.5, 3, True), (0.5, 4, True), (0.0, 3, False), (0.0, 4, False)],
)
def test_panic_mode(threshold: float, unhealthy: int, panic: bool) -> None:
    h = make(4, panic_threshold=threshold)
    for i in range(unhealthy):
        h.probe(i, ok=False, times=3)
        assert h.state(i) is State.UNHEALTHY
    healthy = [f"b{i}" for i in range(unhealthy, 4)]
    assert h.snap().panic is panic
    assert h.routable() == (["b0", "b1", "b2", "b3"] if panic else healthy)
    assert h.sample("haproxy_ai_panic_mode") == (1 if panic else 0)

    for i in range(unhealthy):
        h.probe(i, ok=True, times=2)
    assert h.snap().panic is False
    assert h.routable() == ["b0", "b1", "b2", "b3"]


def test_panic_never_routes_to_draining_or_disabled() -> None:
    h = make(4)
    h.sup.drain("b2")
    h.sup.disable("b3")
    h.probe(1, ok=False, times=3)
    assert not h.snap().panic  # 1 of 2 enabled is healthy
    assert h.routable() == ["b0"]
    h.probe(0, ok=False, times=3)
    assert h.snap().panic
    assert h.routable() == ["b0", "b1"]


# -- 8. active checks ----------------------------------------------------------------------------


def test_active_probes_fall_and_rise() -> None:
    h = make(3)
    h.probe(0, ok=False, times=2)
    assert h.state(0) is State.HEALTHY
    h.probe(0, ok=False)
    assert h.state(0) is State.UNHEALTHY
    assert "b0" not in h.routable()
    assert h.sup.get("b0").cause == "probe failed 3x: status 503 not expected"
    h.probe(0, ok=True)
    assert h.state(0) is State.UNHEALTHY
    h.probe(0, ok=True)
    assert h.state(0) is State.HEALTHY
    assert "b0" in h.routable()
    assert h.sample("haproxy_ai_health_probes_total", backend="b0", result="failure") == 3
    assert h.sample("haproxy_ai_health_probes_total", backend="b0", result="success") == 2


def test_passing_probe_does_not_lift_ejection() -> None:
    h = make(3)
    h.fail(0, 5)
    h.probe(0, ok=True, times=5)
    assert h.state(0) is State.EJECTED
    h.probe(0, ok=False, times=3)
    assert h.state(0) is State.UNHEALTHY  # unhealthy takes precedence
    h.probe(0, ok=True, times=2)
    assert h.state(0) is State.EJECTED  # probes came back, the ejection still runs
    assert "b0" not in h.routable()
    h.step(30)
    assert h.state(0) is State.HEALTHY


# -- 9. slow start -------------------------------------------------------------------------------


def test_slow_start_ramps_weight_after_recovery() -> None:
    h = make(3, weights={0: 2}, slow_start=30)
    assert h.weights() == {"b0": 2.0, "b1": 1.0, "b2": 1.0}  # no ramp at startup
    h.probe(0, ok=False, times=3)
    h.probe(0, ok=True, times=2)
    assert h.weights()["b0"] == pytest.approx(0.2)
    h.step(0)
    assert h.weights()["b0"] == pytest.approx(0.2)
    h.step(15)
    # Linear from 10% to 100%: halfway is 10% + 90% x 0.5 = 55% of weight 2.
    assert h.weights()["b0"] == pytest.approx(1.1)
    assert h.sup.describe(h.sup.get("b0"))["effective_weight"] == pytest.approx(1.1)
    h.step(15)
    assert h.weights()["b0"] == pytest.approx(2.0)
    h.step(100)
    assert h.weights()["b0"] == pytest.approx(2.0)


def test_slow_start_after_ejection() -> None:
    h = make(3, slow_start=30)
    h.fail(0, 5)
    h.step(30)
    assert h.weights()["b0"] == pytest.approx(0.1)


def test_slow_start_zero_disables_ramp() -> None:
    h = make(3, weights={0: 2}, slow_start=0)
    h.probe(0, ok=False, times=3)
    h.probe(0, ok=True, times=2)
    h.step(0)
    assert h.weights()["b0"] == 2.0


# -- 10. cooldown --------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", [Outcome.THROTTLED, Outcome.SERVER_ERROR])
def test_retry_after_cooldown(outcome: Outcome) -> None:
    h = make(3)
    h.sup.record(h.backends[0], outcome, retry_after=5)
    assert h.state(0) is State.COOLDOWN
    assert "b0" not in h.routable()
    record = h.sup.get("b0")
    assert record.cause == "Retry-After 5s"
    assert record.ejections == 0
    assert record.detector.counts(h.clock.monotonic()) == (0, 0)  # not a failure
    assert h.sample("haproxy_ai_ejections_total", backend="b0", reason="consecutive_failures") == 0
    h.step(4.9)
    assert h.state(0) is State.COOLDOWN
    h.step(0.1)
    assert h.state(0) is State.HEALTHY
    assert "b0" in h.routable()


def test_retry_after_capped_by_max_cooldown() -> None:
    h = make(3, passive={"max_cooldown": 60})
    h.sup.record(h.backends[0], Outcome.THROTTLED, retry_after=3600)
    assert h.sup.get("b0").cooldown_until - h.clock.monotonic() == 60
    h.step(60)
    assert h.state(0) is State.HEALTHY


def test_shorter_retry_after_does_not_shorten_cooldown() -> None:
    h = make(3)
    h.sup.record(h.backends[0], Outcome.THROTTLED, retry_after=10)
    h.sup.record(h.backends[0], Outcome.THROTTLED, retry_after=1)
    h.step(5)
    assert h.state(0) is State.COOLDOWN


def test_server_error_with_retry_after_counts_when_cooldown_is_off() -> None:
    h = make(3, passive={"max_cooldown": 0})
    for _ in range(5):
        h.sup.record(h.backends[0], Outcome.SERVER_ERROR, retry_after=5)
    assert h.state(0) is State.EJECTED


# -- 11. what never ejects -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "outcome", [Outcome.CLIENT_ERROR, Outcome.CLIENT_GONE, Outcome.TOTAL_TIMEOUT, Outcome.THROTTLED]
)
def test_outcomes_that_never_eject(outcome: Outcome) -> None:
    h = make(3)
    h.fail(0, 100, outcome)
    assert h.state(0) is State.HEALTHY
    assert h.sup.get("b0").detector.counts(h.clock.monotonic()) == (0, 0)


def test_throttle_is_failure_ejects() -> None:
    h = make(3, passive={"throttle_is_failure": True})
    h.fail(0, 5, Outcome.THROTTLED)
    assert h.state(0) is State.EJECTED


def test_passive_disabled_never_ejects() -> None:
    h = make(3, passive={"enabled": False})
    h.fail(0, 100)
    for _ in range(10):
        h.sup.stalled(h.backends[0])
    assert h.state(0) is State.HEALTHY


@pytest.mark.parametrize(("min_requests", "expected"), [(1000, State.HEALTHY), (20, State.EJECTED)])
def test_interleaved_successes_defeat_streak_but_not_rate(min_requests: int, expected: State) -> None:
    h = make(3, passive={"failure_rate_min_requests": min_requests})
    for _ in range(10):
        h.fail(0, 4)
        h.sup.record(h.backends[0], Outcome.SUCCESS)
    assert h.state(0) is expected
    if expected is State.EJECTED:
        assert h.sup.get("b0").cause.startswith("failure_rate: server_error")


# -- 12. slow first byte -------------------------------------------------------------------------


def test_slow_first_byte_counts_as_failure() -> None:
    h = make(3)
    for _ in range(20):
        h.sup.record(h.backends[1], Outcome.SUCCESS, first_byte=0.1)
    h.sup.record(h.backends[0], Outcome.SUCCESS, first_byte=4.0)  # > 10x the norm, under the 5s floor
    assert h.sup.get("b0").detector.consecutive == 0
    for _ in range(4):
        h.sup.record(h.backends[0], Outcome.SUCCESS, first_byte=10.0)
    assert h.state(0) is State.HEALTHY
    assert h.sup.get("b0").detector.consecutive == 4
    h.sup.record(h.backends[0], Outcome.SUCCESS, first_byte=10.0)
    assert h.state(0) is State.EJECTED
    assert "first byte after 10.0s" in h.sup.get("b0").cause


def test_slow_first_byte_needs_a_norm() -> None:
    h = make(3)
    for _ in range(5):
        h.sup.record(h.backends[0], Outcome.SUCCESS, first_byte=10.0)
    assert h.state(0) is State.HEALTHY


def test_slow_first_byte_factor_zero_disables() -> None:
    h = make(3, passive={"slow_first_byte_factor": 0})
    h.sup.record(h.backends[1], Outcome.SUCCESS, first_byte=0.1)
    for _ in range(5):
        h.sup.record(h.backends[0], Outcome.SUCCESS, first_byte=60.0)
    assert h.state(0) is State.HEALTHY


# -- 13. stalls ----------------------------------------------------------------------------------


def test_stalled_counts_as_failure() -> None:
    h = make(3)
    for _ in range(4):
        h.sup.stalled(h.backends[0])
    assert h.state(0) is State.HEALTHY
    h.sup.stalled(h.backends[0])
    assert h.state(0) is State.EJECTED
    assert "stream stalled 30s" in h.sup.get("b0").cause
    assert h.sample("haproxy_ai_stream_stalls_total", backend="b0") == 5


# -- 14. operator actions ------------------------------------------------------------------------


def test_operator_drain_enable_disable() -> None:
    h = make(3)
    h.sup.drain("b0")
    assert h.state(0) is State.DRAINING
    assert h.routable() == ["b1", "b2"]
    assert h.sup.get("b0").cause == "drained by operator"
    h.sup.enable("b0")
    assert h.state(0) is State.HEALTHY
    assert h.routable() == ["b0", "b1", "b2"]
    h.sup.disable("b0")
    assert h.state(0) is State.DISABLED
    assert h.routable() == ["b1", "b2"]
    assert [(t.from_state, t.to_state) for t in h.sup.get("b0").history] == [
        (State.HEALTHY, State.DRAINING),
        (State.DRAINING, State.HEALTHY),
        (State.HEALTHY, State.DISABLED),
    ]


def test_operator_set_weight() -> None:
    h = make(3)
    h.sup.set_weight("b1", 5)
    assert h.weights() == {"b0": 1.0, "b1": 5.0, "b2": 1.0}
    assert h.sample("haproxy_ai_backend_weight", backend="b1") == 5.0


@pytest.mark.parametrize("action", ["drain", "disable", "enable", "set_weight"])
def test_operator_unknown_backend(action: str) -> None:
    h = make(3)
    args: tuple[Any, ...] = ("nope", 2) if action == "set_weight" else ("nope",)
    with pytest.raises(UnknownBackend) as info:
        getattr(h.sup, action)(*args)
    assert isinstance(info.value, KeyError)


# -- 15. reconfigure -----------------------------------------------------------------------------


def test_reconfigure_adds_backend() -> None:
    h = make(2)
    changes = h.sup.reconfigure(_backend_settings(3), decay=10.0)
    assert changes == {"added": ["b2"], "removed": [], "reweighted": [], "replaced": []}
    assert h.routable() == ["b0", "b1", "b2"]
    assert h.sup.get("b2").backend.url == "http://127.0.0.1:9002"


def test_reconfigure_removed_backend_lingers_while_in_flight() -> None:
    h = make(3)
    h.backends[2].stats.inflight = 1
    changes = h.sup.reconfigure(_backend_settings(2), decay=10.0)
    assert changes["removed"] == ["b2"]
    assert h.state(2) is State.DRAINING
    assert h.routable() == ["b0", "b1"]
    h.step(1)
    assert [b.name for b in h.snap().backends] == ["b0", "b1", "b2"]
    with pytest.raises(UnknownBackend):
        h.sup.enable("b2")
    h.backends[2].stats.inflight = 0
    h.step(1)
    assert [b.name for b in h.snap().backends] == ["b0", "b1"]
    with pytest.raises(UnknownBackend):
        h.sup.get("b2")


def test_reconfigure_reweights() -> None:
    h = make(3)
    changes = h.sup.reconfigure(_backend_settings(3, weights={1: 4}), decay=10.0)
    assert changes["reweighted"] == ["b1"]
    assert h.weights() == {"b0": 1.0, "b1": 4.0, "b2": 1.0}


def test_reconfigure_url_change_replaces_backend() -> None:
    h = make(2)
    h.backends[1].stats.inflight = 1
    settings = parse_settings(
        {"backends": [{"url": "http://127.0.0.1:9000", "name": "b0"}, {"url": "http://127.0.0.1:9999", "name": "b1"}]}
    ).backends
    changes = h.sup.reconfigure(settings, decay=10.0)
    assert changes == {"added": [], "removed": [], "reweighted": [], "replaced": ["b1"]}
    new = h.sup.get("b1").backend
    assert new is not h.backends[1]
    assert new.url == "http://127.0.0.1:9999"
    assert h.snap().routable == (h.backends[0], new)
    # Outcomes of attempts to the old object no longer touch the new record.
    h.fail(1, 5)
    assert h.state(1) is State.HEALTHY


def test_reconfigure_readds_backend_still_draining() -> None:
    h = make(3)
    h.backends[2].stats.inflight = 1
    h.sup.reconfigure(_backend_settings(2), decay=10.0)
    h.sup.reconfigure(_backend_settings(3), decay=10.0)
    h.backends[2].stats.inflight = 0
    h.step(1)
    assert h.routable() == ["b0", "b1", "b2"]


# -- 16. retry_after_seconds ---------------------------------------------------------------------

_DATE = b"Wed, 21 Oct 2015 07:28:00 GMT"
_DATE_TS = 1445412480.0


@pytest.mark.parametrize(
    ("headers", "now", "expected"),
    [
        ([(b"retry-after", b"5")], 0.0, 5.0),
        ([(b"Retry-After", b" 120 ")], 0.0, 120.0),
        ([(b"content-type", b"text/plain"), (b"RETRY-AFTER", b"0")], 0.0, 0.0),
        ([(b"retry-after", _DATE)], _DATE_TS - 90, 90.0),
        ([(b"retry-after", _DATE)], _DATE_TS + 90, 0.0),  # a date in the past: retry now
        ([(b"retry-after", b"soon")], 0.0, None),
        ([(b"retry-after", b"")], 0.0, None),
        ([(b"retry-after", b"nan")], 0.0, None),
        ([(b"retry-after", b"inf")], 0.0, None),
        ([(b"content-type", b"text/plain")], 0.0, None),
        ([], 0.0, None),
    ],
)
def test_retry_after_seconds(headers: list[tuple[bytes, bytes]], now: float, expected: float | None) -> None:
    assert retry_after_seconds(headers, now) == expected


# -- 17. describe --------------------------------------------------------------------------------


def test_describe() -> None:
    h = make(3)
    h.probe(0, ok=True)
    h.fail(0, 5)
    view = h.sup.describe(h.sup.get("b0"))
    assert view.keys() >= {
        "name",
        "url",
        "weight",
        "effective_weight",
        "state",
        "cause",
        "in_flight",
        "ewma_latency_ms",
        "error_rate",
        "last_probe",
        "history",
    }
    assert view["name"] == "b0"
    assert view["url"] == "http://127.0.0.1:9000"
    assert view["weight"] == 1.0
    assert view["state"] == "ejected"
    assert view["routable"] is False
    assert view["in_flight"] == 0
    assert view["ewma_latency_ms"] is None
    assert view["error_rate"] is None  # the detector restarts with the ejection
    assert view["last_probe"] == {"at": h.clock.time(), "ok": True, "status": 200, "detail": "200", "duration_ms": 10.0}
    assert [(t["from"], t["to"]) for t in view["history"]] == [("healthy", "ejected")]
    assert view["ejected_for_s"] == 30.0


# -- behaviours settled after review -------------------------------------------------------------


def test_retry_after_zero_is_not_a_cooldown() -> None:
    h = make(3, passive={"consecutive_failures": 2})
    h.sup.record(h.backends[0], Outcome.SERVER_ERROR, retry_after=0.0)
    h.sup.record(h.backends[0], Outcome.SERVER_ERROR, retry_after=0.0)
    assert h.state(0) is State.EJECTED  # counted as the 5xx it is


def test_no_slow_start_after_a_cooldown() -> None:
    h = make(3, slow_start=30)
    h.sup.record(h.backends[0], Outcome.THROTTLED, retry_after=1)
    h.step(2)
    assert h.state(0) is State.HEALTHY
    assert h.weights()["b0"] == 1.0  # back-pressure, not failure: the replica is warm


def test_backend_added_by_reload_slow_starts() -> None:
    h = make(2, slow_start=30)
    extra = parse_settings({"backends": [*_backend_config(2, None), {"url": "http://127.0.0.1:9100", "name": "new"}]})
    h.sup.reconfigure(extra.backends, decay=10.0)
    h.step(0)
    assert h.weights()["new"] == pytest.approx(0.1)
    h.step(30)
    assert h.weights()["new"] == pytest.approx(1.0)


def test_max_ejection_percent_zero_still_ejects_one() -> None:
    h = make(3, passive={"max_ejection_percent": 0})
    h.fail(0, 5)
    h.fail(1, 5)
    assert [h.state(i) for i in range(3)] == [State.EJECTED, State.HEALTHY, State.HEALTHY]


def test_reload_keeps_operator_weight_unless_config_weight_changes() -> None:
    h = make(2)
    h.sup.set_weight("b0", 5)
    same = parse_settings({"backends": _backend_config(2, None)})
    assert h.sup.reconfigure(same.backends, decay=10.0)["reweighted"] == []
    assert h.weights()["b0"] == 5.0
    changed = parse_settings({"backends": _backend_config(2, {0: 3})})
    assert h.sup.reconfigure(changed.backends, decay=10.0)["reweighted"] == ["b0"]
    assert h.weights()["b0"] == 3.0


def test_set_weight_rejects_non_positive() -> None:
    h = make(2)
    with pytest.raises(ValueError):
        h.sup.set_weight("b0", 0)


def test_disabled_backend_outcomes_do_not_feed_the_detector() -> None:
    h = make(3)
    h.sup.disable("b0")
    h.fail(0, 10)
    h.sup.enable("b0")
    assert h.state(0) is State.HEALTHY and h.sup.get("b0").detector.consecutive == 0
