//! `netfence bench`: compile, apply and explain at scale on generated
//! clusters, one table per size (see [`crate::bench`] and docs/benchmarks.md).

use std::time::Duration;

use crate::bench::{self, Options};
use crate::gen::Size;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Sizes to measure, in order: small, medium, large, xlarge (see `netfence gen`).
    #[arg(long, value_delimiter = ',', default_value = "small,medium,large", value_parser = Size::parse)]
    pub sizes: Vec<Size>,
    /// Runs per timed measure; tables give the min and the median.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// A run of a few seconds on a tiny cluster that exercises every stage,
    /// for CI (ignores --sizes and --runs).
    #[arg(long)]
    pub smoke: bool,
    /// Seed of the generated clusters.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Skip the measures that apply into a scratch network namespace (they need root and nft).
    #[arg(long)]
    pub no_kernel: bool,
    /// Also measure the packet path (throughput and new connections/s
    /// between two pods through the node: no ruleset, kube-proxy's NAT
    /// table (the baseline), netfence and a linear rule list beside it),
    /// pushing traffic for this many seconds
    /// per measure.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
    pub packet: Option<f64>,
    /// Also run `netfence agent` (this binary) on the fake API server
    /// holding each cluster, in a scratch network namespace: its memory
    /// after the first sync and the event-to-applied latency of this many
    /// single events (0: skip; --smoke runs 4).
    #[arg(long, value_name = "EVENTS", default_value_t = 200)]
    pub agent: usize,
}

/// Exit 0 when every target that applies passed, 1 when one failed, 2 when
/// the benchmark itself could not run.
pub fn run(args: Args) -> i32 {
    let mut opts = if args.smoke { Options::smoke() } else { Options::for_sizes(&args.sizes, args.runs as usize, args.seed) };
    opts.kernel = !args.no_kernel;
    if let Some(secs) = args.packet.filter(|s| s.is_finite() && *s > 0.0) {
        opts.packet = Some(bench::packet::PacketOptions { duration: Duration::from_secs_f64(secs), runs: opts.runs.min(3) });
    }
    if args.agent > 0 {
        let events = if args.smoke { 4 } else { args.agent };
        match std::env::current_exe() {
            Ok(exe) => opts.agent = Some(bench::agent::AgentOptions { exe, events }),
            Err(e) => {
                eprintln!("netfence bench: cannot find this binary to run the agent: {e}");
                return 2;
            }
        }
    }
    match bench::run(&opts, &mut std::io::stdout().lock()) {
        Ok((true, _)) => 0,
        Ok((false, _)) => 1,
        Err(e) => {
            eprintln!("netfence bench: {e:#}");
            2
        }
    }
}
