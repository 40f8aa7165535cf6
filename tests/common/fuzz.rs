//! A small deterministic mutation fuzzer that runs on stable Rust inside
//! `cargo test --release`, for tests/fuzz_inputs.rs.
//!
//! Why not cargo-fuzz or proptest: cargo-fuzz needs nightly and a separate
//! CI job; proptest generates values from strategies and shrinks them, but
//! what finds bugs in a loader is mutating real files (bytes, lines and the
//! YAML tree) and re-emitting them, which neither crate does. What this
//! module adds is small: a seeded PRNG, mutators, a YAML emitter that
//! records where it put every field, and a runner with the oracles every
//! target shares (no panic, no hang, bounded memory), saved inputs and
//! replay.
//!
//! Every case is a pure function of (run seed, target, case number), so a
//! failure is reproducible from its saved input or from its seed and number.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

// ---------------------------------------------------------------- PRNG ----

/// splitmix64: tiny, fast, and the same sequence on every platform forever.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`0` when `n == 0`).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
    pub fn range(&mut self, lo: usize, hi_inclusive: usize) -> usize {
        lo + self.below(hi_inclusive - lo + 1)
    }
    /// True with probability `num/den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The seed of one case: a hash of the run seed, the target and the case
/// number, so targets do not share sequences and any case can be regenerated.
pub fn case_seed(run_seed: u64, target: &str, case: u64) -> u64 {
    let mut h = Rng::new(run_seed ^ case.wrapping_mul(0xA24B_AED4_963E_E407));
    for b in target.bytes() {
        h.0 ^= b as u64;
        h.next_u64();
    }
    h.next_u64()
}

// -------------------------------------------------------- configuration ----

/// What a run does, from the environment (defaults are CI's).
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// Wall-clock budget per target.
    pub secs: f64,
    /// A fixed number of cases per target instead of a time budget.
    pub cases: Option<u64>,
    /// A case taking longer than this is a hang.
    pub deadline: Duration,
    /// Where failing inputs and the case under test are written.
    pub out: PathBuf,
    /// Replay one saved input instead of generating.
    pub replay: Option<PathBuf>,
}

pub const DEFAULT_SEED: u64 = 0x6E65_7466_656E_6365; // "netfence"

impl Config {
    pub fn from_env() -> Config {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let seed = match var("NETFENCE_FUZZ_SEED").as_deref() {
            None => DEFAULT_SEED,
            Some("random") => {
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                t.as_nanos() as u64 ^ std::process::id() as u64
            }
            Some(s) => parse_u64(s).unwrap_or_else(|| panic!("NETFENCE_FUZZ_SEED={s:?}: expected a number or `random`")),
        };
        let secs = var("NETFENCE_FUZZ_SECS").map(|s| s.parse::<f64>().expect("NETFENCE_FUZZ_SECS: seconds")).unwrap_or(10.0);
        let cases = var("NETFENCE_FUZZ_CASES").map(|s| s.parse::<u64>().expect("NETFENCE_FUZZ_CASES: a count"));
        let deadline_ms = var("NETFENCE_FUZZ_DEADLINE_MS").map(|s| s.parse::<u64>().expect("NETFENCE_FUZZ_DEADLINE_MS")).unwrap_or(2000);
        let out = var("NETFENCE_FUZZ_OUT").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz"));
        Config { seed, secs, cases, deadline: Duration::from_millis(deadline_ms), out, replay: var("NETFENCE_FUZZ_REPLAY").map(PathBuf::from) }
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

// ------------------------------------------------------ memory oracle ----

/// The system allocator, counting the bytes each thread holds so the runner
/// can bound the memory one input costs (an alias bomb must be refused, not
/// expanded). Above [`HARD_CAP`] an allocation of a fuzz worker fails,
/// which aborts the process: the input under test is on disk by then.
pub struct CountingAlloc;

pub const HARD_CAP: isize = 1 << 30;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static CAPPED: Cell<bool> = const { Cell::new(false) };
}

fn track(delta: isize) -> bool {
    LIVE.try_with(|l| {
        let now = l.get() + delta;
        if delta > 0 && now > HARD_CAP && CAPPED.try_with(Cell::get).unwrap_or(false) {
            return false;
        }
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
        true
    })
    .unwrap_or(true)
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if !track(l.size() as isize) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if !track(l.size() as isize) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        track(-(l.size() as isize));
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if !track(new as isize - l.size() as isize) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(p, l, new) }
    }
}

/// Bytes this thread allocated (net) at its peak since the last call.
fn reset_peak() -> isize {
    let live = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(live));
    live
}

fn peak() -> isize {
    PEAK.with(Cell::get)
}

// --------------------------------------------------------------- cases ----

/// One input: the name it is loaded under (a path relative to the
/// repository for targets that resolve relative paths), its bytes, and
/// what the generator knows about it (not saved; replays use the general
/// oracles only).
#[derive(Debug, Clone)]
pub struct Case {
    pub path: String,
    pub bytes: Vec<u8>,
    pub expect: Option<Expect>,
}

/// What a generator knows about a document it wrote itself.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Where the emitter put each field: path -> (line, column).
    pub positions: HashMap<String, (usize, usize)>,
    /// The one invalid element put in, or none: the input must then be
    /// accepted.
    pub fault: Option<Fault>,
}

#[derive(Debug, Clone)]
pub struct Fault {
    /// The error's field path must be this path or lie below it.
    pub path: String,
    pub what: String,
}

impl Case {
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes)
    }
}

/// What a target made of an input that broke no oracle.
#[derive(Debug, Clone)]
pub enum Outcome {
    Accepted,
    /// Rejected, with the message (for statistics on kinds of rejection).
    Rejected(String),
    /// Not run, and why (for instance a path that would leave the sandbox).
    Skipped(&'static str),
}

pub type Exec = Arc<dyn Fn(&Case) -> Result<Outcome, String> + Send + Sync>;
pub type Gen = Arc<dyn Fn(&mut Rng) -> Case + Send + Sync>;

#[derive(Debug, Clone)]
pub struct Failure {
    pub case: u64,
    pub kind: String,
    pub message: String,
    pub input: Case,
    pub saved: Option<PathBuf>,
    pub count: usize,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub cases: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub skipped: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub slowest: Duration,
    pub peak_mem: isize,
    /// Rejection messages reduced to their shape, with counts.
    pub kinds: BTreeMap<String, u64>,
    pub failures: Vec<Failure>,
}

impl Stats {
    pub fn summary(&self, target: &str, seed: u64) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "fuzz {target}: seed {seed:#x}: {} cases in {:.1}s ({:.0}/s, {:.1} MB), {} accepted, {} rejected ({} kinds of message), {} skipped; slowest {:?}, peak {:.1} MB; {} failure(s)",
            self.cases,
            secs,
            self.cases as f64 / secs,
            self.bytes as f64 / 1e6,
            self.accepted,
            self.rejected,
            self.kinds.len(),
            self.skipped,
            self.slowest,
            self.peak_mem as f64 / 1e6,
            self.failures.len()
        )
    }
}

/// A rejection message reduced to its shape: quoted values, numbers and the
/// file name dropped, so similar rejections count as one kind.
pub fn shape(message: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    let mut last_digit = false;
    for c in message.chars() {
        if c == '"' {
            quoted = !quoted;
            if quoted {
                out.push_str("\"…\"");
            }
            continue;
        }
        if quoted {
            continue;
        }
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('N');
            }
            last_digit = true;
            continue;
        }
        last_digit = false;
        out.push(c);
    }
    let s: String = out.chars().take(90).collect();
    match s.split_once(": ") {
        // Drop `file:N:N` so the shape is about the message.
        Some((head, rest)) if head.contains(':') || head.contains('/') || head.ends_with(".yaml") => rest.to_string(),
        _ => s,
    }
}

// ------------------------------------------------------------ panics ----

thread_local! {
    static PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Panics in fuzz workers are recorded (message and location) instead of
/// printed; everyone else's go to the default hook.
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let worker = std::thread::current().name().is_some_and(|n| n.starts_with("fuzz-"));
            if !worker {
                return default(info);
            }
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(non-string panic)".into());
            let loc = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            PANIC.with(|p| *p.borrow_mut() = Some(format!("panicked at {loc}: {msg}")));
        }));
    });
}

/// Run `exec` on one case, turning a panic or an oversized memory peak
/// into an oracle failure `(kind, message)`.
fn run_one(exec: &Exec, case: &Case) -> (Result<Outcome, (String, String)>, isize) {
    let base = reset_peak();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| exec(case)));
    let used = peak() - base;
    let r = match r {
        Ok(Ok(o)) => {
            let limit = (64 << 20) + 400 * case.bytes.len() as isize;
            if used > limit {
                Err(("memory".to_string(), format!("memory | peak heap {:.1} MB for a {} byte input (limit {:.1} MB)", used as f64 / 1e6, case.bytes.len(), limit as f64 / 1e6)))
            } else {
                Ok(o)
            }
        }
        Ok(Err(violation)) => {
            // `kind | detail`: the kind identifies the bug (for grouping and
            // shrinking), the detail is for people.
            let kind = violation.split(" | ").next().unwrap_or("").to_string();
            Err((kind, violation))
        }
        Err(_) => {
            let msg = PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| "panicked".into());
            // The location identifies the bug; the message may hold input.
            let kind = format!("panic {}", msg.split(':').take(3).collect::<Vec<_>>().join(":"));
            Err((kind, msg))
        }
    };
    (r, used)
}

// ------------------------------------------------------------- runner ----

struct Shared {
    stop: AtomicBool,
    /// The case under test and when it started.
    current: Mutex<Option<(u64, Instant)>>,
    stats: Mutex<Stats>,
}

/// Saved inputs start with this header line; replay strips it.
pub fn header(target: &str, path: &str) -> String {
    format!("#fuzz {target} {path}\n")
}

pub fn parse_saved(bytes: &[u8]) -> Option<(String, String, Vec<u8>)> {
    let nl = bytes.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&bytes[..nl]).ok()?;
    let mut parts = head.strip_prefix("#fuzz ")?.splitn(2, ' ');
    let target = parts.next()?.to_string();
    let path = parts.next().unwrap_or("").to_string();
    Some((target, path, bytes[nl + 1..].to_vec()))
}

fn write_input(path: &Path, target: &str, case: &Case) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(header(target, &case.path).as_bytes())?;
    f.write_all(&case.bytes)
}

/// Fuzz one target within the configured budget: every case on a worker
/// thread, a hang (a case over the deadline) reported with its input.
pub fn run(target: &'static str, cfg: &Config, gen: Gen, exec: Exec) -> Stats {
    install_panic_hook();
    std::fs::create_dir_all(&cfg.out).expect("create the fuzz output folder");
    let current_file = cfg.out.join(format!("{target}.current"));
    // Straight to stderr, past the test harness's capture: after an abort
    // (stack overflow, the memory cap) this line is what tells how to replay.
    let _ = writeln!(
        std::io::stderr(),
        "fuzz {target}: seed {:#x}; the case under test is written to {} (replay: NETFENCE_FUZZ_REPLAY=<file>)",
        cfg.seed,
        current_file.display()
    );
    let shared = Arc::new(Shared { stop: AtomicBool::new(false), current: Mutex::new(None), stats: Mutex::new(Stats::default()) });
    let start = Instant::now();
    let budget = Duration::from_secs_f64(cfg.secs);
    let worker = {
        let shared = shared.clone();
        let (cfg, current_file) = (cfg.clone(), current_file.clone());
        std::thread::Builder::new()
            .name(format!("fuzz-{target}"))
            .spawn(move || {
                CAPPED.with(|c| c.set(true));
                let mut file = std::fs::File::create(&current_file).ok();
                let mut case_no = 0u64;
                while !shared.stop.load(Ordering::Relaxed) {
                    if cfg.cases.is_some_and(|n| case_no >= n) || (cfg.cases.is_none() && start.elapsed() >= budget) {
                        break;
                    }
                    let mut rng = Rng::new(case_seed(cfg.seed, target, case_no));
                    let case = gen(&mut rng);
                    if let Some(f) = file.as_mut() {
                        use std::io::Seek;
                        let _ = f.set_len(0).and_then(|_| f.rewind());
                        let _ = f.write_all(header(target, &case.path).as_bytes()).and_then(|_| f.write_all(&case.bytes));
                    }
                    *shared.current.lock().unwrap() = Some((case_no, Instant::now()));
                    let t = Instant::now();
                    let (r, used) = run_one(&exec, &case);
                    let took = t.elapsed();
                    *shared.current.lock().unwrap() = None;
                    let mut s = shared.stats.lock().unwrap();
                    s.cases += 1;
                    s.bytes += case.bytes.len() as u64;
                    s.slowest = s.slowest.max(took);
                    s.peak_mem = s.peak_mem.max(used);
                    match r {
                        Ok(Outcome::Accepted) => s.accepted += 1,
                        Ok(Outcome::Rejected(m)) => {
                            s.rejected += 1;
                            *s.kinds.entry(shape(&m)).or_default() += 1;
                        }
                        Ok(Outcome::Skipped(why)) => {
                            s.skipped += 1;
                            *s.kinds.entry(format!("(skipped: {why})")).or_default() += 1;
                        }
                        Err((kind, message)) => record(&mut s, case_no, kind, message, case),
                    }
                    drop(s);
                    case_no += 1;
                }
            })
            .expect("spawn fuzz worker")
    };
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if worker.is_finished() {
            let _ = worker.join();
            break;
        }
        let hung = shared.current.lock().unwrap().filter(|(_, t)| t.elapsed() > cfg.deadline);
        if let Some((case_no, _)) = hung {
            // The worker cannot be stopped; it is left behind and the test fails.
            shared.stop.store(true, Ordering::Relaxed);
            let bytes = std::fs::read(&current_file).ok().and_then(|b| parse_saved(&b)).map(|(_, p, b)| (p, b));
            let (path, bytes) = bytes.unwrap_or_default();
            let case = Case { path, bytes, expect: None };
            let mut s = shared.stats.lock().unwrap();
            record(&mut s, case_no, "hang".into(), format!("hang | case {case_no} still running after {:?}", cfg.deadline), case);
            break;
        }
    }
    let mut stats = std::mem::take(&mut *shared.stats.lock().unwrap());
    stats.elapsed = start.elapsed();
    stats
}

fn record(s: &mut Stats, case: u64, kind: String, message: String, input: Case) {
    if let Some(f) = s.failures.iter_mut().find(|f| f.kind == kind) {
        f.count += 1;
        return;
    }
    if s.failures.len() < 20 {
        s.failures.push(Failure { case, kind, message, input, saved: None, count: 1 });
    }
}

/// Shrink a failing input (lines, then bytes) while it fails the same way,
/// within `budget`. Hangs are not shrunk: every attempt could take the
/// whole deadline.
pub fn minimize(exec: &Exec, f: &Failure, budget: Duration) -> Case {
    if f.kind == "hang" || f.kind == "memory" {
        return f.input.clone();
    }
    let exec = exec.clone();
    let (kind, input) = (f.kind.clone(), f.input.clone());
    let worker = std::thread::Builder::new().name("fuzz-minimize".into()).spawn(move || {
        let start = Instant::now();
        let fails = |c: &Case| matches!(run_one(&exec, c).0, Err((k, _)) if k == kind);
        // The generator's knowledge does not survive edits.
        let mut best = Case { expect: None, ..input.clone() };
        if !fails(&best) {
            return input;
        }
        for unit_is_line in [true, false] {
            let units = |b: &[u8]| -> Vec<(usize, usize)> {
                if unit_is_line {
                    let mut v = Vec::new();
                    let mut s = 0;
                    for (i, &c) in b.iter().enumerate() {
                        if c == b'\n' {
                            v.push((s, i + 1));
                            s = i + 1;
                        }
                    }
                    if s < b.len() {
                        v.push((s, b.len()));
                    }
                    v
                } else {
                    (0..b.len()).map(|i| (i, i + 1)).collect()
                }
            };
            if !unit_is_line && best.bytes.len() > 4096 {
                break;
            }
            let mut chunk = units(&best.bytes).len() / 2;
            while chunk >= 1 && start.elapsed() < budget {
                let mut i = 0;
                let mut progressed = false;
                loop {
                    let u = units(&best.bytes);
                    if i >= u.len() || start.elapsed() >= budget {
                        break;
                    }
                    let end = (i + chunk).min(u.len());
                    let (a, b) = (u[i].0, u[end - 1].1);
                    let mut bytes = best.bytes[..a].to_vec();
                    bytes.extend_from_slice(&best.bytes[b..]);
                    let cand = Case { bytes, ..best.clone() };
                    if fails(&cand) {
                        best = cand;
                        progressed = true;
                    } else {
                        i += chunk;
                    }
                }
                if !progressed {
                    chunk /= 2;
                }
            }
        }
        best
    });
    let Ok(worker) = worker else { return f.input.clone() };
    let t = Instant::now();
    while !worker.is_finished() {
        if t.elapsed() > budget + Duration::from_secs(5) {
            return f.input.clone();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    worker.join().unwrap_or_else(|_| f.input.clone())
}

/// Shrink and save every failure; the report names the files.
pub fn save_failures(target: &str, cfg: &Config, exec: &Exec, stats: &mut Stats) -> String {
    let mut report = String::new();
    for f in &mut stats.failures {
        let small = minimize(exec, f, Duration::from_secs(10));
        let ext = Path::new(&f.input.path).extension().and_then(|e| e.to_str()).unwrap_or("yaml").to_string();
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for b in f.kind.bytes() {
            hash = (hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        let file = cfg.out.join(format!("{target}-{hash:016x}.{ext}"));
        let saved = write_input(&file, target, &small).is_ok();
        f.saved = saved.then(|| file.clone());
        let preview: String = small.text().chars().take(1500).collect();
        report.push_str(&format!(
            "\n--- {target} failure ({} case(s) like it), case {} of seed {:#x}:\n{}\ninput ({} bytes, shrunk from {}) saved as {}\n  replay: NETFENCE_FUZZ_REPLAY={} cargo test --release --test fuzz_inputs\n{preview}\n",
            f.count,
            f.case,
            cfg.seed,
            f.message,
            small.bytes.len(),
            f.input.bytes.len(),
            file.display(),
            file.display()
        ));
    }
    report
}

// ----------------------------------------------------- YAML emission ----

/// How to write a document tree back as YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Block style, every scalar on its own line: positions are recorded.
    Block,
    /// Block style with small containers in flow style and repeated
    /// subtrees written once with an anchor and then as aliases.
    Mixed,
    /// JSON (a subset of YAML), pretty-printed.
    Json,
}

/// A YAML text and where each field path starts in it (Block style only).
#[derive(Debug, Default)]
pub struct Emitted {
    pub text: String,
    pub positions: HashMap<String, (usize, usize)>,
}

pub fn emit(docs: &[Value], style: Style, rng: &mut Rng) -> Emitted {
    let mut e = Emitter { out: String::new(), line: 1, positions: HashMap::new(), style, anchors: HashMap::new(), next_anchor: 0, repeated: HashMap::new() };
    for (i, d) in docs.iter().enumerate() {
        if style == Style::Json {
            if i > 0 {
                e.out.push_str("---\n");
            }
            e.out.push_str(&serde_json::to_string_pretty(d).unwrap_or_default());
            e.out.push('\n');
            continue;
        }
        if i > 0 || rng.chance(1, 4) {
            e.write("---\n");
        }
        if style == Style::Mixed {
            e.repeated.clear();
            e.anchors.clear();
            count_subtrees(d, &mut e.repeated);
        }
        e.node("", d, 0, false, rng);
    }
    Emitted { text: e.out, positions: e.positions }
}

fn count_subtrees(v: &Value, counts: &mut HashMap<String, usize>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            *counts.entry(v.to_string()).or_default() += 1;
            m.values().for_each(|x| count_subtrees(x, counts));
        }
        Value::Array(a) if !a.is_empty() => {
            *counts.entry(v.to_string()).or_default() += 1;
            a.iter().for_each(|x| count_subtrees(x, counts));
        }
        _ => {}
    }
}

enum Anchor {
    None,
    Alias,
    Anchored,
}

struct Emitter {
    out: String,
    line: usize,
    positions: HashMap<String, (usize, usize)>,
    style: Style,
    repeated: HashMap<String, usize>,
    anchors: HashMap<String, usize>,
    next_anchor: usize,
}

pub fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Emitter {
    fn write(&mut self, s: &str) {
        self.line += s.matches('\n').count();
        self.out.push_str(s);
    }
    /// 1-based column of the cursor, in characters as the parser counts.
    fn col(&self) -> usize {
        let start = self.out.rfind('\n').map_or(0, |i| i + 1);
        self.out[start..].chars().count() + 1
    }
    fn mark(&mut self, path: &str) {
        let at = (self.line, self.col());
        self.positions.entry(path.to_string()).or_insert(at);
    }
    fn is_leaf(v: &Value) -> bool {
        match v {
            Value::Object(m) => m.is_empty(),
            Value::Array(a) => a.is_empty(),
            _ => true,
        }
    }
    fn flow(&self, v: &Value, rng: &mut Rng) -> bool {
        self.style == Style::Mixed && v.to_string().len() < 60 && rng.chance(1, 2)
    }

    /// An anchor or alias for a repeated subtree (Mixed style).
    fn anchor(&mut self, v: &Value) -> Anchor {
        if self.style != Style::Mixed || Self::is_leaf(v) {
            return Anchor::None;
        }
        let key = v.to_string();
        if self.repeated.get(&key).copied().unwrap_or(0) < 2 {
            return Anchor::None;
        }
        if let Some(id) = self.anchors.get(&key) {
            let s = format!("*a{id}\n");
            self.write(&s);
            return Anchor::Alias;
        }
        self.next_anchor += 1;
        self.anchors.insert(key, self.next_anchor);
        // On a line of its own: `&a k: v` would anchor the key, not the map.
        let s = format!("&a{}\n", self.next_anchor);
        self.write(&s);
        Anchor::Anchored
    }

    /// Write `v` at `indent`. `inline`: the cursor already sits where the
    /// node's first line starts (after `- `).
    fn node(&mut self, path: &str, v: &Value, indent: usize, inline: bool, rng: &mut Rng) {
        if Self::is_leaf(v) || self.flow(v, rng) {
            if !inline {
                self.write(&" ".repeat(indent));
            }
            self.mark(path);
            let s = flow_text(v);
            self.write(&s);
            self.write("\n");
            return;
        }
        match v {
            Value::Object(m) => {
                for (i, (k, x)) in m.iter().enumerate() {
                    if !(i == 0 && inline) {
                        self.write(&" ".repeat(indent));
                    }
                    if i == 0 {
                        self.mark(path);
                    }
                    let p = join_key(path, k);
                    self.mark(&p);
                    let key = scalar_text(&Value::String(k.clone()));
                    self.write(&key);
                    self.write(":");
                    self.value(&p, x, indent, rng);
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    if !(i == 0 && inline) {
                        self.write(&" ".repeat(indent));
                    }
                    if i == 0 {
                        self.mark(path);
                    }
                    self.write("- ");
                    let p = format!("{path}[{i}]");
                    match self.anchor(x) {
                        Anchor::Alias => {}
                        Anchor::Anchored => self.node(&p, x, indent + 2, false, rng),
                        Anchor::None => self.node(&p, x, indent + 2, true, rng),
                    }
                }
            }
            _ => unreachable!("leaves are handled above"),
        }
    }

    /// The value of a mapping entry, after `key:`.
    fn value(&mut self, path: &str, v: &Value, indent: usize, rng: &mut Rng) {
        self.write(" ");
        match self.anchor(v) {
            Anchor::Alias => return,
            Anchor::Anchored => return self.node(path, v, indent + 2, false, rng),
            Anchor::None => {}
        }
        if Self::is_leaf(v) || self.flow(v, rng) {
            let s = flow_text(v);
            self.write(&s);
            self.write("\n");
            return;
        }
        self.write("\n");
        self.node(path, v, indent + 2, false, rng);
    }
}

/// A node in flow style (`{a: 1, b: [x]}`), scalars quoted as needed.
pub fn flow_text(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let items: Vec<String> = m.iter().map(|(k, x)| format!("{}: {}", scalar_text(&Value::String(k.clone())), flow_text(x))).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(flow_text).collect::<Vec<_>>().join(", ")),
        s => scalar_text(s),
    }
}

/// A scalar as YAML: plain when that reads back as the same string, else
/// double-quoted with every non-printable character escaped.
pub fn scalar_text(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let plain = s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
                && !matches!(s.to_ascii_lowercase().as_str(), "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n");
            if plain {
                return s.clone();
            }
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\t' => out.push_str("\\t"),
                    '\r' => out.push_str("\\r"),
                    '\0' => out.push_str("\\0"),
                    c if (c as u32) < 0x20 || c == '\u{7f}' || ('\u{80}'..='\u{9f}').contains(&c) || matches!(c, '\u{feff}' | '\u{fffe}' | '\u{ffff}') => {
                        out.push_str(&format!("\\u{:04x}", c as u32))
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        other => flow_text(other),
    }
}

// ----------------------------------------------------------- mutators ----

/// Bytes that mean something to YAML, JSON or our fields.
const INTERESTING_BYTES: &[u8] = b"\0\t\n\r :-{}[],&*!|>'\"%@`#?~/.0123456789xX\x7f\xff\xc3\xa9";

/// Tokens worth inserting whole.
const TOKENS: &[&str] = &[
    "&a ", "*a", "<<: *a", "---\n", "...\n", "!!str ", "!!int ", "!!binary ", "? ", "- ", "{", "}", "[", "]", ": ", "~", "null",
    "-1", "0", "65535", "65536", "2147483648", "99999999999999999999", "1e400", "-0", ".nan", ".inf", "0x1F", "0o17", "\u{feff}",
    "\"", "'", "\\", "#", "%YAML 1.2\n", "%TAG ! tag:x,2000:\n", "\t", "\r\n", "é", "\u{202e}", "\u{0}", "/33", "/129", "::ffff:",
    "kind: List\nitems:\n", "kind: ", "apiVersion: v1\n", "TCP", "UDP", "SCTP", "In", "NotIn", "Exists", "DoesNotExist",
];

/// One byte- or line-level mutation.
pub fn mutate_bytes(b: &mut Vec<u8>, other: &[u8], rng: &mut Rng) {
    let len = b.len();
    let at = |rng: &mut Rng| rng.below(len + 1);
    match rng.below(12) {
        0 if len > 0 => {
            let i = rng.below(len);
            b[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            b[i] = *rng.pick(INTERESTING_BYTES);
        }
        2 => {
            let i = at(rng);
            let n = rng.range(1, 4);
            for _ in 0..n {
                b.insert(i, *rng.pick(INTERESTING_BYTES));
            }
        }
        3 if len > 0 => {
            let i = rng.below(len);
            let n = rng.range(1, 16.min(len - i));
            b.drain(i..i + n);
        }
        4 => {
            let i = at(rng);
            let t = rng.pick(TOKENS).as_bytes().to_vec();
            b.splice(i..i, t);
        }
        5 if len > 0 => {
            // Duplicate a range (repeats keys, list items, documents).
            let i = rng.below(len);
            let n = rng.range(1, 200.min(len - i));
            let chunk = b[i..i + n].to_vec();
            let j = at(rng);
            b.splice(j..j, chunk);
        }
        6 if !other.is_empty() => {
            // Splice: a prefix of this input and a suffix of another, at line starts.
            let cut_a = line_start(b, at(rng));
            let cut_b = line_start(other, rng.below(other.len() + 1));
            b.truncate(cut_a);
            b.extend_from_slice(&other[cut_b..]);
        }
        7 => {
            let lines = line_spans(b);
            if let Some(&(s, e)) = lines.get(rng.below(lines.len().max(1))) {
                match rng.below(4) {
                    0 => {
                        b.drain(s..e);
                    }
                    1 => {
                        let l = b[s..e].to_vec();
                        b.splice(s..s, l);
                    }
                    2 => {
                        // Re-indent a line (also with a tab).
                        let ins: &[u8] = *rng.pick(&[&b" "[..], &b"  "[..], &b"\t"[..], &b"    "[..]]);
                        b.splice(s..s, ins.iter().copied());
                    }
                    _ => {
                        let n = b[s..e].iter().take_while(|&&c| c == b' ').count().min(rng.range(1, 2));
                        b.drain(s..s + n);
                    }
                }
            }
        }
        8 => {
            let lines = line_spans(b);
            if lines.len() >= 2 {
                let (i, j) = (rng.below(lines.len()), rng.below(lines.len()));
                let (x, y) = (lines[i.min(j)], lines[i.max(j)]);
                if x != y {
                    let mut out = b[..x.0].to_vec();
                    out.extend_from_slice(&b[y.0..y.1]);
                    out.extend_from_slice(&b[x.1..y.0]);
                    out.extend_from_slice(&b[x.0..x.1]);
                    out.extend_from_slice(&b[y.1..]);
                    *b = out;
                }
            }
        }
        9 if len > 0 => {
            // Replace a run of digits with a hostile number.
            let i = rng.below(len);
            if let Some(s) = (i..len).find(|&k| b[k].is_ascii_digit()) {
                let e = (s..len).find(|&k| !b[k].is_ascii_digit()).unwrap_or(len);
                let n = *rng.pick(&["0", "-1", "65536", "4294967296", "2147483647", "1e9", "80.5", "999999999999999999999999"]);
                b.splice(s..e, n.bytes());
            }
        }
        10 if len > 0 => {
            // Stretch a token: a long run of one byte.
            let i = rng.below(len);
            let c = b[i];
            let n = *rng.pick(&[64usize, 300, 5000]);
            b.splice(i..i, std::iter::repeat_n(c, n));
        }
        _ => {
            let i = at(rng);
            let c = char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('\u{fffd}');
            let mut buf = [0u8; 4];
            b.splice(i..i, c.encode_utf8(&mut buf).bytes());
        }
    }
}

fn line_start(b: &[u8], i: usize) -> usize {
    b[..i.min(b.len())].iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1)
}

fn line_spans(b: &[u8]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut s = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b'\n' {
            v.push((s, i + 1));
            s = i + 1;
        }
    }
    if s < b.len() {
        v.push((s, b.len()));
    }
    v
}

/// Scalars that break assumptions.
pub fn hostile_scalar(rng: &mut Rng) -> Value {
    use serde_json::json;
    match rng.below(24) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(65536),
        3 => json!(2147483648u64),
        4 => json!(-2147483649i64),
        5 => json!(u64::MAX),
        6 => json!(i64::MIN),
        7 => json!(80.5),
        8 => json!(1e300),
        9 => json!(""),
        10 => json!(" "),
        11 => Value::String("x".repeat(*rng.pick(&[64, 254, 10_000, 100_000]))),
        12 => json!("ünïcødé-ﬁ-😀-\u{202e}rtl"),
        13 => json!("ctl\u{1}\u{7}\u{1b}[31m"),
        14 => json!("nul\u{0}byte"),
        15 => json!("tab\there\nnewline"),
        16 => json!(null),
        17 => json!(true),
        18 => json!([]),
        19 => json!({}),
        20 => json!("80"),
        21 => json!("a\"quote'and\\back"),
        22 => json!("-"),
        _ => json!("Ingress"),
    }
}

/// Field names of the objects we read: what a structural mutation inserts.
pub const FIELD_NAMES: &[&str] = &[
    "apiVersion", "kind", "metadata", "name", "namespace", "labels", "spec", "status", "podSelector", "namespaceSelector", "ingress",
    "egress", "from", "to", "ports", "port", "endPort", "protocol", "ipBlock", "cidr", "except", "matchLabels", "matchExpressions", "key",
    "operator", "values", "policyTypes", "podIP", "podIPs", "ip", "phase", "containers", "containerPort", "nodeName", "hostNetwork",
    "addresses", "type", "address", "podCIDR", "podCIDRs", "items", "expect", "table", "matrix", "verdict", "family", "cluster",
    "resources", "objects", "description", "<<", "",
];

/// A path to a node: keys and indices.
#[derive(Debug, Clone)]
pub enum Seg {
    Key(String),
    Idx(usize),
}

pub fn all_paths(v: &Value) -> Vec<Vec<Seg>> {
    fn walk(v: &Value, cur: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
        out.push(cur.clone());
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    cur.push(Seg::Key(k.clone()));
                    walk(x, cur, out);
                    cur.pop();
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    cur.push(Seg::Idx(i));
                    walk(x, cur, out);
                    cur.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

pub fn get_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = v;
    for s in path {
        cur = match (s, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (Seg::Idx(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Every subtree of the corpus, for transplanting.
#[derive(Debug, Default)]
pub struct Pool {
    pub nodes: Vec<Value>,
}

impl Pool {
    pub fn add(&mut self, v: &Value) {
        for p in all_paths(v) {
            let mut c = v.clone();
            if let Some(n) = get_mut(&mut c, &p) {
                if n.to_string().len() < 2000 {
                    self.nodes.push(n.clone());
                }
            }
        }
    }
}

/// One structure-aware mutation of a document tree.
pub fn mutate_tree(doc: &mut Value, pool: &Pool, rng: &mut Rng) {
    let paths = all_paths(doc);
    let path = rng.pick(&paths).clone();
    let transplant = |rng: &mut Rng| if pool.nodes.is_empty() { hostile_scalar(rng) } else { rng.pick(&pool.nodes).clone() };
    match rng.below(11) {
        0 | 1 => {
            let v = hostile_scalar(rng);
            if let Some(n) = get_mut(doc, &path) {
                *n = v;
            }
        }
        2 => {
            let v = transplant(rng);
            if let Some(n) = get_mut(doc, &path) {
                *n = v;
            }
        }
        3 => {
            // Remove the node from its parent.
            if let Some((last, parent)) = path.split_last() {
                match (last, get_mut(doc, parent)) {
                    (Seg::Key(k), Some(Value::Object(m))) => {
                        m.remove(k);
                    }
                    (Seg::Idx(i), Some(Value::Array(a))) => {
                        a.remove(*i);
                    }
                    _ => {}
                }
            }
        }
        4 => {
            // Duplicate within its parent list, or copy it under another key.
            if let Some((last, parent)) = path.split_last() {
                let copy = get_mut(doc, &path).cloned().unwrap_or(Value::Null);
                let times = *rng.pick(&[1usize, 1, 2, 50]);
                match (last, get_mut(doc, parent)) {
                    (Seg::Idx(i), Some(Value::Array(a))) => {
                        for _ in 0..times {
                            a.insert(*i, copy.clone());
                        }
                    }
                    (Seg::Key(_), Some(Value::Object(m))) => {
                        m.insert(rng.pick(FIELD_NAMES).to_string(), copy);
                    }
                    _ => {}
                }
            }
        }
        5 => {
            let k = rng.pick(FIELD_NAMES).to_string();
            let v = if rng.chance(1, 2) { hostile_scalar(rng) } else { transplant(rng) };
            if let Some(Value::Object(m)) = get_mut(doc, &path) {
                m.insert(k, v);
            }
        }
        6 => {
            // Change the shape: wrap in a list or a map, or unwrap.
            if let Some(n) = get_mut(doc, &path) {
                let old = n.take();
                *n = match (rng.below(3), old) {
                    (0, o) => Value::Array(vec![o]),
                    (1, o) => Value::Object(Map::from_iter([(rng.pick(FIELD_NAMES).to_string(), o)])),
                    (_, Value::Array(mut a)) if !a.is_empty() => a.swap_remove(0),
                    (_, Value::Object(m)) => m.into_iter().next().map(|(_, v)| v).unwrap_or(Value::Null),
                    (_, o) => o,
                };
            }
        }
        7 => {
            // Nesting near and past any sane depth.
            let depth = *rng.pick(&[20usize, 100, 250, 260, 600]);
            if let Some(n) = get_mut(doc, &path) {
                let mut v = n.take();
                for i in 0..depth {
                    v = if i % 2 == 0 { Value::Array(vec![v]) } else { Value::Object(Map::from_iter([("n".to_string(), v)])) };
                }
                *n = v;
            }
        }
        8 => {
            if let Some(Value::String(s)) = get_mut(doc, &path) {
                mutate_string(s, rng);
            } else if let Some(Value::Number(n)) = get_mut(doc, &path) {
                let x = n.as_i64().unwrap_or(0);
                let y: i64 = *rng.pick(&[x + 1, x - 1, -x, x * 65536, 0, i32::MAX as i64 + 1, x.wrapping_mul(1 << 40)]);
                *n = y.into();
            }
        }
        9 => {
            // A number as a string or the other way round.
            if let Some(n) = get_mut(doc, &path) {
                *n = match n.take() {
                    Value::Number(x) => Value::String(x.to_string()),
                    Value::String(s) => s.parse::<i64>().map(Value::from).unwrap_or(Value::String(s)),
                    o => o,
                };
            }
        }
        _ => {
            // Swap two subtrees.
            let other = rng.pick(&paths).clone();
            let a = get_mut(doc, &path).cloned();
            let b = get_mut(doc, &other).cloned();
            if let (Some(a), Some(b)) = (a, b) {
                if let Some(n) = get_mut(doc, &path) {
                    *n = b;
                }
                if let Some(n) = get_mut(doc, &other) {
                    *n = a;
                }
            }
        }
    }
}

pub fn mutate_string(s: &mut String, rng: &mut Rng) {
    match rng.below(8) {
        0 => *s = s.to_uppercase(),
        1 => s.push_str(*rng.pick(&["_", "-", ".", "/x", " ", "\u{0}", "é", "--", "/"])),
        2 => {
            let n = s.chars().count();
            *s = s.chars().take(rng.below(n + 1)).collect();
        }
        3 => *s = s.repeat(*rng.pick(&[2usize, 10, 70])),
        4 => s.insert_str(0, *rng.pick(&["-", ".", "_", "a/", "/", "x.y/", "UPPER"])),
        5 => {
            let chars: Vec<char> = s.chars().collect();
            if !chars.is_empty() {
                let i = rng.below(chars.len());
                let c = *rng.pick(&['.', '-', '_', '/', ':', '"', '\\', 'A', '0', ' ', '\t', '😀']);
                *s = chars[..i].iter().chain(std::iter::once(&c)).chain(&chars[i + 1..]).collect();
            }
        }
        6 => s.clear(),
        _ => *s = format!("{s}/{}", rng.range(0, 140)),
    }
}

// ----------------------------------------------------- hostile texts ----

/// YAML that expands: `levels` anchors, each a list of `fanout` aliases to
/// the one before ("billion laughs" with 9 × 10).
pub fn alias_bomb(levels: usize, fanout: usize, as_map: bool) -> String {
    let mut s = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: bomb}\n");
    s.push_str("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..=levels {
        let refs: Vec<String> = (0..fanout).map(|k| if as_map { format!("k{k}: *l{}", i - 1) } else { format!("*l{}", i - 1) }).collect();
        let (open, close) = if as_map { ('{', '}') } else { ('[', ']') };
        s.push_str(&format!("l{i}: &l{i} {open}{}{close}\n", refs.join(", ")));
    }
    s
}

/// A document nested `depth` levels deep in block style (`- - - ... x`),
/// block mappings, or flow style.
pub fn deep_nesting(depth: usize, kind: usize) -> String {
    let head = "apiVersion: v1\nkind: Namespace\nmetadata: {name: deep}\nextra:\n";
    match kind % 3 {
        0 => format!("{head}{}x\n", "- ".repeat(depth)),
        1 => {
            // Indentation grows with depth: past a few thousand levels
            // the text itself gets huge (depth²/2 bytes).
            let mut s = head.to_string();
            for i in 0..depth.min(3000) {
                s.push_str(&" ".repeat(i + 1));
                s.push_str("k:\n");
            }
            s
        }
        _ => format!("{head}  {}{}\n", "[".repeat(depth), "]".repeat(depth)),
    }
}
