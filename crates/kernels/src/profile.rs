//! Where a step's time goes, op by op: with `CARDINAL_PROFILE=1` in the environment (or
//! `cardinal bench train --profile`), every op of this crate adds its wall time to a table
//! (by op, and for convolutions by shape, with their multiply-adds), one table per step,
//! which `cardinal bench train` prints after each case with the sums by kind of op. Each
//! figure is the median over the steps, as the step time is: a step that pays a one-off
//! cost (fresh memory that the first step to reach a new peak faults in, say) then moves no
//! op's figure, where a sum over the steps would lay the whole cost on whichever op met
//! it. Off (the default), the ops only test one flag.

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

/// The ops of one step, by line.
type Table = BTreeMap<String, Entry>;

/// The step in progress.
static TABLE: Mutex<Table> = Mutex::new(BTreeMap::new());
/// The steps ended so far (see [`end_step`]).
static STEPS: Mutex<Vec<Table>> = Mutex::new(Vec::new());
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

/// Empties the tables (the untimed steps' calls, say).
pub fn reset() {
    TABLE.lock().expect("profile table").clear();
    STEPS.lock().expect("profile steps").clear();
}

/// Ends a step: the calls from now on are the next step's. Off, it does nothing.
pub fn end_step() {
    if !enabled() {
        return;
    }
    let table = std::mem::take(&mut *TABLE.lock().expect("profile table"));
    STEPS.lock().expect("profile steps").push(table);
}

/// The report of the steps so far (with the calls since the last [`end_step`] as one more
/// step, if any), and resets the tables; empty when nothing was recorded.
pub fn take_report() -> String {
    let current = std::mem::take(&mut *TABLE.lock().expect("profile table"));
    let mut steps = std::mem::take(&mut *STEPS.lock().expect("profile steps"));
    if !current.is_empty() {
        steps.push(current);
    }
    format_report(&steps)
}

/// A count per step: whole where it is, else to one decimal.
fn count(c: f64) -> String {
    if c.fract() == 0.0 {
        format!("{c:.0}")
    } else {
        format!("{c:.1}")
    }
}

/// The median of `values` (the upper middle of an even count); zero for none.
fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// Billions of multiply-adds per second, where the entry is a product.
fn gmacs(macs: u64, time: Duration) -> String {
    if macs == 0 || time.is_zero() {
        String::new()
    } else {
        format!("{:.1}", macs as f64 / time.as_secs_f64() / 1e9)
    }
}

/// One line per op (its median time per step, calls per step, share of the median step
/// and, for products, GMAC/s), then the sums by kind per step, with the products'
/// multiply-adds: the lines to compare between two models. Every time is the median over
/// `steps` (a step without an op counts as zero for it), and the rates are the median
/// step's multiply-adds over the median time.
fn format_report(steps: &[Table]) -> String {
    let n = steps.len();
    if steps.iter().all(|t| t.is_empty()) {
        return String::new();
    }
    // Each line's kind, its calls and multiply-adds over all the steps, and its time in
    // each step.
    let mut lines: BTreeMap<&str, (&str, usize, u64, Vec<Duration>)> = BTreeMap::new();
    for (k, table) in steps.iter().enumerate() {
        for (name, e) in table {
            let line = lines
                .entry(name)
                .or_insert_with(|| (&e.kind, 0, 0, vec![Duration::ZERO; n]));
            line.1 += e.calls;
            line.2 += e.macs;
            line.3[k] += e.time;
        }
    }
    let per_step = |value: f64| value / n as f64;
    let kinds: BTreeMap<&str, (u64, Vec<Duration>)> =
        lines
            .values()
            .fold(BTreeMap::new(), |mut kinds, (kind, _, macs, times)| {
                let sum = kinds
                    .entry(*kind)
                    .or_insert_with(|| (0, vec![Duration::ZERO; n]));
                sum.0 += macs;
                for (total, t) in sum.1.iter_mut().zip(times) {
                    *total += *t;
                }
                kinds
            });
    let total = median(
        (0..n)
            .map(|k| steps[k].values().map(|e| e.time).sum())
            .collect(),
    );
    let share = |t: Duration| 100.0 * t.as_secs_f64() / total.as_secs_f64().max(1e-12);
    let gmacs = |macs: u64, time: Duration| gmacs(per_step(macs as f64) as u64, time);
    let over = format!("median of {n} step{}", if n == 1 { "" } else { "s" });
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:48} {:>9} {:>6} {:>6} {:>7}",
        format!("op, {over}"),
        "ms/step",
        "calls",
        "share",
        "GMAC/s"
    );
    for (name, (_, calls, macs, times)) in &lines {
        let time = median(times.clone());
        let _ = writeln!(
            out,
            "{name:48} {:9.2} {:>6} {:5.1}% {:>7}",
            time.as_secs_f64() * 1e3,
            count(per_step(*calls as f64)),
            share(time),
            gmacs(*macs, time),
        );
    }
    let _ = writeln!(
        out,
        "{:48} {:>9} {:>6} {:>7} {:>10}",
        format!("by kind, {over}"),
        "ms/step",
        "share",
        "GMAC/s",
        "MMAC/step"
    );
    for (kind, (macs, times)) in &kinds {
        let time = median(times.clone());
        let mmacs = if *macs == 0 {
            String::new()
        } else {
            format!("{:.1}", per_step(*macs as f64) / 1e6)
        };
        let _ = writeln!(
            out,
            "{kind:48} {:9.2} {:5.1}% {:>7} {mmacs:>10}",
            time.as_secs_f64() * 1e3,
            share(time),
            gmacs(*macs, time),
        );
    }
    let _ = writeln!(out, "{:48} {:9.2}", "all ops", total.as_secs_f64() * 1e3);
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
            end_step();
            assert!(super::take_report().is_empty());
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
    fn the_report_gives_each_op_and_kind_its_median_step() {
        // Three steps; the second pays a one-off cost in "norm" and in an op of its own.
        let step = |a: u64, b: u64, norm: u64, once: bool| {
            let mut table: Table = [
                (
                    "conv forward a k1".to_string(),
                    entry(a, 1, 600_000_000, "conv forward 1x1"),
                ),
                (
                    "conv forward b k1".to_string(),
                    entry(b, 1, 200_000_000, "conv forward 1x1"),
                ),
                ("norm".to_string(), entry(norm, 2, 0, "norm")),
            ]
            .into();
            if once {
                table.insert("once".into(), entry(5, 1, 0, "once"));
            }
            table
        };
        let steps = [
            step(30, 10, 60, false),
            step(29, 11, 600, true),
            step(31, 9, 60, false),
        ];
        let report = format_report(&steps);
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
        // Each op: median ms per step, calls per step, share of the median step (totals
        // 100, 645 and 100 ms), GMAC/s (6e8 MACs a step in 30 ms).
        assert_eq!(
            line(ops, "conv forward a k1")[4..],
            ["30.00", "1", "30.0%", "20.0"]
        );
        assert_eq!(line(ops, "norm")[1..], ["60.00", "2", "60.0%"]);
        // An op of one step in three: its median step has none of it.
        assert_eq!(line(ops, "once")[1..], ["0.00", "0.3", "0.0%"]);
        // Kinds: the median of each step's sum (40 ms in each), share, the kind's rate
        // (8e8 a step / 40 ms) and its multiply-adds per step.
        assert_eq!(
            line(kinds, "conv forward 1x1")[3..],
            ["40.00", "40.0%", "20.0", "800.0"]
        );
        // Not a product: no rate.
        assert_eq!(line(kinds, "norm")[1..], ["60.00", "60.0%"]);
        assert_eq!(line(kinds, "all ops")[2..], ["100.00"]);
        assert!(format_report(&[]).is_empty());
        assert!(format_report(&[Table::new()]).is_empty());
    }
}
