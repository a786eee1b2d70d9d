//! One ignored test of the current test binary run as a child process, for what is process-wide: environment
//! variables, the rustls provider, a second process's own connections and caches, a skewed clock.

use std::process::Command;

/// The arguments that run only the ignored test `name` of the module `module` (its `module_path!()`) of this test
/// binary, its output shown.
pub fn args(module: &str, name: &str) -> Vec<String> {
    // The harness names a test by its path within the crate: the crate's own name is not part of it.
    let test = match module.split_once("::") {
        Some((_, within)) => format!("{within}::{name}"),
        None => name.to_owned(),
    };
    ["--exact", &test, "--ignored", "--nocapture"]
        .map(str::to_owned)
        .to_vec()
}

/// A command running only the ignored test `name` of the module `module` (its `module_path!()`) of this test
/// binary; add its environment, then [`run`] it.
pub fn command(module: &str, name: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(args(module, name));
    command
}

/// Runs `command` and asserts it succeeded; its standard output.
pub fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the child process failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// An environment variable the parent test set, in the child.
pub fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} unset: run by its parent test"))
}
