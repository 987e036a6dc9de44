//! Time for the controller: the host's monotonic clock, shared by every process and
//! container of a host, or a virtual clock in tests.

/// A source of time and a way to wait.
pub trait Clock {
    /// Nanoseconds on a clock that every process of the host shares.
    fn now_ns(&self) -> u64;
    /// Waits about `ns` nanoseconds.
    fn sleep_ns(&self, ns: u64);
    /// Whether this is the host's real clock (waits on other processes may then block
    /// in the kernel; on a virtual clock they must advance the clock instead).
    fn is_real(&self) -> bool {
        false
    }
}

/// `CLOCK_MONOTONIC` and `nanosleep`.
#[derive(Debug, Default, Clone, Copy)]
pub struct MonotonicClock;

/// `CLOCK_MONOTONIC` in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    // CLOCK_MONOTONIC never reads negative: the bits read the same unsigned, and the
    // conversion costs nothing on this hot path.
    ts.tv_sec
        .cast_unsigned()
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec.cast_unsigned())
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        monotonic_ns()
    }

    fn is_real(&self) -> bool {
        true
    }

    fn sleep_ns(&self, ns: u64) {
        let ts = libc::timespec {
            tv_sec: (ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: nanosleep reads a valid timespec; the remainder pointer may be null.
        unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
    }
}
