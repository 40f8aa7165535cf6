//! One long-lived `nft -i` for small transactions.
//!
//! Starting `nft` costs ~3.5–4.5 ms whatever it carries
//! (`../shared/nft-facts.md`), which is nearly all of a pod add's delta.
//! `nft -i` keeps one process (and one netlink socket) open and runs each
//! input line as one batch, so a transaction written as one line of
//! `;`-separated commands is applied as atomically as `nft -f` applies a
//! file. Completion is recognised by a marker command whose output is
//! constant (`describe meta nfproto`, which touches no kernel state), and
//! stdout and stderr share one pipe so an error is always read before the
//! marker that follows it. A refusal's caret points into the line, which
//! locates the failing operation without a second call.
//!
//! Large transactions (full applies) still go through a fresh `nft -j -f`:
//! they are rare and their cost is the kernel's, not the process start.
//! If the session dies or stalls, the transaction reports an I/O error (the
//! caller's fallback ladder takes over, as for any refusal) and the next
//! one starts a new session.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use crate::apply::{ApplyError, Kernel, NftKernel, Reason};
use crate::nft::transaction::{OpLine, Transaction};

/// Transactions carrying more elements or rules than this go through a
/// fresh `nft -j -f` (one line of nft input should stay modest).
pub const SESSION_MAX_WEIGHT: usize = 5_000;
/// The longest a transaction may take in the session before it is given up.
const TIMEOUT: Duration = Duration::from_secs(30);
const MARKER: &str = "describe meta nfproto";
const MARKER_FIRST: &str = "meta expression, datatype nf_proto";
const MARKER_LAST: &str = "\tipv6";

/// A kernel that applies small transactions through a kept-open `nft -i`
/// and everything else through `inner`.
pub struct SessionKernel {
    inner: NftKernel,
    argv: Vec<OsString>,
    session: Option<Session>,
}

struct Session {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SessionKernel {
    /// `argv` runs nft as [`NftKernel::with_command`] does (`["nft"]`, or a
    /// prefix such as `ip netns exec NAME nft`).
    pub fn new(argv: Vec<OsString>) -> SessionKernel {
        SessionKernel { inner: NftKernel::with_command(argv.clone()), argv, session: None }
    }

    fn start(&self) -> Result<Session, ApplyError> {
        let (prog, rest) = self.argv.split_first().ok_or_else(|| ApplyError::Io(std::io::Error::other("empty nft command")))?;
        let (reader, writer) = std::io::pipe()?;
        let mut child = Command::new(prog)
            .args(rest)
            .arg("-i")
            .stdin(Stdio::piped())
            .stdout(writer.try_clone()?)
            .stderr(writer)
            .spawn()
            .map_err(|e| ApplyError::NftMissing { program: prog.to_string_lossy().into_owned(), source: e })?;
        let stdin = child.stdin.take().ok_or_else(|| ApplyError::Io(std::io::Error::other("nft stdin")))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Session { child, stdin, lines };
        // The marker must come back before the session is trusted.
        let out = s.roundtrip("")?;
        if !out.is_empty() {
            return Err(ApplyError::Io(std::io::Error::other(format!("nft -i said {out:?} before any command"))));
        }
        Ok(s)
    }

    fn apply_in_session(&mut self, tx: &Transaction) -> Result<(), ApplyError> {
        let mut line = String::new();
        let mut spans = Vec::with_capacity(tx.ops.len());
        for op in &tx.ops {
            if !line.is_empty() {
                line.push_str("; ");
            }
            let start = line.len();
            line.push_str(&OpLine { table: &tx.table, op }.to_string());
            spans.push(start..line.len());
        }
        if line.contains('\n') {
            return self.inner.apply(tx);
        }
        if self.session.is_none() {
            self.session = Some(self.start()?);
        }
        let Some(session) = self.session.as_mut() else { return self.inner.apply(tx) };
        match session.roundtrip(&line) {
            Ok(out) if out.is_empty() => Ok(()),
            Ok(out) => Err(locate(tx, &spans, &out)),
            Err(e) => {
                self.session = None;
                Err(e)
            }
        }
    }
}

impl Session {
    /// Send `line` (may be empty) and the marker; everything nft printed
    /// before the marker's output, which for a batch means its errors.
    fn roundtrip(&mut self, line: &str) -> Result<Vec<String>, ApplyError> {
        if !line.is_empty() {
            writeln!(self.stdin, "{line}")?;
        }
        writeln!(self.stdin, "{MARKER}")?;
        self.stdin.flush()?;
        let mut out = Vec::new();
        let mut in_marker = false;
        loop {
            let l = match self.lines.recv_timeout(TIMEOUT) {
                Ok(l) => l,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(ApplyError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "nft -i did not answer")))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(ApplyError::Io(std::io::Error::other(format!("nft -i ended: {}", out.join("\n")))))
                }
            };
            if l.starts_with(MARKER_FIRST) {
                in_marker = true;
            } else if in_marker && l.starts_with(MARKER_LAST) {
                return Ok(out);
            } else if !in_marker {
                out.push(l);
            }
        }
    }
}

/// nft's refusal: `Error: …`, the line echoed, a caret under the culprit.
fn locate(tx: &Transaction, spans: &[std::ops::Range<usize>], out: &[String]) -> ApplyError {
    let text = out.join("\n");
    let message = text
        .lines()
        .find_map(|l| l.split_once("Error: ").map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| text.trim().to_string());
    let reason = Reason::from_message(&text);
    let caret = out.iter().rev().find(|l| l.trim_start().starts_with('^')).and_then(|l| l.find('^'));
    match caret.and_then(|c| spans.iter().position(|s| s.contains(&c))) {
        Some(i) => ApplyError::at(tx, i, reason, message),
        None => ApplyError::Rejected { op: None, op_text: None, reason, message },
    }
}

impl Kernel for SessionKernel {
    fn apply(&mut self, tx: &Transaction) -> Result<(), ApplyError> {
        if tx.is_empty() {
            return Ok(());
        }
        if tx.ops.iter().map(|o| o.weight()).sum::<usize>() > SESSION_MAX_WEIGHT {
            return self.inner.apply(tx);
        }
        self.apply_in_session(tx)
    }

    fn table_names(&mut self) -> Result<Vec<String>, ApplyError> {
        self.inner.table_names()
    }
}
