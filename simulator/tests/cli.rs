//! The command line: documented flags and clear errors, no broker needed.

use std::process::Command;

fn simulator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_paydedup-simulator"))
}

#[test]
fn help_documents_every_flag() {
    let out = simulator().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--brokers",
        "--topic",
        "--create-partitions",
        "--count",
        "--duration",
        "--rate",
        "--seed",
        "--start-time",
        "--event-rate",
        "--allowed-lateness-secs",
        "--retention-secs",
        "--duplicate-rate",
        "--replay-rate",
        "--conflict-rate",
        "--out-of-order-rate",
        "--late-rate",
        "--malformed-rate",
        "--fraud-rate",
        "--merchants",
        "--cards",
        "--manifest",
        "--kafka",
        "--quiet",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
}

#[test]
fn bad_flags_give_a_clear_error() {
    let cases: [(&[&str], &str); 5] = [
        (&["--count", "many"], "invalid value 'many'"),
        (&["--no-such-flag"], "unexpected argument"),
        (
            &["--duplicate-rate", "1.5"],
            "--duplicate-rate must be between 0 and 1",
        ),
        (&["--kafka", "novalue"], "expected KEY=VALUE"),
        (&["--count", "5", "--duration", "3"], "cannot be used with"),
    ];
    for (args, expected) in cases {
        let out = simulator().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: stderr was {err}");
    }
}

#[test]
fn unreachable_broker_is_an_error_not_a_hang() {
    let out = simulator()
        .args(["--brokers", "127.0.0.1:1", "--count", "10", "--quiet"])
        .args(["--kafka", "socket.connection.setup.timeout.ms=2000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the broker up?"), "stderr was {err}");
}
