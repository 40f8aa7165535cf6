//! The nftables program: a typed, restricted nftables AST ([`program`]),
//! rendered as an `nft -f` script (its `Display`) and as libnftables JSON
//! ([`json`]), compiled from the cluster ([`compile`]), interpreted packet by
//! packet ([`interp`]) and diffed ([`diff`]) into the smallest
//! [`transaction`]; [`counters`] says what each counted rule measures, and
//! [`drop_log`] adds the rules that log what is dropped.
//!
//! Nothing here does I/O: only [`crate::apply`] touches the kernel.

pub mod program;
pub mod transaction;
pub mod json;
pub mod compile;
pub mod interp;
pub mod diff;
pub mod incremental;
pub mod counters;
pub mod drop_log;

pub use compile::{compile, compile_all, compile_with_origins};
pub use diff::diff;
pub use program::{
    Action, AddrField, AddrMatch, BaseHook, Chain, ChainPolicy, CtState, Element, Hook, Icmpv6Type, KeyType, Map, Match,
    PortRange, Program, Rule, Set, ValidationError, Verdict, ALT_TABLE, TABLE,
};
pub use program::other_table;
pub use transaction::{Op, Transaction};
