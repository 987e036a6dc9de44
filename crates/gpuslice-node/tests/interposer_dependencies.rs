//! The interposer (`libgpuslice.so`, loaded into every CUDA process) must never link the
//! node plugin's async stack. This walks `Cargo.lock` from `gpuslice-interposer` through
//! every dependency it can reach (normal, build and dev alike: the lock file does not
//! tell them apart, so this errs on the safe side) and fails on any crate of that stack.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Crates that belong to the async / Kubernetes side and must stay out of the interposer.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "tonic",
    "hyper",
    "h2",
    "tower",
    "prost",
    "notify",
    "mio",
    "kube",
    "kube-client",
    "kube-runtime",
    "k8s-openapi",
    "kubelet-api",
    "gpuslice-node",
    "fake-kubelet",
];

/// Every crate reachable from `root` in the lock file `lock`, with the path to it.
fn reachable(lock: &str, root: &str) -> BTreeMap<String, Vec<String>> {
    let lock: toml::Table = lock.parse().expect("Cargo.lock is TOML");
    let packages = lock["package"].as_array().expect("[[package]] entries");
    // name → [(version, dependencies)]
    let mut by_name: BTreeMap<&str, Vec<(&str, Vec<&str>)>> = BTreeMap::new();
    for p in packages {
        let name = p["name"].as_str().unwrap();
        let version = p["version"].as_str().unwrap();
        let deps = p
            .get("dependencies")
            .and_then(|d| d.as_array())
            .map(|d| d.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        by_name.entry(name).or_default().push((version, deps));
    }
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut queue: VecDeque<(String, Option<String>, Vec<String>)> =
        VecDeque::from([(root.to_string(), None, vec![root.to_string()])]);
    let mut visited = BTreeSet::new();
    while let Some((name, version, path)) = queue.pop_front() {
        if !visited.insert((name.clone(), version.clone())) {
            continue;
        }
        seen.entry(name.clone()).or_insert_with(|| path.clone());
        let Some(entries) = by_name.get(name.as_str()) else {
            continue;
        };
        for (v, deps) in entries {
            if version.as_deref().is_some_and(|want| want != *v) {
                continue;
            }
            for dep in deps {
                // "name", "name version" or "name version (source)".
                let mut parts = dep.split(' ');
                let dep_name = parts.next().unwrap().to_string();
                let dep_version = parts.next().map(String::from);
                let mut dep_path = path.clone();
                dep_path.push(dep_name.clone());
                queue.push_back((dep_name, dep_version, dep_path));
            }
        }
    }
    seen
}

fn forbidden_in(lock: &str) -> Vec<String> {
    reachable(lock, "gpuslice-interposer")
        .into_iter()
        .filter(|(name, _)| FORBIDDEN.contains(&name.as_str()))
        .map(|(_, path)| path.join(" → "))
        .collect()
}

#[test]
fn the_interposer_links_no_async_or_kubernetes_crate() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock");
    let lock = std::fs::read_to_string(path).expect("the workspace's Cargo.lock");
    let reached = reachable(&lock, "gpuslice-interposer");
    // The walk works: it finds what the interposer does depend on.
    for expected in ["gpuslice-ledger", "gpuslice-config", "libc"] {
        assert!(
            reached.contains_key(expected),
            "{expected} not reached: {reached:?}"
        );
    }
    let bad = forbidden_in(&lock);
    assert!(
        bad.is_empty(),
        "the interposer reaches async crates:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_finds_a_forbidden_crate_however_deep() {
    let lock = r#"
version = 4

[[package]]
name = "gpuslice-interposer"
version = "0.1.0"
dependencies = ["gpuslice-ledger", "libc"]

[[package]]
name = "gpuslice-ledger"
version = "0.1.0"
dependencies = ["helper 1.0.0"]

[[package]]
name = "helper"
version = "1.0.0"
dependencies = ["tokio 1.0.0 (registry+https://github.com/rust-lang/crates.io-index)"]

[[package]]
name = "helper"
version = "2.0.0"
dependencies = ["tonic"]

[[package]]
name = "tokio"
version = "1.0.0"

[[package]]
name = "tonic"
version = "0.14.0"

[[package]]
name = "libc"
version = "0.2.0"
"#;
    assert_eq!(
        forbidden_in(lock),
        ["gpuslice-interposer → gpuslice-ledger → helper → tokio"]
    );
}
