//! `netfence bench`: compile, apply and explain at scale on generated
//! clusters, one table per size (see [`crate::bench`] and docs/benchmarks.md).

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
}

/// Exit 0 when every target that applies passed, 1 when one failed, 2 when
/// the benchmark itself could not run.
pub fn run(args: Args) -> i32 {
    let mut opts = if args.smoke { Options::smoke() } else { Options::for_sizes(&args.sizes, args.runs as usize, args.seed) };
    opts.kernel = !args.no_kernel;
    match bench::run(&opts, &mut std::io::stdout().lock()) {
        Ok((true, _)) => 0,
        Ok((false, _)) => 1,
        Err(e) => {
            eprintln!("netfence bench: {e:#}");
            2
        }
    }
}
