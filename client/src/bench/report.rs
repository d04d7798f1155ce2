//! The bench's results: a small table for people, or one JSON line with
//! throughput, latency percentiles in microseconds, errors by code and the
//! ratio of vowd to the ceiling server.

use comfy_table::{CellAlignment, Table, presets};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::{BenchSetup, LoadReport, Mode, load::DeliveryCpu};
use crate::cli::{
    OutputFormat,
    render::{human_duration, print_table},
};

/// The percentiles reported, with their JSON names.
const PERCENTILES: [(&str, f64); 4] =
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9)];

/// Prints the results in `format`.
pub fn print(
    format: OutputFormat,
    setup: &BenchSetup,
    target: &LoadReport,
    ceiling: Option<&LoadReport>,
) {
    match format {
        OutputFormat::Json => println!("{}", to_json(setup, target, ceiling)),
        OutputFormat::Human => print_human(setup, target, ceiling),
    }
}

/// Throughput ratio and p99 ratio of the target to the ceiling.
fn ratios(target: &LoadReport, ceiling: &LoadReport) -> (f64, f64) {
    let throughput = target.throughput() / ceiling.throughput().max(f64::MIN_POSITIVE);
    let p99 = target.latency.value_at_percentile(99.0) as f64
        / (ceiling.latency.value_at_percentile(99.0).max(1) as f64);
    (throughput, p99)
}

fn to_json(setup: &BenchSetup, target: &LoadReport, ceiling: Option<&LoadReport>) -> Value {
    let mut object = json!({
        "mode": setup.mode.name(),
        "kind": setup.kind,
        "concurrency": setup.concurrency,
        "connections": setup.connections,
        "duration_s": setup.duration.as_secs_f64(),
        "warmup_s": setup.warmup.as_secs_f64(),
        "payload_bytes": setup.payload_bytes,
        "server": setup.server,
        "rounds": setup.rounds,
    });
    let Value::Object(fields) = &mut object else {
        unreachable!("json! of an object literal is an object")
    };
    let Value::Object(measured) = report_json(target) else {
        unreachable!("report_json returns an object")
    };
    fields.extend(measured);
    if setup.mode == Mode::WatchFanout {
        // `tasks` counts deliveries here; these say how they were made.
        fields.insert("watchers".into(), setup.concurrency.into());
        fields.insert("fanout_rounds".into(), target.fanout_rounds.into());
        for (name, cpu) in [
            ("server_cpu_per_delivery_us", target.fanout_server_cpu),
            ("bench_cpu_per_delivery_us", target.fanout_bench_cpu),
        ] {
            if let Some(per_delivery) = cpu.and_then(DeliveryCpu::per_delivery) {
                let micros = round(per_delivery.as_secs_f64() * 1e6, 2);
                fields.insert(name.into(), micros.into());
            }
        }
    }
    if let Some(dispatch) = &target.dispatch {
        fields.insert("dispatch_us".into(), percentiles_json(dispatch));
    }
    fields.insert("ceiling".into(), ceiling.map_or(Value::Null, report_json));
    let (throughput_ratio, p99_ratio) = ceiling
        .map(|ceiling| ratios(target, ceiling))
        .map_or((Value::Null, Value::Null), |(throughput, p99)| {
            (round(throughput, 3).into(), round(p99, 3).into())
        });
    fields.insert("ceiling_ratio".into(), throughput_ratio);
    fields.insert("ceiling_p99_ratio".into(), p99_ratio);
    object
}

/// The reported percentiles, max and mean of a histogram of microseconds.
fn percentiles_json(histogram: &Histogram<u64>) -> Value {
    let mut latency = serde_json::Map::new();
    for (name, percentile) in PERCENTILES {
        latency.insert(
            name.into(),
            histogram.value_at_percentile(percentile).into(),
        );
    }
    latency.insert("max".into(), histogram.max().into());
    latency.insert("mean".into(), round(histogram.mean(), 1).into());
    Value::Object(latency)
}

fn report_json(report: &LoadReport) -> Value {
    json!({
        "tasks": report.completed,
        "tasks_per_s": round(report.throughput(), 1),
        "latency_us": percentiles_json(&report.latency),
        "retried": report.retried,
        "errors": report.errors,
        "first_error": report.first_error,
    })
}

fn print_human(setup: &BenchSetup, target: &LoadReport, ceiling: Option<&LoadReport>) {
    if setup.mode == Mode::WatchFanout {
        println!(
            "watch-fanout: {} watchers of one {} task per round over {} connections, {} rounds in {} measured after {} warmup; \
             latency from the task's end_time to each delivery of its terminal change",
            setup.concurrency,
            setup.kind,
            setup.connections,
            target.fanout_rounds,
            human_duration(target.window),
            human_duration(setup.warmup),
        );
        print_table_of(&[("server", target)], "deliveries/s");
        for (whose, cpu) in [
            ("server", target.fanout_server_cpu),
            ("bench", target.fanout_bench_cpu),
        ] {
            if let Some(per_delivery) = cpu.and_then(DeliveryCpu::per_delivery) {
                println!(
                    "{whose} CPU per delivery: {:.2} µs (its CPU time from each cancel to the round's last delivery)",
                    per_delivery.as_secs_f64() * 1e6
                );
            }
        }
        print_first_errors(target, None);
        return;
    }
    let rounds = match setup.rounds {
        1 => String::new(),
        rounds => format!(", in {rounds} alternating rounds"),
    };
    println!(
        "{} of {} tasks: {} callers over {} connections, {} measured after {} warmup{rounds}",
        setup.mode.name(),
        setup.kind,
        setup.concurrency,
        setup.connections,
        human_duration(setup.duration),
        human_duration(setup.warmup),
    );
    let mut rows = vec![("server", target)];
    rows.extend(ceiling.map(|ceiling| ("ceiling", ceiling)));
    print_table_of(&rows, "tasks/s");
    if let Some(dispatch) = &target.dispatch {
        let percentiles: Vec<String> = PERCENTILES
            .iter()
            .map(|(name, percentile)| format!("{name} {}", micros(dispatch, *percentile)))
            .collect();
        println!(
            "dispatch, Submit acknowledged to lease received: {} over {} tasks",
            percentiles.join(", "),
            dispatch.len()
        );
    }
    print_first_errors(target, ceiling);
    if let Some(ceiling) = ceiling {
        let (throughput, p99) = ratios(target, ceiling);
        println!(
            "ceiling ratio {throughput:.2}: the server does {:.0}% of the ceiling's tasks/s, at {p99:.2}× its p99",
            throughput * 100.0
        );
    }
}

/// One row per report: its rate (headed `rate_header`), percentiles, max and errors.
fn print_table_of(rows: &[(&str, &LoadReport)], rate_header: &str) {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .force_no_tty()
        .set_header([
            "server",
            rate_header,
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "errors",
        ]);
    for &(name, report) in rows {
        let mut row = vec![name.to_owned(), format_thousands(report.throughput())];
        row.extend(
            PERCENTILES
                .iter()
                .map(|(_, percentile)| micros(&report.latency, *percentile)),
        );
        row.push(human_duration(std::time::Duration::from_micros(
            report.latency.max(),
        )));
        row.push(report.errors.values().sum::<u64>().to_string());
        table.add_row(row);
    }
    for index in 1..8 {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    print_table(&mut table);
}

fn print_first_errors(target: &LoadReport, ceiling: Option<&LoadReport>) {
    for (name, report) in [("server", Some(target)), ("ceiling", ceiling)] {
        let Some(report) = report else { continue };
        if let Some(first) = &report.first_error {
            println!("{name} errors {:?}; first: {first}", report.errors);
        }
    }
}

fn micros(histogram: &Histogram<u64>, percentile: f64) -> String {
    human_duration(std::time::Duration::from_micros(
        histogram.value_at_percentile(percentile),
    ))
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10_f64.powi(decimals);
    (value * scale).round() / scale
}

/// `21345.6` as `21,346`.
fn format_thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(format_thousands(0.4), "0");
        assert_eq!(format_thousands(999.0), "999");
        assert_eq!(format_thousands(21_345.6), "21,346");
        assert_eq!(format_thousands(1_234_567.0), "1,234,567");
    }
}
