//! The circuit breaker of one upstream, as a pure state machine over explicit instants, so that
//! its rules are unit-tested without sockets or clocks.
//!
//! Closed: requests go through; each failure counts, a success resets the count. After
//! `threshold` consecutive failures it opens: requests fail at once for `cool_down`. Then one
//! request (the probe) is let through while the others still fail fast: its success closes the
//! breaker, its failure opens it for another `cool_down`. A probe that ends neither way (its
//! client left) lets the next request probe.

use std::time::{Duration, Instant};

/// What the breaker says about a new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it.
    Pass,
    /// Send it as the probe after a cool-down.
    Probe,
    /// Fail it at once; a retry may succeed after this long.
    Refuse(Duration),
}

/// The state `/health` and `/metrics` show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not asked anything yet.
    Unknown,
    /// The last request to it succeeded.
    Up,
    /// The last request failed; the breaker is still closed.
    Down,
    /// Failing fast until the cool-down ends.
    CircuitOpen,
    /// Cool-down over: the next request probes it.
    HalfOpen,
}

impl State {
    /// The name used in `/health`, `/v1/models` and `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Up => "up",
            State::Down => "down",
            State::CircuitOpen => "circuit_open",
            State::HalfOpen => "half_open",
        }
    }
}

/// One upstream's breaker.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cool_down: Duration,
    /// Failures since the last success.
    failures: u32,
    /// While open: until when.
    open_until: Option<Instant>,
    /// A probe is in flight.
    probing: bool,
    /// The last outcome: `None` before the first.
    last_ok: Option<bool>,
    /// Times the breaker opened since start.
    opened: u64,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures for `cool_down`.
    pub fn new(threshold: u32, cool_down: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cool_down,
            failures: 0,
            open_until: None,
            probing: false,
            last_ok: None,
            opened: 0,
        }
    }

    /// Whether a request arriving at `now` may go to the upstream.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.open_until {
            None => Admission::Pass,
            Some(until) if now < until => Admission::Refuse(until - now),
            Some(_) if self.probing => Admission::Refuse(Duration::from_secs(1)),
            Some(_) => {
                self.probing = true;
                Admission::Probe
            }
        }
    }

    /// A request succeeded: the breaker closes.
    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
        self.probing = false;
        self.last_ok = Some(true);
    }

    /// A request failed at `now`; returns how long the breaker is open from now (zero while it
    /// stays closed).
    pub fn failure(&mut self, now: Instant, probe: bool) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.last_ok = Some(false);
        let reopen = probe && self.probing;
        if probe {
            self.probing = false;
        }
        if reopen || (self.open_until.is_none() && self.failures >= self.threshold) {
            self.open_until = Some(now + self.cool_down);
            self.opened += 1;
        }
        match self.open_until {
            Some(until) if until > now => until - now,
            _ => Duration::ZERO,
        }
    }

    /// A probe ended neither way (its client left): the next request may probe.
    pub fn probe_abandoned(&mut self) {
        self.probing = false;
    }

    /// The background check found the upstream unreachable: shown as down, but not counted
    /// (only requests open the breaker).
    pub fn check_failed(&mut self) {
        if self.last_ok != Some(false) {
            self.last_ok = Some(false);
        }
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> State {
        match (self.open_until, self.last_ok) {
            (Some(until), _) if now < until => State::CircuitOpen,
            (Some(_), _) => State::HalfOpen,
            (None, None) => State::Unknown,
            (None, Some(true)) => State::Up,
            (None, Some(false)) => State::Down,
        }
    }

    /// Consecutive failures now.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Times the breaker opened since start.
    pub fn times_opened(&self) -> u64 {
        self.opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(10);

    #[test]
    fn opens_after_the_threshold_and_fails_fast_until_the_cool_down_ends() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, COOL);
        assert_eq!(b.state(t0), State::Unknown);
        for _ in 0..2 {
            assert_eq!(b.admit(t0), Admission::Pass);
            assert_eq!(b.failure(t0, false), Duration::ZERO);
            assert_eq!(b.state(t0), State::Down);
        }
        assert_eq!(b.admit(t0), Admission::Pass);
        assert_eq!(b.failure(t0, false), COOL);
        assert_eq!(b.state(t0), State::CircuitOpen);
        let later = t0 + Duration::from_secs(4);
        assert_eq!(b.admit(later), Admission::Refuse(Duration::from_secs(6)));
        assert_eq!(b.times_opened(), 1);
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, COOL);
        b.failure(t0, false);
        b.success();
        assert_eq!(b.state(t0), State::Up);
        assert_eq!(b.failure(t0, false), Duration::ZERO);
        assert_eq!(b.admit(t0), Admission::Pass);
    }

    #[test]
    fn one_probe_after_the_cool_down_closes_or_reopens_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, COOL);
        b.failure(t0, false);
        let t1 = t0 + COOL;
        assert_eq!(b.state(t1), State::HalfOpen);
        assert_eq!(b.admit(t1), Admission::Probe);
        // Only one probe at a time; the others still fail fast.
        assert!(matches!(b.admit(t1), Admission::Refuse(_)));
        // The probe fails: open again for a whole cool-down.
        assert_eq!(b.failure(t1, true), COOL);
        assert!(matches!(b.admit(t1), Admission::Refuse(d) if d == COOL));
        let t2 = t1 + COOL;
        assert_eq!(b.admit(t2), Admission::Probe);
        b.success();
        assert_eq!(b.state(t2), State::Up);
        assert_eq!(b.admit(t2), Admission::Pass);
        assert_eq!(b.times_opened(), 2);
    }

    #[test]
    fn a_failed_background_check_shows_down_without_opening_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, COOL);
        b.check_failed();
        assert_eq!(b.state(t0), State::Down);
        assert_eq!(b.admit(t0), Admission::Pass);
        // A successful check closes an open breaker before its cool-down ends.
        b.failure(t0, false);
        assert_eq!(b.state(t0), State::CircuitOpen);
        b.success();
        assert_eq!(b.admit(t0), Admission::Pass);
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_request_probe() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, COOL);
        b.failure(t0, false);
        let t1 = t0 + COOL;
        assert_eq!(b.admit(t1), Admission::Probe);
        b.probe_abandoned();
        assert_eq!(b.admit(t1), Admission::Probe);
    }

    #[test]
    fn failures_of_requests_admitted_before_it_opened_do_not_extend_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, COOL);
        assert_eq!(b.failure(t0, false), COOL);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(b.failure(t1, false), Duration::from_secs(5));
        assert_eq!(b.times_opened(), 1);
    }
}
