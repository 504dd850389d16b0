//! The whole pipeline into BigQuery (the real emulator): exactly-once delivery proven
//! by the reconciliation views, across processor crashes and emulator outages.
#![cfg(feature = "integration")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use paydedup_testkit::{free_port, Broker, Emulator};
use rand::{Rng, SeedableRng};

/// The metrics page; retried, since a scrape can race the processor's busy moments.
fn scrape(addr: &str) -> String {
    for _ in 0..50 {
        if let Some(body) = http_get(addr, "/metrics").filter(|b| b.contains("paydedup_")) {
            return body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no metrics from {addr}");
}

fn args(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

#[test]
fn every_view_passes_and_a_hand_inserted_duplicate_fails_by_name() {
    let broker = Broker::start().unwrap();
    let emu = Emulator::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    simulate(&broker, "payments", 4, 20_000, 21, &[], dir.path());
    let manifest = dir.path().join("manifest-payments.json");
    let flags = bigquery_flags(&emu, "e2e");
    let started = Instant::now();
    process_to_end(
        &broker,
        "payments",
        &dir.path().join("state"),
        &dir.path().join("unused"),
        &args(&flags),
    );
    eprintln!(
        "20000 records processed and delivered to the emulator in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let (ok, table) = reconcile_bigquery(&emu, "e2e", &manifest);
    assert!(ok, "{table}");
    assert!(table.contains("PASS: all"), "{table}");

    // Insert a duplicate payment by hand: reconcile fails and names the view.
    emulator_query(
        &emu,
        "INSERT INTO e2e.payments SELECT * FROM e2e.payments LIMIT 1",
    );
    let (ok, table) = reconcile_bigquery(&emu, "e2e", &manifest);
    assert!(!ok, "{table}");
    let failing: Vec<&str> = table.lines().filter(|l| l.ends_with("FAIL")).collect();
    assert!(
        failing.iter().any(|l| l.contains("v_exactly_once")),
        "{table}"
    );
}

#[test]
fn sigkill_during_delivery_changes_nothing() {
    let broker = Broker::start().unwrap();
    let emu = Emulator::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    simulate(&broker, "payments", 3, 100_000, 8, &[], dir.path());
    let manifest = dir.path().join("manifest-payments.json");
    let tuning = ["--batch-size", "500", "--relay-batch", "400"];

    let reference = bigquery_flags(&emu, "reference");
    let mut f = args(&reference);
    f.extend(tuning);
    process_to_end(
        &broker,
        "payments",
        &dir.path().join("state-ref"),
        &dir.path().join("x"),
        &f,
    );

    let crashed = bigquery_flags(&emu, "crashed");
    let mut f = args(&crashed);
    f.extend(tuning);
    let state = dir.path().join("state-crash");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut kills, mut mid_relay) = (0, 0);
    for _ in 0..40 {
        // Kills land after start-up (claiming the partitions, opening streams,
        // agreeing with the sink), while rows are being delivered.
        let addr = format!("127.0.0.1:{}", free_port().unwrap());
        let mut run = f.clone();
        run.extend(["--metrics-addr", addr.as_str()]);
        let mut child = spawn_processor(&broker, "payments", &state, &dir.path().join("x"), &run);
        let started = Instant::now();
        while http_get(&addr, "/readyz").as_deref() != Some("ready\n") {
            assert!(started.elapsed() < Duration::from_secs(60), "never ready");
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..900)));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let (_, outbox) = progress(&state);
        eprintln!("kill {kills}: {outbox} rows undelivered");
        if outbox > 0 {
            mid_relay += 1;
        }
        if mid_relay >= 12 {
            break;
        }
    }
    assert!(
        mid_relay >= 10,
        "only {mid_relay} of {kills} kills landed during delivery"
    );
    process_to_end(&broker, "payments", &state, &dir.path().join("x"), &f);

    let (ok, table) = reconcile_bigquery(&emu, "crashed", &manifest);
    assert!(ok, "{table}");
    // The same rows as the uninterrupted run, table by table (fraud columns aside:
    // they depend on cross-partition arrival order, see docs/architecture.md).
    for (t, cols) in [
        ("payments", "source_partition, outbox_seq, transaction_id, amount_minor, currency, source_offset, content_hash"),
        ("dedup_audit", "source_partition, outbox_seq, kind, transaction_id, source_offset, first_offset"),
        ("late_events", "source_partition, outbox_seq, transaction_id, source_offset, key_known"),
        ("processing_errors", "source_partition, outbox_seq, error_code, source_offset, payload_base64"),
        ("payment_metrics", "source_partition, outbox_seq, window_start, currency, payment_count, amount_minor_sum"),
    ] {
        let q = |ds: &str| emulator_query(&emu, &format!("SELECT {cols} FROM {ds}.{t} ORDER BY source_partition, outbox_seq"));
        let (a, b) = (q("reference"), q("crashed"));
        assert!(!a.is_empty() || t == "late_events", "{t} is empty");
        assert_eq!(a, b, "{t} differs from the uninterrupted run");
    }
}

#[test]
fn emulator_outage_pauses_then_resumes_without_loss() {
    let broker = Broker::start().unwrap();
    let mut emu = Emulator::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let total = 60_000;
    simulate(&broker, "payments", 2, total, 13, &[], dir.path());
    let manifest = dir.path().join("manifest-payments.json");
    let flags = bigquery_flags(&emu, "outage");
    let metrics = format!("127.0.0.1:{}", free_port().unwrap());
    let mut f = args(&flags);
    f.extend([
        "--outbox-bound",
        "3000",
        "--metrics-addr",
        &metrics,
        "--sink-give-up-secs",
        "120",
    ]);
    f.extend([
        "--exit-when-caught-up",
        "--drain",
        "--sink-max-backoff-ms",
        "1000",
    ]);
    let mut child = processor_command(
        &broker,
        "payments",
        &dir.path().join("state"),
        &dir.path().join("x"),
        &f,
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // The outage starts as soon as the processor is up.
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(&metrics, "/readyz").is_none_or(|b| !b.starts_with("ready")) {
        assert!(Instant::now() < deadline, "processor never became ready");
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("processor exited before it was ready: {status}: {err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    emu.stop();
    let gauge = |body: &str, name: &str| -> i64 {
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .sum()
    };
    // Processing goes on up to the outbox bound, then the consumer pauses.
    let mut paused = false;
    for _ in 0..80 {
        std::thread::sleep(Duration::from_millis(250));
        let body = scrape(&metrics);
        if gauge(&body, "paydedup_consumer_paused") == 1 {
            paused = true;
            break;
        }
    }
    assert!(paused, "the consumer never paused while the sink was down");
    let body = scrape(&metrics);
    let depth = gauge(&body, "paydedup_outbox_depth_rows");
    let consumed = gauge(&body, "paydedup_next_offset{");
    // Paused at the bound (3000), resumed only below half of it: if the relay
    // delivered some rows between the pause and the outage (a slow machine), the depth
    // may be anywhere in between, never below.
    assert!(
        depth >= 3000 / 2,
        "outbox depth {depth} below the resume threshold while paused"
    );
    assert!(
        consumed < total as i64,
        "everything was consumed before the pause ({consumed})"
    );
    // While paused, consumption stands still.
    std::thread::sleep(Duration::from_secs(2));
    let body = scrape(&metrics);
    assert_eq!(
        gauge(&body, "paydedup_next_offset{"),
        consumed,
        "consumed while paused"
    );
    // The lag gauge keeps being measured while paused (issue 9, hole 10): it shows
    // exactly the records still waiting, not a value frozen at the last idle poll.
    assert_eq!(
        gauge(&body, "paydedup_consumer_lag_records"),
        total as i64 - consumed,
        "lag while paused"
    );
    emu.restart().unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "processor failed after the outage: {status}"
    );
    let (ok, table) = reconcile_bigquery(&emu, "outage", &manifest);
    assert!(ok, "{table}");
}

/// Two processors for the same partitions: the second claims them (restoring its empty
/// state from the warehouse), the first's write streams are finalized, so the first
/// stops at its next append with `delivered by another processor`; the tables stay
/// exact.
#[test]
fn a_second_owner_fences_the_first_and_the_tables_stay_exact() {
    let broker = Broker::start().unwrap();
    let emu = Emulator::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    simulate(&broker, "payments", 2, 40_000, 23, &[], d);
    let manifest = d.join("manifest-payments.json");
    let mut flags = bigquery_flags(&emu, "fenced");
    flags.extend(["--relay-batch".into(), "200".into()]);
    let unused = d.join("unused");

    let mut a = processor_command(
        &broker,
        "payments",
        &d.join("state-a"),
        &unused,
        &args(&flags),
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // Let A deliver part of it.
    let started = Instant::now();
    loop {
        // Not `emulator_query`: the dataset may not exist yet.
        let url = format!(
            "{}/bigquery/v2/projects/{}/queries",
            emu.rest_url(),
            emu.project
        );
        let body = serde_json::json!({"query": "SELECT COUNT(*) FROM fenced.payments", "useLegacySql": false});
        let answer: serde_json::Value =
            serde_json::from_str(&http_post_json(&url, &body.to_string())).unwrap_or_default();
        let n = answer["rows"][0]["f"][0]["v"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        if n > 2_000 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "A delivers nothing"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // B takes both partitions over and runs to the end.
    process_to_end(
        &broker,
        "payments",
        &d.join("state-b"),
        &unused,
        &args(&flags),
    );
    // A finds itself fenced at its next append and stops, non-zero.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = a.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the fenced processor kept running"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(a.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("is delivered by another processor"), "{err}");

    let (ok, table) = reconcile_bigquery(&emu, "fenced", &manifest);
    assert!(ok, "{table}");
}
