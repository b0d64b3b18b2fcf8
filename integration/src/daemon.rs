//! A process started inside a namespace and stopped by its PID when dropped, with its
//! output kept in a log file that failure messages can quote.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::netns::Netns;

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `args` inside `ns` (`ip netns exec` execs it, so the PID is the daemon's).
    pub fn start(ns: &Netns, name: &str, args: &[&str], log_dir: &Path) -> io::Result<Daemon> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name()]).args(args);
        Daemon::spawn(cmd, name, log_dir)
    }

    /// Starts `args` in the test's own network namespace (a process that only talks to
    /// loopback, such as the controllers).
    pub fn start_here(name: &str, args: &[&str], log_dir: &Path) -> io::Result<Daemon> {
        let (program, rest) = args.split_first().expect("a program to run");
        let mut cmd = Command::new(program);
        cmd.args(rest);
        Daemon::spawn(cmd, name, log_dir)
    }

    fn spawn(mut cmd: Command, name: &str, log_dir: &Path) -> io::Result<Daemon> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(Daemon {
            name: name.into(),
            child: Some(child),
            log,
        })
    }

    /// Everything it wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!(
            "--- last {lines} lines of {} ({}) ---\n{tail}",
            self.name,
            self.log.display()
        )
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal by PID.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
    }

    /// Stops it with SIGTERM, then SIGKILL after two seconds, and reaps it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        self.signal_child(&child, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..40 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal_child(&self, child: &Child, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
