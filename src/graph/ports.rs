//! Exact port sets: per protocol, sorted disjoint inclusive ranges of
//! ports 1-65535.
//!
//! The graph's edges and the diff's changes are sets of (protocol, port)
//! rather than lists of rule port specs, so that unions (several rules),
//! intersections (egress of the source and ingress of the destination) and
//! differences (before and after a change) are exact and their display is
//! canonical: the same set always prints the same way.

use std::fmt;

use serde::ser::{Serialize, SerializeSeq, Serializer};

use crate::model::cluster_policy::ClusterPort;
use crate::model::{Pod, PortRef, PortSpec, Protocol};

/// Ranges are kept normalised (sorted, disjoint, not adjacent), so derived
/// equality and hashing are set equality.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSet {
    /// Indexed by [`proto_index`].
    ranges: [Vec<(u16, u16)>; 3],
}

pub const MIN_PORT: u16 = 1;
pub const MAX_PORT: u16 = 65535;

fn proto_index(p: Protocol) -> usize {
    match p {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
        Protocol::Sctp => 2,
    }
}

impl PortSet {
    pub fn empty() -> PortSet {
        PortSet::default()
    }

    /// Every port of every protocol.
    pub fn all() -> PortSet {
        let full = vec![(MIN_PORT, MAX_PORT)];
        PortSet { ranges: [full.clone(), full.clone(), full] }
    }

    pub fn range(protocol: Protocol, first: u16, last: u16) -> PortSet {
        let mut s = PortSet::empty();
        s.add(protocol, first, last);
        s
    }

    pub fn protocol(protocol: Protocol) -> PortSet {
        PortSet::range(protocol, MIN_PORT, MAX_PORT)
    }

    /// What `--port` / `--protocol` ask about: one port of one protocol,
    /// one port of every protocol, every port of one protocol, or (`None`)
    /// no restriction.
    pub fn select(port: Option<u16>, protocol: Option<Protocol>) -> Option<PortSet> {
        match (port, protocol) {
            (None, None) => None,
            (Some(p), Some(proto)) => Some(PortSet::range(proto, p, p)),
            (None, Some(proto)) => Some(PortSet::protocol(proto)),
            (Some(p), None) => {
                let mut s = PortSet::empty();
                for proto in Protocol::ALL {
                    s.add(proto, p, p);
                }
                Some(s)
            }
        }
    }

    /// What a rule's `ports` list admits toward destination `dst` (a policy
    /// pod, or `None` for an address that is not one): an empty list admits
    /// everything; a named port resolves on the destination pod (name and
    /// protocol), so it admits nothing toward a non-pod. This is
    /// [`crate::eval::port_matches`] lifted from one port to all of them.
    pub fn of_rule(ports: &[PortSpec], dst: Option<&Pod>) -> PortSet {
        if ports.is_empty() {
            return PortSet::all();
        }
        let mut s = PortSet::empty();
        for spec in ports {
            match &spec.port {
                None => s.add(spec.protocol, MIN_PORT, MAX_PORT),
                Some(PortRef::Number(p)) => s.add(spec.protocol, *p, spec.end_port.unwrap_or(*p)),
                Some(PortRef::Named(n)) => {
                    if let Some(p) = dst.and_then(|d| d.named_port(n, spec.protocol)) {
                        s.add(spec.protocol, p, p);
                    }
                }
            }
        }
        s
    }

    /// What a cluster policy rule's `protocols` admit toward destination
    /// `dst`: none listed admits everything; a named port resolves on the
    /// destination pod with whichever protocol it is declared with. This is
    /// [`crate::model::cluster_policy::ports_match`] lifted to all ports.
    pub fn of_cluster_rule(ports: &[ClusterPort], dst: Option<&Pod>) -> PortSet {
        if ports.is_empty() {
            return PortSet::all();
        }
        let mut s = PortSet::empty();
        for p in ports {
            match p {
                ClusterPort::Range { protocol, start, end } => s.add(*protocol, *start, *end),
                ClusterPort::Named(name) => {
                    for protocol in Protocol::ALL {
                        if let Some(port) = dst.and_then(|d| d.named_port(name, protocol)) {
                            s.add(protocol, port, port);
                        }
                    }
                }
            }
        }
        s
    }

    /// Add `first..=last` of `protocol` (clamped to 1-65535; an empty or
    /// inverted range adds nothing).
    pub fn add(&mut self, protocol: Protocol, first: u16, last: u16) {
        let first = first.max(MIN_PORT);
        if first > last {
            return;
        }
        let one = PortSet::from_ranges(protocol, vec![(first, last)]);
        self.union_with(&one);
    }

    fn from_ranges(protocol: Protocol, ranges: Vec<(u16, u16)>) -> PortSet {
        let mut s = PortSet::empty();
        s.ranges[proto_index(protocol)] = ranges;
        s
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.iter().all(Vec::is_empty)
    }

    pub fn is_all(&self) -> bool {
        self.ranges.iter().all(|r| r.as_slice() == [(MIN_PORT, MAX_PORT)])
    }

    pub fn contains(&self, protocol: Protocol, port: u16) -> bool {
        let r = &self.ranges[proto_index(protocol)];
        let i = r.partition_point(|&(_, last)| last < port);
        r.get(i).is_some_and(|&(first, _)| first <= port)
    }

    /// The ranges of one protocol, sorted and disjoint.
    pub fn ranges(&self, protocol: Protocol) -> &[(u16, u16)] {
        &self.ranges[proto_index(protocol)]
    }

    /// Every (protocol, first, last) range, protocols in TCP, UDP, SCTP order.
    pub fn iter(&self) -> impl Iterator<Item = (Protocol, u16, u16)> + '_ {
        Protocol::ALL.into_iter().flat_map(move |p| self.ranges(p).iter().map(move |&(a, b)| (p, a, b)))
    }

    pub fn union_with(&mut self, other: &PortSet) {
        for i in 0..3 {
            if other.ranges[i].is_empty() {
                continue;
            }
            let mut all: Vec<(u16, u16)> = self.ranges[i].iter().chain(&other.ranges[i]).copied().collect();
            all.sort_unstable();
            let mut out: Vec<(u16, u16)> = Vec::with_capacity(all.len());
            for (a, b) in all {
                match out.last_mut() {
                    Some(last) if a as u32 <= last.1 as u32 + 1 => last.1 = last.1.max(b),
                    _ => out.push((a, b)),
                }
            }
            self.ranges[i] = out;
        }
    }

    pub fn union(&self, other: &PortSet) -> PortSet {
        let mut s = self.clone();
        s.union_with(other);
        s
    }

    pub fn intersect(&self, other: &PortSet) -> PortSet {
        let mut s = PortSet::empty();
        for i in 0..3 {
            let (x, y) = (&self.ranges[i], &other.ranges[i]);
            let (mut a, mut b) = (0, 0);
            while a < x.len() && b < y.len() {
                let lo = x[a].0.max(y[b].0);
                let hi = x[a].1.min(y[b].1);
                if lo <= hi {
                    s.ranges[i].push((lo, hi));
                }
                if x[a].1 < y[b].1 {
                    a += 1;
                } else {
                    b += 1;
                }
            }
        }
        s
    }

    /// The ports of `self` that are not in `other`.
    pub fn minus(&self, other: &PortSet) -> PortSet {
        let mut s = PortSet::empty();
        for i in 0..3 {
            let mut holes = other.ranges[i].iter().peekable();
            for &(first, last) in &self.ranges[i] {
                let mut lo = first as u32;
                while let Some(&&(hf, hl)) = holes.peek() {
                    if hl < first {
                        holes.next();
                        continue;
                    }
                    if hf > last {
                        break;
                    }
                    if (hf as u32) > lo {
                        s.ranges[i].push((lo as u16, hf - 1));
                    }
                    lo = hl as u32 + 1;
                    if hl >= last {
                        break;
                    }
                    holes.next();
                }
                if lo <= last as u32 {
                    s.ranges[i].push((lo as u16, last));
                }
            }
        }
        s
    }

    /// How many (protocol, port) pairs the set holds.
    pub fn len(&self) -> u64 {
        self.iter().map(|(_, a, b)| (b - a) as u64 + 1).sum()
    }
}

/// `any`, or e.g. `80/TCP, 8000-8080/TCP, any/UDP`.
impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("any");
        }
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut first = true;
        for p in Protocol::ALL {
            let r = self.ranges(p);
            let parts: Vec<String> = if r == [(MIN_PORT, MAX_PORT)] {
                vec![format!("any/{p}")]
            } else {
                r.iter()
                    .map(|&(a, b)| if a == b { format!("{a}/{p}") } else { format!("{a}-{b}/{p}") })
                    .collect()
            };
            for part in parts {
                if !first {
                    f.write_str(", ")?;
                }
                first = false;
                f.write_str(&part)?;
            }
        }
        Ok(())
    }
}

/// A list of `{"protocol": "TCP", "first": 80, "last": 80}` (the README
/// documents it): ranges, not strings, so scripts need no parsing.
impl Serialize for PortSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Range {
            protocol: Protocol,
            first: u16,
            last: u16,
        }
        let mut seq = s.serialize_seq(None)?;
        for (protocol, first, last) in self.iter() {
            seq.serialize_element(&Range { protocol, first, last })?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Protocol::*;

    /// Parse `80/TCP, 90-95/UDP, any/SCTP` (the Display form) for tests.
    fn set(text: &str) -> PortSet {
        let mut s = PortSet::empty();
        if text == "any" {
            return PortSet::all();
        }
        for part in text.split(", ").filter(|p| !p.is_empty() && *p != "none") {
            let (ports, proto) = part.split_once('/').unwrap();
            let proto = Protocol::parse(proto).unwrap();
            let (a, b) = match ports {
                "any" => (MIN_PORT, MAX_PORT),
                _ => match ports.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => (ports.parse().unwrap(), ports.parse().unwrap()),
                },
            };
            s.add(proto, a, b);
        }
        s
    }

    fn check(op: &str, a: &str, b: &str, want: &str) {
        let (x, y) = (set(a), set(b));
        let got = match op {
            "union" => x.union(&y),
            "intersect" => x.intersect(&y),
            "minus" => x.minus(&y),
            _ => unreachable!(),
        };
        assert_eq!(got.to_string(), want, "{a} {op} {b}");
        // Against a brute-force model on the ports that matter.
        for p in Protocol::ALL {
            for port in [1u16, 2, 52, 53, 54, 79, 80, 81, 89, 90, 91, 100, 101, 8079, 8080, 8081, 65534, 65535] {
                let (i, j) = (x.contains(p, port), y.contains(p, port));
                let expect = match op {
                    "union" => i || j,
                    "intersect" => i && j,
                    _ => i && !j,
                };
                assert_eq!(got.contains(p, port), expect, "{a} {op} {b} at {port}/{p}");
            }
        }
    }

    #[test]
    fn set_algebra() {
        check("union", "80/TCP", "81/TCP", "80-81/TCP");
        check("union", "80-90/TCP", "85-100/TCP, 53/UDP", "80-100/TCP, 53/UDP");
        check("union", "1-79/TCP", "80-65535/TCP", "any/TCP");
        check("union", "any/TCP, any/UDP", "any/SCTP", "any");
        check("intersect", "any", "53/UDP, 53/TCP", "53/TCP, 53/UDP");
        check("intersect", "80-90/TCP, 100/TCP", "85-100/TCP", "85-90/TCP, 100/TCP");
        check("intersect", "80/TCP", "80/UDP", "none");
        check("minus", "any/TCP", "80/TCP", "1-79/TCP, 81-65535/TCP");
        check("minus", "80-90/TCP", "80-90/TCP", "none");
        check("minus", "80-90/TCP", "1-85/TCP, 88/TCP", "86-87/TCP, 89-90/TCP");
        check("minus", "1/TCP, 65535/TCP", "2-65534/TCP", "1/TCP, 65535/TCP");
        check("minus", "53/UDP, 80-100/TCP", "any/UDP, 90-95/TCP, 101/TCP", "80-89/TCP, 96-100/TCP");
    }

    fn check_rule(ports: &[PortSpec], want: &str) {
        let pod = crate::model::Pod {
            namespace: "x".into(),
            name: "a".into(),
            labels: Default::default(),
            node: None,
            host_network: false,
            ips: vec![],
            ports: vec![crate::model::ContainerPort { name: Some("http".into()), port: 8080, protocol: Tcp }].into(),
            phase: None,
        };
        assert_eq!(PortSet::of_rule(ports, Some(&pod)).to_string(), want, "{ports:?}");
    }

    fn spec(protocol: Protocol, port: Option<PortRef>, end_port: Option<u16>) -> PortSpec {
        PortSpec { protocol, port, end_port }
    }

    #[test]
    fn rule_ports_resolve_named_ports_on_the_destination() {
        check_rule(&[], "any");
        check_rule(&[spec(Udp, None, None)], "any/UDP");
        check_rule(&[spec(Tcp, Some(PortRef::Number(80), ), Some(90))], "80-90/TCP");
        check_rule(&[spec(Tcp, Some(PortRef::Named("http".into())), None)], "8080/TCP");
        check_rule(&[spec(Udp, Some(PortRef::Named("http".into())), None)], "none");
        check_rule(&[spec(Tcp, Some(PortRef::Named("grpc".into())), None)], "none");
        assert!(PortSet::of_rule(&[spec(Tcp, Some(PortRef::Named("http".into())), None)], None).is_empty());
    }

    #[test]
    fn display_json_and_len() {
        let s = set("80/TCP, 8000-8080/TCP, any/UDP");
        assert_eq!(s.to_string(), "80/TCP, 8000-8080/TCP, any/UDP");
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"[{"protocol":"TCP","first":80,"last":80},{"protocol":"TCP","first":8000,"last":8080},{"protocol":"UDP","first":1,"last":65535}]"#
        );
        assert_eq!(s.len(), 1 + 81 + 65535);
        assert_eq!(PortSet::all().to_string(), "any");
        assert_eq!(PortSet::empty().to_string(), "none");
    }
}
