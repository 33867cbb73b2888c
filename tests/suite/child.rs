//! Tests that need a process of their own (they measure the heap or the
//! resident set, or lower a process limit) run as a child: the parent test
//! starts this test binary again for one `#[ignore]`d child test, with
//! [`CHILD_ENV`] set to that test's path. The child runs alone
//! (`--exact`, one thread), so that what it measures is its own.

use std::process::Stdio;
use std::time::Duration;

/// Names the child test a child process is to run.
const CHILD_ENV: &str = "CHITCHAT_NET_TEST_CHILD";

/// Upper bound of a whole child process. Generous (at least 5× what the
/// work needs on a loaded 2-CPU machine: the longest child takes about 5 s
/// there); a child that hangs still fails the test.
pub const CHILD_WAIT: Duration = Duration::from_secs(120);

/// The path of the test `name` of `module` (a `module_path!()`) as the test
/// harness names it: without the crate's name.
fn test_path(module: &str, name: &str) -> String {
    match module.split_once("::") {
        Some((_crate, path)) => format!("{path}::{name}"),
        None => name.to_string(),
    }
}

/// Whether this process is the child started to run the test `name` of
/// `module` (a `module_path!()`).
pub fn is_child(module: &str, name: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|v| v == test_path(module, name))
}

/// This test binary, set to run the one test `name` of `module` (a
/// `module_path!()`) as a child.
pub fn command(module: &str, name: &str) -> tokio::process::Command {
    let test = test_path(module, name);
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = tokio::process::Command::new(exe);
    command
        .args([
            "--exact",
            &test,
            "--nocapture",
            "--include-ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &test)
        .kill_on_drop(true);
    command
}

/// Runs the test `name` of `module` (a `module_path!()`) in a child
/// process; fails if it fails (or did not run at all). Returns its standard
/// output.
pub async fn run(module: &str, name: &str) -> String {
    let output = command(module, name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    let output = tokio::time::timeout(CHILD_WAIT, output)
        .await
        .unwrap_or_else(|_| panic!("child test {name} ran for more than {CHILD_WAIT:?}"))
        .expect("start the child test");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("test result: ok. 1 passed"),
        "child test {name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    stdout
}
