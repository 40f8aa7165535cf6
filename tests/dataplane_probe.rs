use netfence::dataplane::{Dataplane, Endpoint, ProbeSpec};
use netfence::model::{load_paths, Family, Protocol};
use std::time::Instant;

#[test]
fn smoke() {
    let (c, _) = load_paths(&[concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/clusters/standard.yaml")]).unwrap();
    let t = Instant::now();
    let dp = Dataplane::build(&c, &["192.0.2.10".parse().unwrap()], |_, _| Ok(())).unwrap();
    eprintln!("build {:?} {:?}", t.elapsed(), dp.timings);
    let mut specs = vec![];
    for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        specs.push(ProbeSpec { from: Endpoint::pod("x", "a"), to: Endpoint::pod("y", "b"), family: Family::IPv4, protocol: p, port: 80 });
        specs.push(ProbeSpec { from: Endpoint::Ip("192.0.2.10".parse().unwrap()), to: Endpoint::pod("x", "a"), family: Family::IPv4, protocol: p, port: 81 });
    }
    let t = Instant::now();
    let r = dp.probe_all(&specs).unwrap();
    eprintln!("probe {:?}", t.elapsed());
    for (s, r) in specs.iter().zip(&r) { eprintln!("{s}: {r:?}"); }
    let t = Instant::now();
    drop(dp);
    eprintln!("drop {:?}", t.elapsed());
}
