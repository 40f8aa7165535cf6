//! `netfence compile -f cluster.yaml [-f policies/] --node NAME [-o nft|json]`
//!
//! Prints the nftables program the agent on NAME would install: the
//! `nft -f` script (for people and review), or the libnftables JSON that is
//! actually applied.

use std::path::PathBuf;

use crate::nft;

#[derive(clap::Args)]
pub struct Args {
    /// Manifest files or folders (cluster snapshot and policies); repeatable.
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// The node to compile for (its pods, InternalIPs and pod CIDRs).
    #[arg(long)]
    pub node: String,
    /// Output format: the `nft -f` script, or the JSON `nft -j -f` reads.
    #[arg(short, long, value_enum, default_value = "nft")]
    pub output: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Nft,
    Json,
}

/// Exit status: 0 printed, 2 bad input (unreadable manifests, unknown node).
pub fn run(args: Args) -> i32 {
    let cluster = match super::load(&args.files) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !cluster.nodes.contains_key(&args.node) {
        let known: Vec<&str> = cluster.nodes.keys().map(String::as_str).collect();
        let known = if known.is_empty() { "none: the manifests hold no Node".to_string() } else { known.join(", ") };
        eprintln!("error: --node {}: no such node in the manifests (nodes: {known})", args.node);
        return 2;
    }
    let ir = crate::ir::resolve(&cluster);
    let program = nft::compile(&cluster, &ir, &args.node);
    if let Err(e) = program.validate() {
        eprintln!("error: the compiled program is invalid, which is a netfence bug: {e}");
        return 2;
    }
    let text = match args.output {
        Format::Nft => program.to_string(),
        Format::Json => match serde_json::to_string_pretty(&program.to_json()) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        },
    };
    // A closed pipe (`| head`) is the reader's choice, not an error.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: writing the program: {e}");
            2
        }
        _ => 0,
    }
}
