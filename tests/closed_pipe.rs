//! Printing into a pipe whose reader has gone (`distillery ... | head`) ends
//! the command quietly, by SIGPIPE, as with other Unix tools: no panic.

#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_the_command_by_sigpipe() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};

    // The read end is closed before the command starts: closing it after
    // the spawn would race with a command fast enough to fit its whole
    // output into the pipe's buffer and exit normally.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = Command::new(env!("CARGO_BIN_EXE_distillery"))
        .arg("schema")
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "status {:?}, stderr: {stderr}",
        out.status
    );
}
