//! When a connection polls its socket for the host's next command instead of
//! sleeping (`FabricConfig::busy_poll`).
//!
//! A host that sends its commands one at a time (queue depth 1) waits for each
//! answer before it sends the next. If the connection's thread sleeps in between, the
//! next command has to wake it, and waking an idle CPU costs tens of microseconds on a
//! virtual machine — more than the command itself. Polling the socket for a short
//! while after answering keeps the thread awake for it.
//!
//! Polling costs CPU, so a connection polls only while it pays: while at most two of
//! its commands were outstanding at a time over its last [`DEPTH_WINDOW`] commands (at
//! higher queue depths a wake-up is shared by many commands, and a polling thread
//! only takes CPU from the host and from other connections), while its recent PDUs
//! came soon
//! after the connection went idle (within four budgets, on average, so that a host
//! answered by a sleeping thread qualifies too), and not right after polls that caught
//! nothing. Each miss doubles the number of idle periods that
//! are slept through before the next try (up to [`MAX_BACKOFF`]); a catch resets it. A
//! connection whose host goes quiet therefore stops polling after one miss, and a host
//! that sends at a pace the budget cannot catch costs one poll in `MAX_BACKOFF`.

use std::time::{Duration, Instant};

/// Most idle periods slept through after a run of misses.
pub const MAX_BACKOFF: u32 = 256;

/// Gaps longer than this count as this (keeps the average's arithmetic small).
const MAX_GAP: Duration = Duration::from_secs(1);

/// Most commands outstanding at once for a connection to be polled for.
pub const MAX_DEPTH: u32 = 2;

/// Commands over which the queue depth is watched.
pub const DEPTH_WINDOW: u32 = 64;

/// One connection's polling state.
#[derive(Debug)]
pub struct BusyPoll {
    budget: Duration,
    /// Moving average of the time from the connection going idle to the next command.
    avg_gap: Duration,
    idle_since: Option<Instant>,
    /// Most commands outstanding at once in the current window of commands and in
    /// the one before; commands counted in the current one.
    peak: u32,
    last_peak: u32,
    counted: u32,
    /// Idle periods still to sleep through, and how many the last miss asked for.
    skip: u32,
    backoff: u32,
}

impl BusyPoll {
    /// A zero `budget` never polls. A new connection polls once its first few gaps
    /// are short (the average starts at eight budgets).
    pub fn new(budget: Duration) -> BusyPoll {
        BusyPoll {
            budget,
            avg_gap: (budget * 8).min(MAX_GAP),
            idle_since: None,
            peak: 0,
            last_peak: 0,
            counted: 0,
            skip: 0,
            backoff: 0,
        }
    }

    /// Whether polling is configured at all.
    pub fn enabled(&self) -> bool {
        !self.budget.is_zero()
    }

    /// Whether the connection may poll when it is next idle: polling is configured
    /// and the host keeps few commands outstanding. Cheap; when false the caller
    /// need not even look for idleness.
    pub fn wanted(&self) -> bool {
        self.enabled() && self.peak.max(self.last_peak) <= MAX_DEPTH
    }

    /// A command arrived; `outstanding` commands (it included) are now in the
    /// window.
    pub fn command(&mut self, outstanding: u32) {
        self.peak = self.peak.max(outstanding);
        self.counted += 1;
        if self.counted >= DEPTH_WINDOW {
            self.last_peak = std::mem::take(&mut self.peak);
            self.counted = 0;
        }
    }

    /// How long one poll may last.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// No command of the connection is running at `now`. Returns whether to poll for
    /// the next one (for at most [`BusyPoll::budget`]).
    pub fn idle(&mut self, now: Instant) -> bool {
        if self.idle_since.is_none() {
            self.idle_since = Some(now);
        }
        if !self.wanted() || self.avg_gap > self.budget * 4 {
            return false;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    /// A command is still running: the connection is not idle.
    pub fn busy(&mut self) {
        self.idle_since = None;
    }

    /// The poll that [`BusyPoll::idle`] asked for caught a command (`true`) or not.
    pub fn polled(&mut self, caught: bool) {
        if caught {
            self.backoff = 0;
        } else {
            self.backoff = (self.backoff * 2).clamp(1, MAX_BACKOFF);
            self.skip = self.backoff;
        }
    }

    /// A PDU arrived at `now`; if the connection was idle, this ends the gap.
    pub fn arrived(&mut self, now: Instant) {
        if let Some(t) = self.idle_since.take() {
            let gap = now.saturating_duration_since(t).min(MAX_GAP);
            self.avg_gap = (self.avg_gap * 3 + gap) / 4;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    /// One idle period that ends `gap` later with a command arriving (queue depth
    /// 1); returns whether it was polled.
    fn period(p: &mut BusyPoll, t: &mut Instant, gap: Duration, caught: bool) -> bool {
        let poll = p.idle(*t);
        if poll {
            p.polled(caught);
        }
        *t += gap;
        p.arrived(*t);
        p.command(1);
        poll
    }

    #[test]
    fn zero_budget_never_polls() {
        let mut p = BusyPoll::new(Duration::ZERO);
        let mut t = Instant::now();
        assert!(!p.enabled());
        for _ in 0..100 {
            assert!(!period(&mut p, &mut t, US, true));
        }
    }

    #[test]
    fn a_quick_host_is_polled_for_and_a_quiet_one_is_not() {
        let mut p = BusyPoll::new(50 * US);
        let mut t = Instant::now();
        // A new connection sleeps until its gaps are known to be short (here: the
        // 60-microsecond gaps of a host answered by a sleeping thread).
        assert!(!period(&mut p, &mut t, 60 * US, false));
        let polled = (0..20)
            .filter(|_| period(&mut p, &mut t, 60 * US, false))
            .count();
        assert!(polled > 0);
        // Caught commands keep it polling, every time.
        for _ in 0..20 {
            period(&mut p, &mut t, 60 * US, true);
        }
        for _ in 0..100 {
            assert!(period(&mut p, &mut t, 20 * US, true));
        }
        // The host goes quiet: one miss, then the average rises above four budgets
        // and the connection sleeps.
        assert!(period(&mut p, &mut t, 10 * 1000 * US, false));
        for _ in 0..100 {
            assert!(!period(&mut p, &mut t, 10 * 1000 * US, false));
        }
        // A long silence does not overflow anything.
        assert!(!period(&mut p, &mut t, Duration::from_secs(3600), false));
    }

    #[test]
    fn misses_back_off_exponentially_up_to_the_limit() {
        let mut p = BusyPoll::new(50 * US);
        let mut t = Instant::now();
        for _ in 0..20 {
            period(&mut p, &mut t, 20 * US, true);
        }
        // A host whose next command comes after 120 microseconds: short enough to
        // qualify, too late to be caught.
        let polls: Vec<bool> = (0..4000)
            .map(|_| period(&mut p, &mut t, 120 * US, false))
            .collect();
        let polled = polls.iter().filter(|x| **x).count();
        // Sleeping 1, 2, 4, ... 256 periods after each miss, then 256 each time:
        // about 22 polls in 4000 periods.
        assert!((15..=30).contains(&polled), "{polled} polls");
        let at: Vec<usize> = (0..polls.len()).filter(|i| polls[*i]).collect();
        let apart: Vec<usize> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(apart.windows(2).all(|w| w[0] <= w[1]), "{apart:?}");
        assert_eq!(apart[0], 2);
        assert_eq!(*apart.last().unwrap(), MAX_BACKOFF as usize + 1);
        // One catch resets the back-off.
        p.skip = 0;
        assert!(period(&mut p, &mut t, 20 * US, true));
        assert!(period(&mut p, &mut t, 20 * US, true));
    }

    #[test]
    fn a_host_that_keeps_many_commands_outstanding_is_not_polled_for() {
        let mut p = BusyPoll::new(50 * US);
        let mut t = Instant::now();
        for _ in 0..20 {
            period(&mut p, &mut t, 20 * US, true);
        }
        assert!(p.wanted());
        // Queue depth 32 for a while: no polling, whatever the gaps.
        for n in 1..=32 {
            p.command(n);
        }
        assert!(!p.wanted());
        for _ in 0..200 {
            assert!(!period(&mut p, &mut t, 20 * US, true));
            p.command(32);
        }
        // Back to queue depth 1: polling resumes within two windows of commands.
        let polled: Vec<bool> = (0..2 * DEPTH_WINDOW)
            .map(|_| period(&mut p, &mut t, 20 * US, true))
            .collect();
        assert!(!polled[0]);
        assert!(*polled.last().unwrap());
        // Queue depth 2 (or a command and its data) still is polled for.
        p.command(2);
        assert!(period(&mut p, &mut t, 20 * US, true));
    }

    #[test]
    fn time_with_a_command_running_is_not_a_gap() {
        let mut p = BusyPoll::new(50 * US);
        let t = Instant::now();
        for i in 0..20 {
            p.idle(t + i * 10 * US);
            p.arrived(t + i * 10 * US + 10 * US);
        }
        assert!(p.avg_gap < 50 * US);
        // Idle, then busy (the window filled again before anything arrived), then a
        // frame 10 ms later: not a gap of the host's.
        p.idle(t);
        p.busy();
        p.arrived(t + 10 * 1000 * US);
        assert!(p.avg_gap < 50 * US);
    }
}
