//! The checked-in scale fixtures load, and are exactly what the generator
//! writes today: a change to the generator must regenerate them (see
//! fixtures/scale/README.md), never leave them silently stale.

use std::path::Path;

use netfence::gen::{Plan, Size};

fn check(size: Size) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/scale").join(size.name());
    let plan = Plan::new(size.spec(1)).unwrap();
    let scratch = std::env::temp_dir().join(format!("nf-fixture-{}-{}", size.name(), std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    plan.write_dir(&scratch).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(&scratch).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    let mut checked: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    checked.sort();
    assert_eq!(names, checked, "{}: regenerate with the command in fixtures/scale/README.md", dir.display());
    for name in &names {
        let want = std::fs::read(scratch.join(name)).unwrap();
        let have = std::fs::read(dir.join(name)).unwrap();
        assert!(want == have, "{}/{name:?} is stale: regenerate with the command in fixtures/scale/README.md", dir.display());
    }
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn small_fixture_loads_and_is_current() {
    check(Size::Small);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/scale/small");
    let (c, notices) = netfence::model::load_paths(&[dir]).unwrap_or_else(|e| panic!("{e}"));
    assert!(notices.is_empty(), "{notices:?}");
    assert_eq!((c.pods.len(), c.nodes.len(), c.namespaces.len(), c.policies.len()), (1_000, 10, 100, 100));
}

#[test]
fn medium_fixture_is_current() {
    check(Size::Medium);
}
