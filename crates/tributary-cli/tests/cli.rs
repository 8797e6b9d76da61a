//! `trib` as a process: exit codes and error lines that need no server.
//!
//! Behaviour against a running cluster is tested in the workspace `tests` crate.

use std::process::{Command, Output};

fn trib(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trib"))
        .args(args)
        .env_remove("TRIBUTARY_ENDPOINT")
        .output()
        .expect("run trib")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn an_unreachable_endpoint_is_an_unavailable_error_with_exit_code_1() {
    // Port 1 on loopback is essentially never listening.
    let output = trib(&["--endpoint", "127.0.0.1:1", "stream", "list"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.starts_with("error: Unavailable: cannot connect to http://127.0.0.1:1"),
        "{text}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn a_failed_put_says_how_many_records_were_acknowledged() {
    let output = trib(&["put", "s", "hello", "--endpoint", "127.0.0.1:1"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let text = stderr(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("error: Unavailable: "), "{text}");
    assert_eq!(lines.get(1), Some(&"0 of 1 record acknowledged"), "{text}");
}

#[test]
fn usage_errors_exit_with_code_2() {
    let cases: [&[&str]; 8] = [
        &[
            "stream",
            "create",
            "s",
            "--shards",
            "2",
            "--retention",
            "30s",
        ],
        &["stream", "create", "s", "--shards", "0"],
        &["get", "s", "--from", "oldest"],
        &["get", "s", "--limit", "0"],
        &["get", "s", "--from", "at:5"],
        &["--output", "yaml", "stream", "list"],
        &["get", "s", "--consumer", "c"],
        &["consumer", "register", "s"],
    ];
    for args in cases {
        let output = trib(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(stderr(&output).contains("error: "), "{args:?}");
    }
    let output = trib(&["get", "s", "--from", "at:5"]);
    assert!(
        stderr(&output).contains("add --shard ID"),
        "{}",
        stderr(&output)
    );
    let output = trib(&["get", "s", "--consumer", "c"]);
    assert!(
        stderr(&output).starts_with("error: --consumer needs --follow"),
        "{}",
        stderr(&output)
    );
}
