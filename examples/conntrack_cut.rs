//! How long cutting connections takes (`--established cut`): a scratch
//! network namespace's conntrack table filled with 1k and 100k entries
//! over netlink, then a policy change that denies a tenth of them: dump,
//! judge, delete. Needs root. See `netfence::bench::conntrack` and
//! docs/benchmarks.md.
//!
//!     cargo run --release --example conntrack_cut [-- SIZES [RUNS]]
//!
//! SIZES is a comma-separated list of entry counts (default 1000,100000),
//! RUNS the runs per measure (default 5).

fn main() {
    let mut args = std::env::args().skip(1);
    let sizes: Vec<usize> = match args.next() {
        Some(s) => match s.split(',').map(|n| n.trim().parse()).collect() {
            Ok(v) => v,
            Err(e) => {
                eprintln!("conntrack_cut: SIZES must be numbers separated by commas: {e}");
                std::process::exit(2);
            }
        },
        None => vec![1_000, 100_000],
    };
    let runs: usize = match args.next().map(|r| r.parse()) {
        None => 5,
        Some(Ok(r)) if r > 0 => r,
        Some(_) => {
            eprintln!("conntrack_cut: RUNS must be a positive number");
            std::process::exit(2);
        }
    };
    if let Err(why) = netfence::netns::check_privileges() {
        eprintln!("conntrack_cut: {why}");
        std::process::exit(2);
    }
    let mut measures = Vec::new();
    for n in sizes {
        match netfence::bench::conntrack::measure(n, runs) {
            Ok(m) => measures.push(m),
            Err(e) => {
                eprintln!("conntrack_cut: {n} entries: {e:#}");
                std::process::exit(1);
            }
        }
    }
    print!("{}", netfence::bench::conntrack::render(&measures));
}
