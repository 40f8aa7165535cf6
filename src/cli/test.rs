//! `netfence test [--dataplane] PATH...`

use std::path::PathBuf;
use std::sync::Mutex;

use crate::apply::{Kernel, NftKernel};
use crate::dataplane::{Cni, DataplaneBackend};
use crate::policytest::{self, interp::InterpBackend, Backend, TestResult};

#[derive(clap::Args)]
pub struct Args {
    /// Test files, or folders searched for `*.yaml` tests.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Output format: human-readable text, or JSON (one document for the run).
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: super::Output,
    /// Also list the tests that passed.
    #[arg(short, long)]
    pub verbose: bool,
    /// Also prove every verdict with real packets: build network namespaces
    /// shaped like each test's cluster, install each node's compiled program
    /// with real nftables, and probe every check (TCP, UDP, SCTP). Needs
    /// root, `ip` and `nft`; never touches the machine's own ruleset.
    #[arg(long)]
    pub dataplane: bool,
    /// With --dataplane, how pods are wired to their node: `routed` (a
    /// route per pod through its own veth, like Calico), `bridge` (a Linux
    /// bridge per node with br_netfilter on: same-node traffic is bridged)
    /// or `vxlan` (the bridge plus VXLAN between nodes, like Flannel).
    #[arg(long, value_enum, value_name = "CNI", default_value_t = CniArg::Routed, requires = "dataplane")]
    pub cni: CniArg,
    /// Tests run at once (default: 4 with --dataplane, where most time is
    /// spent waiting for denied probes to time out; else 1).
    #[arg(short, long)]
    pub jobs: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CniArg {
    Routed,
    Bridge,
    Vxlan,
}

impl From<CniArg> for Cni {
    fn from(c: CniArg) -> Cni {
        match c {
            CniArg::Routed => Cni::Routed,
            CniArg::Bridge => Cni::Bridge,
            CniArg::Vxlan => Cni::Vxlan,
        }
    }
}

fn backends(dataplane: Option<Cni>) -> Vec<Box<dyn Backend>> {
    // The interpreter is cheap: every run proves the compiled programs agree.
    let mut b: Vec<Box<dyn Backend>> = vec![Box::new(InterpBackend)];
    if let Some(cni) = dataplane {
        let mut dp = DataplaneBackend::new(|cluster, ir, node, ns: &crate::netns::Netns| {
            let program = crate::nft::compile(cluster, ir, node);
            ns.run(|| NftKernel::new().apply(&crate::nft::diff(None, &program)))??;
            Ok(())
        });
        dp.cni = cni;
        b.push(Box::new(dp));
    }
    b
}

pub fn run(args: Args) -> i32 {
    let files = match policytest::collect(&args.paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if files.is_empty() {
        eprintln!("error: no *.yaml tests under {}", args.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
        return 2;
    }
    if args.dataplane {
        if let Err(why) = crate::netns::check_privileges() {
            eprintln!("error: --dataplane: {why}");
            return 2;
        }
    }
    let jobs = args.jobs.unwrap_or(if args.dataplane { 4 } else { 1 }).max(1);
    let queue = Mutex::new(files.iter().enumerate());
    let done: Mutex<Vec<(usize, TestResult)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.min(files.len()) {
            s.spawn(|| {
                let mut backends = backends(args.dataplane.then(|| Cni::from(args.cni)));
                loop {
                    // A statement of its own: the lock is released before the test runs.
                    let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
                    let Some((i, file)) = next else { break };
                    let r = policytest::run_file(file, &mut backends);
                    if let Ok(mut d) = done.lock() {
                        d.push((i, r));
                    }
                }
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_default();
    done.sort_by_key(|(i, _)| *i);
    let mut results: Vec<TestResult> = done.into_iter().map(|(_, r)| r).collect();
    policytest::check_unique_names(&mut results);
    // Once per policy, however many tests share its file.
    let mut seen = std::collections::BTreeSet::new();
    for n in results.iter().flat_map(|r| &r.notices) {
        if seen.insert(n) {
            eprintln!("warning: {n}");
        }
    }
    match args.output {
        super::Output::Json => {
            let (passed, failed, invalid) = policytest::summary(&results);
            let doc = serde_json::json!({
                "tests": results,
                "summary": {"passed": passed, "failed": failed, "invalid": invalid},
            });
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        super::Output::Text => print!("{}", policytest::render_text(&results, args.verbose)),
    }
    policytest::exit_status(&results)
}
