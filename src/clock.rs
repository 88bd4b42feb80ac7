//! The wall clock: the one place the daemon reads it (a lint refuses
//! `jiff::Timestamp::now` and `SystemTime::now` elsewhere). The engine, the
//! router and the store take time as an input; the shell reads it here once
//! per step and passes it on.

/// Wall-clock time, epoch milliseconds.
#[allow(clippy::disallowed_methods)]
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Wall-clock time, epoch seconds.
pub fn now_secs() -> i64 {
    now_ms().div_euclid(1000)
}
