//! What `netfence test --dataplane` costs: building and removing the
//! standard cluster's namespaces, and probing, single flows against a 9x9
//! table. Needs root. `cargo bench --bench dataplane` (add `--profile dev`
//! to skip the release build: the time goes to the kernel and to `ip`).

use std::time::{Duration, Instant};

use netfence::dataplane::{Dataplane, Endpoint, ProbeSpec};
use netfence::model::{load_paths, Cluster, Family, Protocol};
use netfence::netns::{self, Netns};

const RUNS: usize = 7;

fn main() {
    if let Err(why) = netns::check_privileges() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/clusters/standard.yaml");
    let cluster = load_paths(&[path]).unwrap().0;

    let (mut topology, mut check, mut build, mut teardown) = (vec![], vec![], vec![], vec![]);
    for _ in 0..RUNS {
        let start = Instant::now();
        let dp = Dataplane::build(&cluster, &["192.0.2.10".parse().unwrap()], no_ruleset).unwrap();
        build.push(start.elapsed());
        topology.push(dp.timings.topology);
        check.push(dp.timings.self_check);
        let start = Instant::now();
        drop(dp);
        teardown.push(start.elapsed());
    }
    println!("standard cluster + outside (13 namespaces), {RUNS} runs:");
    report("  namespaces, veths, addresses, routes", &mut topology);
    report("  wiring check (20 TCP probes)", &mut check);
    report("  build in all", &mut build);
    report("  teardown (drop)", &mut teardown);

    let dp = Dataplane::build(&cluster, &[], no_ruleset).unwrap();
    let pods = pods(&cluster);
    let single = |protocol| vec![spec(&pods[0], &pods[1], protocol)];
    let table = |protocols: &[Protocol]| {
        let mut specs = vec![];
        for from in &pods {
            for to in &pods {
                specs.extend(protocols.iter().map(|p| spec(from, to, *p)));
            }
        }
        specs
    };
    println!("probes, all allowed (x/a -> x/b crosses both nodes):");
    for protocol in Protocol::ALL {
        report(&format!("  one {protocol} probe"), &mut time(&dp, &single(protocol)));
    }
    let one = median(&mut time(&dp, &single(Protocol::Tcp)));
    let mut t9 = time(&dp, &table(&[Protocol::Tcp]));
    report("  9x9 TCP table (81 probes)", &mut t9);
    println!("    = {:.1} single probes", median(&mut t9).as_secs_f64() / one.as_secs_f64());
    report("  9x9 table x TCP, UDP, SCTP (243 probes)", &mut time(&dp, &table(&Protocol::ALL)));

    let drop_all = "table inet bench {\n chain forward {\n type filter hook forward priority 0; policy drop;\n }\n}\n";
    drop(dp);
    let dp = Dataplane::build(&cluster, &[], |_, ns| load(ns, drop_all)).unwrap();
    let cross: Vec<ProbeSpec> =
        table(&[Protocol::Tcp]).into_iter().filter(|s| s.from != s.to).collect();
    println!("probes, all denied by a forward policy drop ({} ms x {} attempts each):", dp.options.timeout.as_millis(), dp.options.attempts);
    report("  one denied TCP probe", &mut time(&dp, &single(Protocol::Tcp)));
    report(&format!("  9x9 TCP table without the diagonal ({} probes)", cross.len()), &mut time(&dp, &cross));
}

fn no_ruleset(_: &str, _: &Netns) -> anyhow::Result<()> {
    Ok(())
}

fn load(ns: &Netns, ruleset: &str) -> anyhow::Result<()> {
    let status = ns.command("nft")?.args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().and_then(|mut c| {
        use std::io::Write;
        c.stdin.take().unwrap().write_all(ruleset.as_bytes())?;
        c.wait()
    })?;
    anyhow::ensure!(status.success(), "nft -f failed");
    Ok(())
}

fn pods(cluster: &Cluster) -> Vec<Endpoint> {
    (0..cluster.pods.len()).map(Endpoint::Pod).collect()
}

fn spec(from: &Endpoint, to: &Endpoint, protocol: Protocol) -> ProbeSpec {
    ProbeSpec { from: from.clone(), to: to.clone(), family: Family::IPv4, protocol, port: 80, via: None }
}

fn time(dp: &Dataplane, specs: &[ProbeSpec]) -> Vec<Duration> {
    (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            dp.probe_all(specs).unwrap();
            start.elapsed()
        })
        .collect()
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn report(what: &str, samples: &mut [Duration]) {
    let m = median(samples);
    println!("{what:<48} min {:>9.1?}  median {:>9.1?}", samples[0], m);
}
