//! `netfence test PATH...`

use std::path::PathBuf;

use crate::policytest::{self, Backend};

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
    let mut backends: Vec<Box<dyn Backend>> = Vec::new();
    let mut results: Vec<_> = files.iter().map(|f| policytest::run_file(f, &mut backends)).collect();
    policytest::check_unique_names(&mut results);
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
