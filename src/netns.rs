//! Network namespaces that are always removed: on drop, on panic, on Ctrl-C.
//!
//! Everything `netfence test --dataplane` (and every test that touches links
//! or nftables) does to the kernel happens inside namespaces created here.
//! Code never enters the host namespace's configuration: links are created
//! directly inside their target namespaces, commands run with their network
//! namespace switched before `exec`, and closures run on a dedicated thread
//! that has joined the namespace, so the calling thread never changes
//! namespace.
//!
//! Every live namespace is recorded in a process-wide registry. A
//! SIGINT/SIGTERM handler, installed once with the first namespace, removes
//! everything still registered and exits with 128 + the signal (130 for
//! Ctrl-C); panics unwind through [`Netns`]'s `Drop`. Only `kill -9` leaves
//! namespaces behind, and their names (`<prefix><pid>-<n>`) say which
//! process made them.
//!
//! Invariant: this module does not create, change or delete anything in the
//! namespace it runs in, except files below `/run/netns` named by it.

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard, Once};

use anyhow::{bail, Context};

/// Where `ip netns` keeps its namespaces (bind mounts of `/proc/*/ns/net`).
const NETNS_DIR: &str = "/run/netns";

/// Names of the namespaces this process created and has not yet removed.
static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
static COUNTER: AtomicU32 = AtomicU32::new(0);
static SIGNAL_CLEANUP: Once = Once::new();

/// A named network namespace owned by this process, removed on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A new namespace named `<prefix><pid>-<n>`, unique within the machine
    /// while this process lives.
    pub fn create(prefix: &str) -> anyhow::Result<Netns> {
        Netns::create_many(prefix, 1)?.pop().context("ip created no namespace")
    }

    /// `n` new namespaces with one `ip` process: creating namespaces one
    /// process at a time is most of the cost of a small topology.
    pub fn create_many(prefix: &str, n: usize) -> anyhow::Result<Vec<Netns>> {
        install_signal_cleanup();
        let pid = std::process::id();
        // Registered before they exist, so that a signal arriving while `ip`
        // runs still removes whatever it managed to create.
        let guards: Vec<Netns> = (0..n)
            .map(|_| {
                let name = format!("{prefix}{pid}-{}", COUNTER.fetch_add(1, Ordering::Relaxed));
                live().insert(name.clone());
                Netns { name }
            })
            .collect();
        let script: String = guards.iter().map(|g| format!("netns add {}\n", g.name)).collect();
        run_ip(&[], &script).context("cannot create network namespaces")?;
        Ok(guards)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> PathBuf {
        path_of(&self.name)
    }

    fn open(&self) -> io::Result<File> {
        File::open(self.path())
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open network namespace {}: {e}", self.name)))
    }

    /// Run `f` on a new thread that has joined this namespace. Sockets it
    /// creates belong to this namespace for their whole life, whichever
    /// thread uses them later; processes it spawns start inside it. A panic
    /// in `f` is resumed on the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let ns = self.open()?;
        std::thread::scope(|s| {
            s.spawn(move || {
                enter(&ns)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A thread that stays inside this namespace and runs the closures
    /// given to it, in order: for making many sockets here at the cost of
    /// a channel message each rather than a thread each.
    pub fn worker(&self) -> io::Result<Worker> {
        let ns = self.open()?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let (entered_tx, entered) = mpsc::channel();
        let thread = std::thread::Builder::new().name(format!("in-{}", self.name)).spawn(move || {
            let result = enter(&ns);
            let ok = result.is_ok();
            let _ = entered_tx.send(result);
            if ok {
                queue.into_iter().for_each(|job| job());
            }
        })?;
        entered.recv().map_err(io::Error::other)??;
        Ok(Worker { jobs: Some(jobs), thread: Some(thread) })
    }

    /// A command that runs inside this namespace. Unlike `ip netns exec` it
    /// costs no extra process and leaves the mount namespace alone, which is
    /// all that `nft` and `ip` need.
    pub fn command(&self, program: impl AsRef<OsStr>) -> io::Result<Command> {
        let ns = self.open()?;
        let mut cmd = Command::new(program);
        // SAFETY: the closure only calls setns(2), which is async-signal-safe,
        // and builds its error without allocating.
        unsafe {
            cmd.pre_exec(move || enter(&ns));
        }
        Ok(cmd)
    }

    /// Run an `ip -batch` script inside this namespace.
    pub fn ip_batch(&self, script: &str) -> anyhow::Result<()> {
        run_ip(&["-n", &self.name], script).with_context(|| format!("in network namespace {}", self.name))
    }

    /// Run a `bridge -batch` script (forwarding database entries) inside
    /// this namespace.
    pub fn bridge_batch(&self, script: &str) -> anyhow::Result<()> {
        run_batch("bridge", &["-n", &self.name], script).with_context(|| format!("in network namespace {}", self.name))
    }

    /// Set sysctls of this namespace; keys are paths below /proc/sys
    /// (`net/ipv4/ip_forward`). /proc/sys/net resolves against the network
    /// namespace of the thread that opens it.
    pub fn sysctl(&self, settings: &[(&str, &str)]) -> anyhow::Result<()> {
        self.run(|| {
            for (key, value) in settings {
                std::fs::write(format!("/proc/sys/{key}"), value)
                    .with_context(|| format!("cannot set sysctl {key}={value} in {}", self.name))?;
            }
            Ok(())
        })?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = remove(&self.name) {
            tracing::warn!("cannot remove network namespace {}: {e}", self.name);
        }
        live().remove(&self.name);
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread inside a namespace; see [`Netns::worker`]. Dropping it lets the
/// queued closures finish, then ends the thread.
#[derive(Debug)]
pub struct Worker {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// Queue `job`. A job that panics ends the worker; later jobs are then
    /// dropped unrun, which their callers see as a closed reply channel.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Box::new(job));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether a namespace of this name exists (in `ip netns list`).
pub fn exists(name: &str) -> bool {
    path_of(name).exists()
}

/// Can this process build a dataplane? Root, `ip` and `nft` on PATH, and a
/// namespace in which `nft` works. The message says what is missing, so the
/// CLI can refuse to start rather than half-run.
pub fn check_privileges() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the dataplane needs root: it creates network namespaces and loads nftables rulesets into them (run as root, or drop --dataplane)".into());
    }
    for (tool, arg, package) in [("ip", "-V", "iproute2"), ("nft", "-v", "nftables")] {
        match Command::new(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status() {
            Ok(s) if s.success() => {}
            Ok(s) => return Err(format!("the dataplane needs `{tool}` ({package}), but `{tool} {arg}` failed ({s})")),
            Err(e) => return Err(format!("the dataplane needs `{tool}` ({package}) on PATH: {e}")),
        }
    }
    let ns = Netns::create("nfchk").map_err(|e| format!("the dataplane cannot create a network namespace: {e:#}"))?;
    let out = ns
        .command("nft")
        .and_then(|mut c| c.args(["list", "ruleset"]).output())
        .map_err(|e| format!("cannot run nft inside a network namespace: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft does not work inside a network namespace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn path_of(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

fn live() -> MutexGuard<'static, BTreeSet<String>> {
    // A panic while holding the lock leaves a set that is still accurate.
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Join the network namespace `ns` on the calling thread.
fn enter(ns: &File) -> io::Result<()> {
    // SAFETY: a valid namespace fd; CLONE_NEWNET only changes this thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What `ip netns delete` does: detach the bind mount and remove its file.
/// Interfaces inside go away with the namespace's last reference. Done
/// in-process so that it is cheap and safe to do from the signal thread.
fn remove(name: &str) -> io::Result<()> {
    let path = path_of(name);
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated path. EINVAL/ENOENT: nothing mounted
    // there (creation failed half-way), which the unlink below settles.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            return Err(e);
        }
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn install_signal_cleanup() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    SIGNAL_CLEANUP.call_once(|| {
        let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot install the SIGINT/SIGTERM cleanup of network namespaces: {e}");
                return;
            }
        };
        let spawned = std::thread::Builder::new().name("netns-cleanup".into()).spawn(move || {
            if let Some(signal) = signals.forever().next() {
                // Keep the lock: nothing may create a namespace after this.
                let live = live();
                for name in live.iter() {
                    let _ = remove(name);
                }
                eprintln!("interrupted: removed {} network namespace(s)", live.len());
                std::process::exit(128 + signal);
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the network namespace cleanup thread: {e}");
        }
    });
}

/// Run `ip [args] -batch -` with `script` on stdin. A failing line is
/// quoted in the error, since ip only gives its number.
fn run_ip(args: &[&str], script: &str) -> anyhow::Result<()> {
    run_batch("ip", args, script)
}

/// `ip` or `bridge` (same batch syntax and errors): `program [args] -batch -`.
fn run_batch(program: &str, args: &[&str], script: &str) -> anyhow::Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let mut stdin = child.stdin.take().with_context(|| format!("{program} has no stdin"))?;
    // ip reads while we write; a failure to write shows in its exit status.
    let _ = stdin.write_all(script.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().with_context(|| format!("cannot wait for {program}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failed_line = stderr
        .rsplit_once("Command failed -:")
        .and_then(|(_, n)| n.trim().parse::<usize>().ok())
        .and_then(|n| script.lines().nth(n.checked_sub(1)?));
    match failed_line {
        Some(line) => bail!("{program} {}: `{line}`: {}", args.join(" "), stderr.trim()),
        None => bail!("{program} {} -batch: {}", args.join(" "), stderr.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the test can run; without root it says it skipped.
    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() == 0 };
        if !root {
            eprintln!("SKIPPED: needs root");
        }
        root
    }

    #[test]
    fn names_are_unique_and_removed_on_drop() {
        if !root() {
            return;
        }
        let set = Netns::create_many("nfut", 3).unwrap();
        let names: Vec<String> = set.iter().map(|n| n.name().to_string()).collect();
        assert_eq!(names.iter().collect::<BTreeSet<_>>().len(), 3);
        assert!(names.iter().all(|n| exists(n) && n.len() < 16), "{names:?}");
        drop(set);
        assert!(names.iter().all(|n| !exists(n)), "{names:?}");
    }

    #[test]
    fn closures_and_commands_run_inside() {
        if !root() {
            return;
        }
        let ns = Netns::create("nfut").unwrap();
        ns.ip_batch("link add dummy7 type veth peer name dummy8\n").unwrap();
        let links = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()).unwrap();
        assert!(links.contains("dummy7"), "{links}");
        let out = ns.command("ip").unwrap().args(["-o", "link"]).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("dummy7"));
        let forward = |ns: &Netns| ns.run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap()).unwrap();
        let host_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
        let other = Netns::create("nfut").unwrap();
        ns.sysctl(&[("net/ipv4/ip_forward", "1")]).unwrap();
        assert_eq!((forward(&ns).as_str(), forward(&other).as_str()), ("1\n", "0\n"));
        assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(), host_forward);
        let worker = ns.worker().unwrap();
        let (tx, rx) = mpsc::channel();
        for _ in 0..2 {
            let tx = tx.clone();
            worker.submit(move || tx.send(std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()).unwrap());
        }
        assert!(rx.iter().take(2).all(|dev| dev.contains("dummy7")));
        // The host namespace saw none of it.
        assert!(!std::fs::read_to_string("/proc/thread-self/net/dev").unwrap().contains("dummy7"));
    }

    #[test]
    fn failing_batch_line_is_quoted() {
        if !root() {
            return;
        }
        let ns = Netns::create("nfut").unwrap();
        let e = ns.ip_batch("link set lo up\nlink set nosuchlink up\n").unwrap_err();
        assert!(format!("{e:#}").contains("`link set nosuchlink up`"), "{e:#}");
    }
}
