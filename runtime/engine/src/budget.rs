//! The time a call may take, and the meter that holds it to that.
//!
//! Two bounds apply to every call. The wall-clock timeout covers the whole
//! call, whatever the guest does: the call is a future raced against a
//! timer, so a guest blocked in WASI (`thread::sleep`, `poll`) or in an
//! asynchronous host call is dropped at its deadline, and the epoch check
//! below stops a guest that never blocks. The CPU limit counts only time
//! the call's thread spends running (its CPU clock), so a plugin waiting
//! on a slow HTTP answer or sleeping is not charged for the wait.

use std::time::{Duration, Instant};

use crate::settings::Limits;

/// Why the epoch check stopped a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    /// The call ran out of CPU time.
    Cpu,
    /// The call ran past its wall-clock timeout.
    Wall,
}

/// The bounds of one call, from the plugin's limits and the step's timeout.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub wall: Duration,
    pub cpu: Duration,
}

impl Budget {
    pub fn of(limits: Limits, step_timeout: Option<Duration>) -> Budget {
        let mut wall = Duration::from_millis(limits.timeout_ms);
        if let Some(t) = step_timeout {
            wall = wall.min(t);
        }
        Budget {
            wall,
            cpu: Duration::from_millis(limits.cpu_ms),
        }
    }
}

/// What a running call has used, read each time its epoch deadline comes.
/// Lives in the call's host state; the call runs on one thread from start
/// to end (the engine drives it there), so that thread's CPU clock is the
/// call's.
#[derive(Debug)]
pub struct Meter {
    budget: Budget,
    started: Instant,
    cpu_at_start: Duration,
    tick: Duration,
}

impl Meter {
    /// Starts metering on the calling thread.
    pub fn start(budget: Budget, started: Instant, tick: Duration) -> Meter {
        Meter {
            budget,
            started,
            cpu_at_start: thread_cpu_time(),
            tick,
        }
    }

    /// The call's wall-clock timeout.
    pub fn wall(&self) -> Duration {
        self.budget.wall
    }

    /// Epoch ticks until the first check.
    pub fn first_ticks(&self) -> u64 {
        self.ticks(self.budget.cpu.min(self.budget.wall))
    }

    /// At an epoch deadline: why the call must stop, or the ticks until the
    /// next check (the sooner of the CPU time and wall time left, since the
    /// CPU clock never runs faster than the wall clock).
    pub fn check(&self) -> Result<u64, Interruption> {
        let wall_left = self
            .budget
            .wall
            .checked_sub(self.started.elapsed())
            .filter(|left| !left.is_zero())
            .ok_or(Interruption::Wall)?;
        let used = thread_cpu_time().saturating_sub(self.cpu_at_start);
        let cpu_left = self
            .budget
            .cpu
            .checked_sub(used)
            .filter(|left| !left.is_zero())
            .ok_or(Interruption::Cpu)?;
        Ok(self.ticks(cpu_left.min(wall_left)))
    }

    fn ticks(&self, time: Duration) -> u64 {
        (time.as_nanos() / self.tick.as_nanos().max(1)) as u64 + 1
    }
}

/// CPU time the calling thread has used so far.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write to; CLOCK_THREAD_CPUTIME_ID
    // is supported by every Linux and macOS kernel Steward runs on.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(wall_ms: u64, cpu_ms: u64) -> Budget {
        Budget {
            wall: Duration::from_millis(wall_ms),
            cpu: Duration::from_millis(cpu_ms),
        }
    }

    #[test]
    fn waiting_costs_no_cpu_time() {
        let meter = Meter::start(budget(10_000, 20), Instant::now(), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(60));
        assert!(meter.check().is_ok(), "a sleeping thread used its CPU time");
    }

    #[test]
    fn spinning_uses_cpu_time_and_stops_at_the_limit() {
        let meter = Meter::start(budget(60_000, 20), Instant::now(), Duration::from_millis(1));
        let spin = Instant::now();
        while meter.check().is_ok() {
            assert!(spin.elapsed() < Duration::from_secs(30), "never stopped");
            std::hint::black_box((0..1000u64).sum::<u64>());
        }
        assert_eq!(meter.check(), Err(Interruption::Cpu));
    }

    #[test]
    fn the_wall_clock_stops_a_call_that_has_cpu_time_left() {
        let meter = Meter::start(budget(30, 10_000), Instant::now(), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(meter.check(), Err(Interruption::Wall));
    }

    #[test]
    fn the_step_timeout_tightens_the_plugin_timeout() {
        let limits = Limits {
            timeout_ms: 30_000,
            ..Limits::default()
        };
        let b = Budget::of(limits, Some(Duration::from_secs(2)));
        assert_eq!(b.wall, Duration::from_secs(2));
        assert_eq!(Budget::of(limits, None).wall, Duration::from_secs(30));
    }
}
