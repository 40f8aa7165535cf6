//! netfence: Kubernetes NetworkPolicy enforcement on nftables.
//!
//! The crate reads top to bottom as the data flows (see ARCHITECTURE.md):
//! `intern` (shared storage of repeated values), `yaml`/`model` (objects, loading) → `selector` → `ir` (policies resolved
//! to pods) → `graph` (allow graph, queries, redundancy) → `eval` (the
//! reference verdict, with its trace) → `explain` (rendering traces) →
//! `impact` (what a change opens or closes) → `nft` (the typed nftables program,
//! its interpreter and diff) → `apply` (transactions into the kernel), with
//! `policytest`, `dataplane`, `agent` and `cli` on top. No stage imports a
//! later one.

// Linked into every binary of the crate, tests included: the agent calls
// mimalloc's `mi_collect` (agent::reconcile).
extern crate mimalloc as _;

pub mod intern;
pub mod yaml;
pub mod model;
pub mod selector;
pub mod ir;
pub mod graph;
pub mod lint;
pub mod eval;
pub mod explain;
pub mod impact;
pub mod nft;
pub mod apply;
pub mod apply_session;
pub mod netns;
pub mod policytest;
pub mod dataplane;
pub mod agent;
pub mod gen;
pub mod bench;
pub mod cli;
