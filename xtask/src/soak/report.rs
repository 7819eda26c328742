//! A store's soak as text: one table row per sample, a sparkline per series (jobs size, claim
//! p99, RSS), a verdict per series (flat or growing: the last third against the middle third)
//! and the account of jobs and runs.

use serde_json::Value;

/// A series grows when its last third's median exceeds the middle third's by more than this.
const GROWTH: f64 = 1.25;
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// How a column shows a sample's value.
#[derive(Clone, Copy)]
enum Unit {
    Count,
    MiB,
    Millis,
    KibAsMiB,
}

fn columns(store: &str) -> Vec<(&'static str, &'static str, Unit)> {
    let mut columns = vec![
        ("t s", "t", Unit::Count),
        ("rows", "rows", Unit::Count),
        ("avail", "available", Unit::Count),
        ("jobs MiB", "jobs_bytes", Unit::MiB),
    ];
    columns.extend(match store {
        "postgres" => vec![
            ("table MiB", "table_bytes", Unit::MiB),
            ("index MiB", "index_bytes", Unit::MiB),
            ("dead tup", "dead_tuples", Unit::Count),
            ("autovac", "autovacuums", Unit::Count),
            ("schema MiB", "schema_bytes", Unit::MiB),
        ],
        "sqlite" => vec![("free pages", "free_pages", Unit::Count)],
        "memory" => vec![],
        _ => vec![
            ("job keys", "job_keys", Unit::Count),
            ("keys", "keys", Unit::Count),
            ("server MiB", "used_memory", Unit::MiB),
        ],
    });
    columns.extend([
        ("claims", "claims", Unit::Count),
        ("errs", "claim_errors", Unit::Count),
        ("claim p50", "claim_p50_us", Unit::Millis),
        ("claim p99", "claim_p99_us", Unit::Millis),
        ("RSS MiB", "rss_kib", Unit::KibAsMiB),
        ("enqueued", "enqueued", Unit::Count),
        ("completed", "completed", Unit::Count),
        ("runs", "runs", Unit::Count),
    ]);
    columns
}

fn cell(sample: &Value, key: &str, unit: Unit) -> String {
    let Some(v) = sample.get(key).and_then(Value::as_f64) else { return "-".into() };
    match unit {
        Unit::Count => format!("{v:.0}"),
        Unit::MiB => format!("{:.2}", v / 1_048_576.0),
        Unit::Millis => format!("{:.2} ms", v / 1000.0),
        Unit::KibAsMiB => format!("{:.1}", v / 1024.0),
    }
}

/// The whole report of one store: `samples` while enqueuing, `drained` after the drain,
/// `account` its final line.
pub(crate) fn render(
    store: &str,
    rate: u32,
    samples: &[Value],
    drained: Option<&Value>,
    account: Option<&Value>,
) -> String {
    let mut out = format!("\n### {store}\n\n");
    let columns = columns(store);
    let header: Vec<&str> = columns.iter().map(|c| c.0).collect();
    out += &format!("| {} |\n|{}\n", header.join(" | "), "---:|".repeat(columns.len()));
    for sample in samples.iter().chain(drained) {
        let cells: Vec<String> = columns.iter().map(|(_, k, u)| cell(sample, k, *u)).collect();
        out += &format!("| {} |\n", cells.join(" | "));
    }
    if drained.is_some() {
        out += "(last row: after the drain)\n";
    }
    out += "\n";
    let series = [
        ("jobs rows", "rows"),
        ("jobs size", "jobs_bytes"),
        ("claim p99", "claim_p99_us"),
        ("RSS", "rss_kib"),
    ];
    for (name, key) in series {
        let series: Vec<Option<f64>> =
            samples.iter().map(|s| s.get(key).and_then(Value::as_f64)).collect();
        out += &format!("{name:<10} {}  {}\n", sparkline(&series), verdict(&series));
    }
    out += &backlog_line(samples, rate);
    out += &account_line(account);
    out
}

/// The samples where the worker was behind (more than two seconds of work available): a
/// stall of the machine or the store, to read the latency series by.
fn backlog_line(samples: &[Value], rate: u32) -> String {
    let behind: Vec<String> = samples
        .iter()
        .filter(|s| s.get("available").and_then(Value::as_u64).unwrap_or(0) > u64::from(rate) * 2)
        .filter_map(|s| s.get("t").and_then(Value::as_u64).map(|t| t.to_string()))
        .collect();
    match behind.is_empty() {
        true => "backlog: never more than 2 s of work waiting\n".into(),
        false => format!("backlog over 2 s of work at t = {} s\n", behind.join(", ")),
    }
}

/// One bar per sample, scaled from the series' minimum to its maximum; a gap for a missing
/// sample.
pub(crate) fn sparkline(series: &[Option<f64>]) -> String {
    let known: Vec<f64> = series.iter().flatten().copied().collect();
    let (lo, hi) = known.iter().fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
    series
        .iter()
        .map(|v| match v {
            None => ' ',
            Some(_) if hi <= lo => BARS[0],
            Some(v) => BARS[(((v - lo) / (hi - lo)) * 7.0).round() as usize],
        })
        .collect()
}

/// "flat" or "growing", by the median of the last third of the samples against the median of
/// the middle third (medians, so one spike such as the restart's does not decide it).
pub(crate) fn verdict(series: &[Option<f64>]) -> String {
    let known: Vec<f64> = series.iter().flatten().copied().collect();
    if known.len() < 3 {
        return "too few samples for a verdict".into();
    }
    let third = known.len() / 3;
    let middle = median(&known[third..2 * third]);
    let last = median(&known[known.len() - third..]);
    if middle <= 0.0 {
        return format!("flat (middle third {middle:.0}, last third {last:.0})");
    }
    let ratio = last / middle;
    let word = if ratio > GROWTH { "GROWING" } else { "flat" };
    format!("{word}: last third / middle third = {ratio:.2} (medians)")
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn account_line(account: Option<&Value>) -> String {
    let Some(a) = account else { return "no final account: the soak did not finish\n".into() };
    let n = |key: &str| a.get(key).and_then(Value::as_u64).unwrap_or(0);
    // Lost work fails the soak; a job that did not retry or snooze as planned is called out (a
    // rerun after a lost lease is at-least-once delivery, counted but no fault).
    let on_plan = n("retries") == n("planned_retries")
        && n("snoozes") == n("planned_snoozes")
        && n("wrong_attempt") == 0
        && n("unexpected_completions") == 0;
    let verdict = match (n("lost") == 0 && n("runs_lost") == 0, on_plan) {
        (false, _) => "JOBS LOST",
        (true, false) => "nothing lost, but OFF PLAN",
        (true, true) => "ok: lost = 0, every job as planned",
    };
    let retention = match a.get("retention").and_then(Value::as_bool) {
        Some(false) => "retention OFF (the store does not prune yet); ",
        _ => "",
    };
    format!(
        "{retention}jobs: {} enqueued, {} completed, lost = {} {}; runs: {} started, {} completed, lost = {}, \
         failed {}; retries {}/{} planned, snoozes {}/{} planned, {} flaky jobs off plan, {} reruns, {} unexpected completions, {} producer \
         retries, drain {:.1} s, hook events dropped {} => {verdict}\n",
        n("enqueued"),
        n("completed"),
        n("lost"),
        a.get("lost_states").map(Value::to_string).unwrap_or_default(),
        n("runs_started"),
        n("runs_completed"),
        n("runs_lost"),
        n("runs_failed"),
        n("retries"),
        n("planned_retries"),
        n("snoozes"),
        n("planned_snoozes"),
        n("wrong_attempt"),
        n("reruns"),
        n("unexpected_completions"),
        n("producer_retries"),
        a.get("drain_secs").and_then(Value::as_f64).unwrap_or(0.0),
        n("hook_events_dropped"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparkline_spans_the_series_with_gaps_for_missing_samples() {
        assert_eq!(sparkline(&[Some(1.0), Some(8.0), None, Some(4.5)]), "▁█ ▅");
        assert_eq!(sparkline(&[Some(3.0), Some(3.0)]), "▁▁");
    }

    #[test]
    fn the_verdict_compares_the_last_third_with_the_middle_third() {
        let flat: Vec<Option<f64>> = [10.0, 11.0, 10.0, 30.0, 10.0, 11.0].map(Some).to_vec();
        assert!(verdict(&flat).starts_with("flat"), "{}", verdict(&flat));
        let growing: Vec<Option<f64>> = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0].map(Some).to_vec();
        assert!(verdict(&growing).starts_with("GROWING"), "{}", verdict(&growing));
    }
}
