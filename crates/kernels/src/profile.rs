//! Where a step's time goes, op by op: with `CARDINAL_PROFILE=1` in the environment (or
//! `cardinal bench train --profile`), every op of this crate adds its wall time to a table
//! (by op, and for convolutions by shape, with their multiply-adds), which `cardinal bench
//! train` prints after each case with the sums by kind of op. Off (the default), the ops
//! only test one flag.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One line of the table: the calls' summed time and multiply-adds, and the kind of op the
/// summary adds it to.
#[derive(Debug, Clone, Default, PartialEq)]
struct Entry {
    time: Duration,
    calls: usize,
    macs: u64,
    kind: String,
}

static TABLE: Mutex<BTreeMap<String, Entry>> = Mutex::new(BTreeMap::new());
static ASKED: AtomicBool = AtomicBool::new(false);

/// What one timed call is: its line in the table, the kind of op it is summed under, and
/// the multiply-adds it does (0 for ops that are not products).
pub(crate) struct Label {
    pub name: String,
    pub kind: String,
    pub macs: u64,
}

/// Whether the table is kept: `CARDINAL_PROFILE` (read once) or [`enable`].
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    ASKED.load(Ordering::Relaxed)
        || *ON.get_or_init(|| std::env::var_os("CARDINAL_PROFILE").is_some_and(|v| v != "0"))
}

/// Keeps the table from now on, as `CARDINAL_PROFILE=1` does.
pub fn enable() {
    ASKED.store(true, Ordering::Relaxed);
}

fn add(label: Label, elapsed: Duration) {
    let mut table = TABLE.lock().expect("profile table");
    let entry = table.entry(label.name).or_default();
    entry.time += elapsed;
    entry.calls += 1;
    entry.macs += label.macs;
    entry.kind = label.kind;
}

/// Runs `f`, adding its time under `label()` (only built when profiling).
#[inline]
pub(crate) fn time<R>(label: impl FnOnce() -> Label, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let start = Instant::now();
    let result = f();
    add(label(), start.elapsed());
    result
}

/// Adds the time from its creation to its drop under a fixed name (for whole op bodies),
/// which is also its kind.
pub(crate) struct Span(Option<(&'static str, Instant)>);

impl Span {
    #[inline]
    pub(crate) fn new(name: &'static str) -> Span {
        Span(enabled().then(|| (name, Instant::now())))
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((name, start)) = self.0 {
            let label = Label {
                name: name.to_string(),
                kind: name.to_string(),
                macs: 0,
            };
            add(label, start.elapsed());
        }
    }
}

/// Empties the table (the untimed steps' calls, say).
pub fn reset() {
    TABLE.lock().expect("profile table").clear();
}

/// The table so far, over `steps` steps, and resets it; empty when nothing was recorded.
pub fn take_report(steps: usize) -> String {
    let table = std::mem::take(&mut *TABLE.lock().expect("profile table"));
    format_report(&table, steps)
}

/// Billions of multiply-adds per second, where the entry is a product.
fn gmacs(macs: u64, time: Duration) -> String {
    if macs == 0 || time.is_zero() {
        String::new()
    } else {
        format!("{:.1}", macs as f64 / time.as_secs_f64() / 1e9)
    }
}

/// One line per entry (its total time, calls, share of the total and, for products,
/// GMAC/s), then the sums by kind per step, with the products' multiply-adds: the lines to
/// compare between two models.
fn format_report(table: &BTreeMap<String, Entry>, steps: usize) -> String {
    if table.is_empty() {
        return String::new();
    }
    let total: Duration = table.values().map(|e| e.time).sum();
    let share = |t: Duration| 100.0 * t.as_secs_f64() / total.as_secs_f64().max(1e-12);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:48} {:>9} {:>6} {:>6} {:>7}",
        "op", "total ms", "calls", "share", "GMAC/s"
    );
    for (name, e) in table {
        let _ = writeln!(
            out,
            "{name:48} {:9.1} {:6} {:5.1}% {:>7}",
            e.time.as_secs_f64() * 1e3,
            e.calls,
            share(e.time),
            gmacs(e.macs, e.time),
        );
    }
    let mut kinds: BTreeMap<&str, (Duration, u64)> = BTreeMap::new();
    for e in table.values() {
        let sum = kinds.entry(&e.kind).or_default();
        sum.0 += e.time;
        sum.1 += e.macs;
    }
    let _ = writeln!(
        out,
        "{:48} {:>9} {:>6} {:>7} {:>10}",
        format!("by kind, over {steps} steps"),
        "ms/step",
        "share",
        "GMAC/s",
        "MMAC/step"
    );
    let per_step = |value: f64| value / steps.max(1) as f64;
    for (kind, (time, macs)) in &kinds {
        let mmacs = if *macs == 0 {
            String::new()
        } else {
            format!("{:.1}", per_step(*macs as f64) / 1e6)
        };
        let _ = writeln!(
            out,
            "{kind:48} {:9.2} {:5.1}% {:>7} {mmacs:>10}",
            per_step(time.as_secs_f64() * 1e3),
            share(*time),
            gmacs(*macs, *time),
        );
    }
    let _ = writeln!(
        out,
        "{:48} {:9.2}",
        "all ops",
        total.as_secs_f64() * 1e3 / steps.max(1) as f64
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_variable_nothing_is_recorded() {
        // The test harness does not set CARDINAL_PROFILE, and no test here enables it.
        if !super::enabled() {
            let label = || Label {
                name: "x".into(),
                kind: "x".into(),
                macs: 1,
            };
            assert_eq!(super::time(label, || 7), 7);
            assert!(super::take_report(1).is_empty());
        }
    }

    fn entry(ms: u64, calls: usize, macs: u64, kind: &str) -> Entry {
        Entry {
            time: Duration::from_millis(ms),
            calls,
            macs,
            kind: kind.into(),
        }
    }

    #[test]
    fn the_report_sums_each_kind_per_step_with_its_rate() {
        let table: BTreeMap<String, Entry> = [
            (
                "conv forward a k1".to_string(),
                entry(300, 10, 6_000_000_000, "conv forward 1x1"),
            ),
            (
                "conv forward b k1".to_string(),
                entry(100, 10, 2_000_000_000, "conv forward 1x1"),
            ),
            ("norm".to_string(), entry(600, 20, 0, "norm")),
        ]
        .into();
        let report = format_report(&table, 10);
        let (ops, kinds) = report
            .split_once("by kind")
            .unwrap_or_else(|| panic!("no summary in\n{report}"));
        let line = |section: &str, start: &str| {
            section
                .lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no line {start:?} in\n{report}"))
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        // Each op: total ms, calls, share of the whole, GMAC/s (6e9 MACs in 0.3 s).
        assert_eq!(
            line(ops, "conv forward a k1")[4..],
            ["300.0", "10", "30.0%", "20.0"]
        );
        assert_eq!(line(ops, "norm")[1..], ["600.0", "20", "60.0%"]);
        // Kinds: ms per step over the 10 steps, share, the kind's own rate (8e9 / 0.4 s) and
        // its multiply-adds per step.
        assert_eq!(
            line(kinds, "conv forward 1x1")[3..],
            ["40.00", "40.0%", "20.0", "800.0"]
        );
        // Not a product: no rate.
        assert_eq!(line(kinds, "norm")[1..], ["60.00", "60.0%"]);
        assert_eq!(line(kinds, "all ops")[2..], ["100.00"]);
        assert!(format_report(&BTreeMap::new(), 10).is_empty());
    }
}
