//! `netfence reach-from -f snap.yaml ns/pod [--port N] [--protocol P] [-o json]`
//!
//! Every workload, namespace, ipBlock and outside address the pod may open
//! a connection to, with the ports and families, from the allow graph.

pub use super::graph::QueryArgs as Args;

pub fn run(args: Args) -> i32 {
    super::graph::run_query(args, false)
}
