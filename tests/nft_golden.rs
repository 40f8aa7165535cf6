//! Golden programs: representative clusters compiled for one node, compared
//! byte for byte with tests/golden/*.nft. `UPDATE_GOLDEN=1 cargo test --test
//! nft_golden` rewrites them; review the diff like code.

mod common;

use std::path::Path;

use common::{load, root, CASES};
use netfence::nft::compile;

fn check_golden(name: &str, actual: &str) {
    let path = root().join("tests/golden").join(format!("{name}.nft"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
    if want != actual {
        let first = want.lines().zip(actual.lines()).position(|(a, b)| a != b).unwrap_or(want.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the compiled program at line {} (UPDATE_GOLDEN=1 rewrites it):\n  golden:   {:?}\n  compiled: {:?}",
            path.display(),
            first + 1,
            want.lines().nth(first),
            actual.lines().nth(first)
        );
    }
}

#[test]
fn golden_programs() {
    for (name, files, node) in CASES {
        let c = load(files);
        let p = compile(&c, &netfence::ir::resolve(&c), node);
        p.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        check_golden(name, &p.to_string());
    }
}

/// The same objects in any order give the same bytes.
#[test]
fn compile_is_deterministic() {
    for (name, files, node) in CASES {
        let c = load(files);
        let want = compile(&c, &netfence::ir::resolve(&c), node).to_string();
        for perm in 0..3 {
            let mut s = c.clone();
            permute(&mut s.pods, perm);
            permute(&mut s.policies, perm);
            s.normalize();
            let got = compile(&s, &netfence::ir::resolve(&s), node);
            assert_eq!(got.to_string(), want, "{name}, permutation {perm}");
            assert_eq!(got.to_json(), compile(&c, &netfence::ir::resolve(&c), node).to_json(), "{name}");
        }
    }
}

/// Three different input orders: reversed, rotated, both.
fn permute<T>(v: &mut [T], how: usize) {
    let third = v.len() / 3;
    match how {
        0 => v.reverse(),
        1 => v.rotate_left(third + 1.min(v.len())),
        _ => {
            v.reverse();
            v.rotate_right(third);
        }
    }
}

#[test]
fn golden_files_are_all_used() {
    for e in std::fs::read_dir(root().join("tests/golden")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "nft") {
            let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
            assert!(CASES.iter().any(|(n, ..)| *n == stem), "{} is not a case any more", Path::new(&p).display());
        }
    }
}
