//! How the store's background threads — the WAL checkpointer and the search indexer — are
//! scheduled, so that they never hold a core a request thread is waiting for.
//!
//! While a thread keeps up with its work it runs in Linux's idle scheduling class
//! (`SCHED_IDLE`): a request thread that wakes on its core preempts it at once. At nice 19
//! in the normal class that was not so: the scheduler lets a running thread finish its
//! time slice whatever its nice value, and a request thread woken on that core waited for
//! a WAL checkpoint call (3.7–5 ms here). Measured at 1,000 req/s (bench/README.md, session
//! 10): the proxy's added p99, median of 4 rounds, 1.47 ms at nice 19 and 1.20 ms idle.
//!
//! But a busy CPU all but stops an idle-class thread, and then the WAL grows and the text
//! index falls behind. So a thread starts at nice 19 in the normal class, as before, and
//! moves to the idle class only after [`QUIET_ROUNDS`] rounds in a row that were on time
//! (under [`LATE`]) and left nothing behind; one round that was late or left work behind
//! brings it back to nice 19, where it gets a small share of a busy CPU, and the count
//! starts again. Leaving the idle class for the normal one needs a permission that
//! lowering a priority does not (`CAP_SYS_NICE`, or an `RLIMIT_NICE` of at least 2, e.g.
//! systemd's `LimitNICE=18`); without it the threads stay at nice 19 throughout rather
//! than risk being stuck idle. Elsewhere than on Linux, nothing changes.

use std::time::Duration;

/// Rounds in a row that must go well before a thread moves to the idle class.
const QUIET_ROUNDS: u32 = 4;
/// A round whose work took longer than this (wall time) was late: the thread did not get
/// the CPU it needed. A round takes milliseconds on a CPU with time to spare.
const LATE: Duration = Duration::from_millis(250);

/// The scheduling of the calling background thread; see the module docs.
pub(super) struct Background {
    /// The thread may go back from the idle class to the normal one.
    can_return: bool,
    /// The thread is in the idle class now.
    idle: bool,
    /// Rounds in a row that went well.
    quiet: u32,
}

impl Background {
    /// Lowers the calling thread's priority to nice 19 and finds out whether it may use
    /// the idle class later.
    pub(super) fn start() -> Self {
        let nice = os::set_normal_nice_19();
        // From nice 19, a step up to 18 needs the same permission as leaving the idle
        // class (and a little more): try it, and step back down.
        let can_return = nice && os::set_nice(18) && os::set_nice(19);
        if !nice {
            tracing::debug!(
                "could not lower a background thread's priority; it runs at normal priority"
            );
        }
        Self {
            can_return,
            idle: false,
            quiet: 0,
        }
    }

    /// Reports a round of work: whether it left work behind, and how long it took.
    pub(super) fn round(&mut self, behind: bool, took: Duration) {
        if !self.can_return {
            return;
        }
        if behind || took > LATE {
            self.quiet = 0;
            if self.idle && os::set_normal_nice_19() {
                self.idle = false;
            }
            return;
        }
        self.quiet = self.quiet.saturating_add(1);
        if !self.idle && self.quiet >= QUIET_ROUNDS && os::set_idle() {
            self.idle = true;
        }
    }

    /// The thread is in the idle class now.
    #[cfg(test)]
    pub(super) fn is_idle(&self) -> bool {
        self.idle
    }
}

/// Whether this process's background threads may use the idle class (see
/// [`Background::start`]); found out on a thread of its own, which it leaves at nice 19.
#[cfg(test)]
pub(super) fn idle_class_allowed() -> bool {
    std::thread::spawn(|| Background::start().can_return)
        .join()
        .unwrap_or(false)
}

#[cfg(target_os = "linux")]
mod os {
    fn set_policy(policy: libc::c_int) -> bool {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: gettid has no preconditions; sched_setscheduler only reads `param`, which
        // outlives the call, and changes the calling thread's policy.
        unsafe { libc::sched_setscheduler(libc::gettid(), policy, &param) == 0 }
    }

    pub(super) fn set_nice(nice: libc::c_int) -> bool {
        // SAFETY: gettid has no preconditions; setpriority only reads its arguments and
        // changes the calling thread's nice value (Linux keeps one per thread).
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) == 0 }
    }

    pub(super) fn set_idle() -> bool {
        set_policy(libc::SCHED_IDLE)
    }

    pub(super) fn set_normal_nice_19() -> bool {
        set_policy(libc::SCHED_OTHER) && set_nice(19)
    }

    /// The calling thread's policy and nice value.
    #[cfg(test)]
    pub(super) fn current() -> (libc::c_int, libc::c_int) {
        // SAFETY: as above; both only read the calling thread's settings.
        unsafe {
            let tid = libc::gettid();
            (
                libc::sched_getscheduler(tid),
                libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t),
            )
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod os {
    pub(super) fn set_nice(_: i32) -> bool {
        false
    }
    pub(super) fn set_idle() -> bool {
        false
    }
    pub(super) fn set_normal_nice_19() -> bool {
        false
    }
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use super::{Background, LATE, QUIET_ROUNDS, os};
    use std::time::Duration;

    /// Each step in a fresh thread: scheduling settings are per thread, and the test
    /// harness's threads must not be left changed.
    fn on_a_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().unwrap()
    }

    #[test]
    fn a_background_thread_goes_idle_after_quiet_rounds_and_back_to_nice_19_when_late_or_behind() {
        let seen = on_a_thread(|| {
            let quick = Duration::from_millis(5);
            let mut bg = Background::start();
            let mut states = vec![(os::current(), bg.is_idle())];
            // Each step: how many rounds, whether they left work behind, how long each took.
            for (rounds, behind, took) in [
                (QUIET_ROUNDS - 1, false, quick),
                (1, false, quick),
                (1, false, LATE + quick),
                (QUIET_ROUNDS, false, quick),
                (1, true, quick),
            ] {
                for _ in 0..rounds {
                    bg.round(behind, took);
                }
                states.push((os::current(), bg.is_idle()));
            }
            (bg.can_return, states)
        });
        let (can_return, states) = seen;
        let normal = ((libc::SCHED_OTHER, 19), false);
        let idle = ((libc::SCHED_IDLE, 19), true);
        if can_return {
            assert_eq!(
                states,
                vec![normal, normal, idle, normal, idle, normal],
                "start at nice 19; idle after {QUIET_ROUNDS} quiet rounds; nice 19 after a late round; idle again; nice 19 after a round that left work behind"
            );
        } else {
            // Whether this process may raise a priority again (root, CAP_SYS_NICE, or
            // RLIMIT_NICE) decides what the thread must end up with.
            eprintln!("this process may not raise a priority: checking the nice-19 fallback");
            assert_eq!(
                states,
                vec![normal; 6],
                "stays at nice 19 in the normal class"
            );
        }
    }

    #[test]
    fn a_thread_that_could_not_come_back_is_never_made_idle() {
        let seen = on_a_thread(|| {
            let mut bg = Background {
                can_return: false,
                idle: false,
                quiet: 0,
            };
            os::set_normal_nice_19();
            for _ in 0..2 * QUIET_ROUNDS {
                bg.round(false, Duration::ZERO);
            }
            (os::current(), bg.is_idle())
        });
        assert_eq!(seen, ((libc::SCHED_OTHER, 19), false));
    }
}
