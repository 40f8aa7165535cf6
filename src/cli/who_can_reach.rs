//! `netfence who-can-reach -f snap.yaml ns/pod [--port N] [--protocol P] [-o json]`
//!
//! Every workload, namespace, ipBlock, outside address and node that may
//! open a connection to the pod (egress of the source and ingress of the
//! pod both considered), with the ports and families, from the allow graph.

pub use super::graph::QueryArgs as Args;

pub fn run(args: Args) -> i32 {
    super::graph::run_query(args, true)
}
