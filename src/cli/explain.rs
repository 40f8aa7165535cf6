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
    /// Destination endpoint: `ns/pod`, `node/NAME`, an IP address, or
    /// `svc/NS/NAME` (a Service's ClusterIP: one report per backend). A
    /// node at a nodePort of a NodePort/LoadBalancer Service is NodePort
    /// traffic, explained per backend too.
    #[arg(long)]
    pub to: String,
    /// Destination port (through a Service: the Service port, or the nodePort).
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
    if let Some(code) = through_service(&cluster, &args) {
        return code;
    }
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

/// `--to svc/NS/NAME`, or a node at a nodePort: one report per backend
/// (per family), each starting with kube-proxy's translation. `None` when
/// the flow goes through no Service. Text: the reports one after the
/// other; JSON: an array of reports (a plain flow's JSON is one report).
fn through_service(cluster: &crate::model::Cluster, args: &Args) -> Option<i32> {
    use crate::policytest::service::{self, Field, Target};
    let fail = |e: String| {
        eprintln!("error: {e}");
        Some(2)
    };
    let target = match service::parse_service(cluster, &args.to) {
        Some(Ok(svc)) => (Target::ClusterIp(svc), None),
        Some(Err(e)) => return fail(format!("--to {}: {e}", args.to)),
        None => {
            let dst = Endpoint::parse(cluster, &args.to).ok()?;
            (service::node_port_target(cluster, &dst, args.protocol, args.port)?, Some(dst))
        }
    };
    let src = match Endpoint::parse(cluster, &args.from) {
        Ok(s) => s,
        Err(e) => return fail(format!("--from {}: {e}", args.from)),
    };
    let checks = match service::expand(cluster, &src, target.1.as_ref(), target.0, args.protocol, args.port, args.family) {
        Ok(c) => c,
        Err(e) => {
            let flag = match e.field {
                Field::From => format!("--from {}", args.from),
                Field::To => format!("--to {}", args.to),
                Field::Port => format!("--port {}", args.port),
                Field::Family => "--family".to_string(),
            };
            return fail(format!("{flag}: {}", e.message));
        }
    };
    // Only what the flows' endpoints touch is resolved.
    let local = crate::ir::Local::new(cluster);
    let reports: Vec<explain::Report> = checks
        .iter()
        .map(|t| service::explain(cluster, &t.flow, &t.via, &service::evaluate(cluster, &local, &t.flow, &t.via, t.family)))
        .collect();
    match args.output {
        super::Output::Json => println!("{}", serde_json::to_string_pretty(&reports).unwrap_or_default()),
        super::Output::Text => {
            let text: Vec<String> = reports.iter().map(explain::render_text).collect();
            print!("{}", text.join("\n"));
        }
    }
    Some(if reports.iter().all(|r| r.allowed) { 0 } else { 1 })
}
