//! `reconcile` as a scheduled check, against the real BigQuery emulator: on a live
//! output (windows still open, the newest rows in flight) it checks only what is
//! settled, passes on a correct output, exits 1 on a wrong row in its range and 2
//! when it cannot look; the processor and the check read one config file.
#![cfg(feature = "integration")]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use paydedup_testkit::{binary, free_port, Broker, Emulator};

/// One `reconcile` run: (exit code, stdout + stderr, the metrics file).
fn reconcile(config: &Path, metrics: &Path, extra: &[&str]) -> (i32, String, String) {
    let _ = std::fs::remove_file(metrics);
    let started = Instant::now();
    let out = Command::new(binary("paydedup-processor").unwrap())
        .arg("reconcile")
        .arg("--config")
        .arg(config)
        .arg("--metrics-file")
        .arg(metrics)
        .args(extra)
        .output()
        .unwrap();
    eprintln!(
        "reconcile {extra:?}: exit {:?} in {:.1} s",
        out.status.code(),
        started.elapsed().as_secs_f64()
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let prom = std::fs::read_to_string(metrics).unwrap_or_default();
    (out.status.code().unwrap_or(-1), text, prom)
}

/// The processor on the config file. The sink is named again as a flag only because
/// the harness adds a file sink unless `--sink` is given.
fn processor(broker: &Broker, config: &Path, state: &Path, sink: &str) -> Command {
    processor_command(
        broker,
        "payments",
        state,
        Path::new("unused"),
        &["--config", config.to_str().unwrap(), "--sink", sink],
    )
}

/// Runs the processor until caught up, *without* draining: its newest windows stay
/// open, as on a live pipeline.
fn process_live(broker: &Broker, config: &Path, state: &Path, sink: &str) {
    let started = Instant::now();
    let out = processor(broker, config, state, sink)
        .args(["--exit-when-caught-up"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "processor failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "processed and delivered in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn failing(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.ends_with("FAIL")).collect()
}

/// The one cell of a one-row answer.
fn scalar(emu: &Emulator, sql: &str) -> String {
    let rows = emulator_query(emu, sql);
    rows[0][0].as_str().unwrap_or_default().to_owned()
}

#[test]
fn scheduled_reconcile_checks_only_what_is_settled_and_exits_0_1_or_2() {
    let broker = Broker::start().unwrap();
    let emu = Emulator::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The processor's configuration, read by `run` and by `reconcile` alike: 5 s
    // windows and 10 s lateness, so a short run has closed windows to check.
    let config = d.join("paydedup.toml");
    std::fs::write(
        &config,
        format!(
            "window_secs = 5\nallowed_lateness_secs = 10\nretention_secs = 600\n\
             sink = \"bigquery:{}.sched\"\nbigquery_rest_url = \"{}\"\n\
             bigquery_grpc_url = \"{}\"\nbigquery_no_auth = true\n",
            emu.project,
            emu.rest_url(),
            emu.grpc_url()
        ),
    )
    .unwrap();
    // The simulator keeps its own lateness (it needs 180 s at least): for a processor
    // allowing 10 s, much of its disorder is late, which fills `late_events` too.
    let sim: [&str; 0] = [];
    let metrics = d.join("reconcile.prom");
    let state = d.join("state");
    let sink = format!("bigquery:{}.sched", emu.project);

    // Part one, delivered; then the bound; then part two, which reached Kafka after it.
    let first = simulate(&broker, "payments", 2, 6_000, 31, &sim, d);
    process_live(&broker, &config, &state, &sink);
    std::thread::sleep(Duration::from_millis(20));
    let bound = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(20));
    let first_max = first["max_event_time"].as_str().unwrap();
    let second_start =
        chrono::DateTime::parse_from_rfc3339(first_max).unwrap() + chrono::Duration::seconds(1);
    let mut sim2 = sim.to_vec();
    let second_start = second_start.to_rfc3339();
    sim2.extend(["--start-time", &second_start]);
    simulate(&broker, "payments", 2, 3_000, 32, &sim2, d);
    process_live(&broker, &config, &state, &sink);
    let settled_before = format!("--settled-before={}", bound.to_rfc3339());
    let t = bound.timestamp_micros();

    // The whole output is not finished: its newest windows are open.
    let (code, text, _) = reconcile(&config, &metrics, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(
        failing(&text)
            .iter()
            .any(|l| l.contains("v_amount_reconciliation")),
        "{text}"
    );

    // Scheduled: what reached Kafka before the bound, and the windows it closed.
    let (code, text, prom) = reconcile(&config, &metrics, &[&settled_before]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("PASS: all"), "{text}");
    assert!(text.contains("2 partitions settled"), "{text}");
    assert!(prom.contains("paydedup_reconcile_ok 1\n"), "{prom}");
    let checked = |prom: &str, series: &str| -> f64 {
        prom.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    // About part one's 6000 records, and its closed windows of 2 partitions.
    let records = checked(&prom, "paydedup_reconcile_checked_records");
    assert!((5_000.0..=6_000.0).contains(&records), "{prom}");
    assert!(
        checked(&prom, "paydedup_reconcile_checked_windows") >= 10.0,
        "{prom}"
    );
    // Everything delivered so far counts as settled: still only closed windows.
    let (code, text, _) = reconcile(&config, &metrics, &["--settle-secs=0"]);
    assert_eq!(code, 0, "{text}");

    // A part-two payment not delivered yet (taken out): in flight for the bound ...
    let (p, o) = {
        let rows = emulator_query(
            &emu,
            &format!(
                "SELECT source_partition, source_offset FROM sched.payments \
                 WHERE kafka_timestamp >= TIMESTAMP_MICROS({t}) ORDER BY source_offset LIMIT 1"
            ),
        );
        (
            rows[0][0].as_str().unwrap().to_owned(),
            rows[0][1].as_str().unwrap().to_owned(),
        )
    };
    let row = format!("source_partition = {p} AND source_offset = {o}");
    emulator_query(
        &emu,
        &format!("CREATE TABLE sched.held AS SELECT * FROM sched.payments WHERE {row}"),
    );
    emulator_query(&emu, &format!("DELETE FROM sched.payments WHERE {row}"));
    let (code, text, _) = reconcile(&config, &metrics, &[&settled_before]);
    assert_eq!(code, 0, "an in-flight row failed the scheduled run: {text}");
    // ... and a lost record once settled.
    let (code, text, _) = reconcile(&config, &metrics, &["--settle-secs=0"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        failing(&text)
            .iter()
            .any(|l| l.starts_with("source_accounting: partition")),
        "{text}"
    );

    // A wrong row in the settled range: a part-one payment's amount changed.
    let (q, r, amount) = {
        let rows = emulator_query(
            &emu,
            &format!(
                "SELECT source_partition, source_offset, amount_minor FROM sched.payments \
                 WHERE kafka_timestamp < TIMESTAMP_MICROS({t}) ORDER BY source_offset LIMIT 1"
            ),
        );
        let cell = |i: usize| rows[0][i].as_str().unwrap().to_owned();
        (cell(0), cell(1), cell(2))
    };
    let wrong = format!("source_partition = {q} AND source_offset = {r}");
    emulator_query(
        &emu,
        &format!("UPDATE sched.payments SET amount_minor = amount_minor + 1 WHERE {wrong}"),
    );
    let (code, text, prom) = reconcile(&config, &metrics, &[&settled_before]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(
        failing(&text)
            .iter()
            .map(|l| l.split(':').next().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["amounts"],
        "{text}"
    );
    assert!(prom.contains("paydedup_reconcile_exit_code 1\n"), "{prom}");
    assert!(
        prom.contains("paydedup_reconcile_check_failures{check=\"amounts\"} 1\n"),
        "{prom}"
    );

    // Could not look: the warehouse unreachable, or a window size that is not the
    // processor's.
    let nowhere = format!(
        "--bigquery-rest-url=http://127.0.0.1:{}",
        free_port().unwrap()
    );
    let (code, text, prom) = reconcile(&config, &metrics, &[&settled_before, &nowhere]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("querying the warehouse"), "{text}");
    assert!(prom.contains("paydedup_reconcile_exit_code 2\n"), "{prom}");
    assert!(prom.contains("paydedup_reconcile_ok 0\n"), "{prom}");
    let (code, text, _) = reconcile(&config, &metrics, &[&settled_before, "--window-secs=60"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("windows of 5 s"), "{text}");

    // Put the rows back, drain (closing every window): the whole output passes, its
    // amounts view re-aggregating with the 5 s windows the processor used.
    emulator_query(
        &emu,
        &format!("UPDATE sched.payments SET amount_minor = {amount} WHERE {wrong}"),
    );
    emulator_query(&emu, "INSERT INTO sched.payments SELECT * FROM sched.held");
    emulator_query(&emu, "DROP TABLE sched.held");
    process_to_end(
        &broker,
        "payments",
        &state,
        Path::new("unused"),
        &["--config", config.to_str().unwrap(), "--sink", &sink],
    );
    let (code, text, _) = reconcile(&config, &metrics, &[]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        scalar(
            &emu,
            "SELECT COUNT(DISTINCT UNIX_MICROS(window_end) - UNIX_MICROS(window_start)) FROM sched.payment_metrics"
        ),
        "1"
    );
}
