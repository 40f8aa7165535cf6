//! `netfence explain -f snap.yaml --from x/a --to y/b --port 80`

use std::path::PathBuf;

use crate::eval::{evaluate, Endpoint, Flow};
use crate::explain;
use crate::model::{Family, Protocol};

#[derive(clap::Args)]
pub struct Args {
    /// Manifest files or folders (cluster snapshot and policies); repeatable.
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// Source endpoint: `ns/pod`, `node/NAME` or an IP address.
    #[arg(long)]
    pub from: String,
    /// Destination endpoint: `ns/pod`, `node/NAME` or an IP address.
    #[arg(long)]
    pub to: String,
    /// Destination port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Protocol: TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP", value_parser = parse_protocol)]
    pub protocol: Protocol,
    /// Only this address family (IPv4 or IPv6); default: every family both endpoints have.
    #[arg(long, value_parser = parse_family)]
    pub family: Option<Family>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: super::Output,
}

pub(super) fn parse_protocol(s: &str) -> Result<Protocol, String> {
    Protocol::parse(&s.to_ascii_uppercase()).ok_or_else(|| format!("unknown protocol {s:?} (expected TCP, UDP or SCTP)"))
}

fn parse_family(s: &str) -> Result<Family, String> {
    match s.to_ascii_lowercase().as_str() {
        "ipv4" | "4" => Ok(Family::IPv4),
        "ipv6" | "6" => Ok(Family::IPv6),
        _ => Err(format!("unknown family {s:?} (expected IPv4 or IPv6)")),
    }
}

/// Exit status: 0 allowed, 1 denied, 2 bad input — so scripts can branch on it.
pub fn run(args: Args) -> i32 {
    let cluster = match super::load(&args.files) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let endpoint = |s: &str, flag: &str| {
        Endpoint::parse(&cluster, s).map_err(|e| format!("--{flag} {s}: {e}"))
    };
    let flow = match (endpoint(&args.from, "from"), endpoint(&args.to, "to")) {
        (Ok(src), Ok(dst)) => Flow { src, dst, protocol: args.protocol, port: args.port, family: args.family },
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    // Only what the two endpoints touch is resolved: milliseconds at any size.
    let verdict = match evaluate(&cluster, &crate::ir::Local::new(&cluster), &flow) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let report = explain::report(&cluster, &flow, &verdict);
    match args.output {
        super::Output::Json => println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default()),
        super::Output::Text => print!("{}", explain::render_text(&report)),
    }
    if report.allowed {
        0
    } else {
        1
    }
}
