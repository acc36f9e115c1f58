//! How the CLI shows values: dates, sizes, durations, and progress bars on stderr.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A Unix time as a date people read, in UTC: `2026-12-02 04:10:33 UTC`.
///
/// UTC rather than the local zone: the daemon runs as a system service whose records, audit
/// log and journal are read on other machines and by scripts, and a listing that means the same
/// wherever it is printed can be compared with them. A time outside the years a calendar can
/// show (the daemon never writes one) is printed as its raw seconds, marked as such.
pub fn date(unix_secs: i64) -> String {
    jiff::Timestamp::from_second(unix_secs)
        .and_then(|t| jiff::fmt::strtime::format("%Y-%m-%d %H:%M:%S UTC", t))
        .unwrap_or_else(|_| format!("{unix_secs} (Unix time)"))
}

/// [`date`] of an unsigned Unix time.
pub fn date_u(unix_secs: u64) -> String {
    i64::try_from(unix_secs)
        .map(date)
        .unwrap_or_else(|_| format!("{unix_secs} (Unix time)"))
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// `12m05s` style.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// A bar on stderr for sending `len` bytes. indicatif's stderr target draws nothing when stderr
/// is not a terminal, so scripts and logs get no control characters.
pub fn upload_bar(what: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("#>."),
    );
    bar.set_message(what.to_string());
    bar
}

/// A bar on stderr for a job's progress, in thousandths; its message carries the details
/// (phase, epoch, loss, …). Hidden when stderr is not a terminal, like [`upload_bar`].
pub fn job_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:20}] {msg}")
            .expect("a valid template")
            .progress_chars("#>."),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_and_readable() {
        assert_eq!(date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(date(1796182170), "2026-12-02 03:29:30 UTC");
        assert_eq!(date_u(1796182170), "2026-12-02 03:29:30 UTC");
        // Out of a calendar's range: the raw number, said to be one.
        assert_eq!(date(i64::MAX), format!("{} (Unix time)", i64::MAX));
        assert_eq!(date_u(u64::MAX), format!("{} (Unix time)", u64::MAX));
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(mib(3 << 20), "3.0 MiB");
        assert_eq!(duration(59.4), "59s");
        assert_eq!(duration(725.0), "12m05s");
        assert_eq!(duration(7260.0), "2h01m");
    }

    #[test]
    fn bars_are_hidden_when_stderr_is_not_a_terminal() {
        use std::io::IsTerminal;
        // Under `cargo test` stderr is usually captured or piped; when it is a terminal this
        // says nothing, so check only the case that matters for scripts.
        if !std::io::stderr().is_terminal() {
            assert!(upload_bar("x", 10).is_hidden());
            assert!(job_bar().is_hidden());
        }
    }
}
