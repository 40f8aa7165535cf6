//! Reading manifests: files, folders, multi-document YAML and `kind: List`.
//!
//! Everything that can go wrong with user input surfaces here as a
//! [`LoadError`] naming the file, the line, the field path and what was
//! expected; nothing past this module has to handle malformed objects.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::sources::{Location, PolicySource, Sources};
use super::cluster_policy::{self, ClusterKind, ClusterPolicy};
use super::service::{self, EndpointSlice, Service};
use super::{convert, Cluster, Namespace, Node, Origin, Pod, Policy};
use crate::yaml::{self, Doc, Pos};

/// Bad input, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub file: String,
    pub pos: Option<Pos>,
    /// The field path inside the object (`spec.ingress[0].from`), if any.
    pub path: String,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(p) = self.pos {
            write!(f, ":{p}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl LoadError {
    pub fn new(file: &str, pos: Option<Pos>, path: &str, message: impl Into<String>) -> LoadError {
        LoadError { file: file.to_string(), pos, path: path.to_string(), message: message.into() }
    }

    /// An error about the field at `path` of `doc`.
    pub fn at(file: &str, doc: &Doc, path: &str, message: impl Into<String>) -> LoadError {
        LoadError::new(file, Some(doc.pos(path)), path, message)
    }
}

/// What one file (or text) holds, validated, in document order: the unit
/// the loader parses in parallel and the agent's folder source caches.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub namespaces: Vec<Namespace>,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub policies: Vec<Policy>,
    pub cluster_policies: Vec<ClusterPolicy>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Things worth telling the user that are not errors (ignored kinds).
    pub notices: Vec<String>,
    /// Kept only on request: field positions for lint.
    pub sources: Option<Sources>,
    /// Where each of `pods` starts, for errors about a pod as a whole.
    pub pod_starts: Vec<Location>,
    /// Which of `pods` holds each address (running, not host-network ones).
    addresses: HashMap<IpAddr, usize>,
}

/// Equal objects and notices: what the agent's folder source compares to
/// tell a changed file. Sources (lint only) are where they came from.
impl PartialEq for Objects {
    fn eq(&self, o: &Objects) -> bool {
        (&self.namespaces, &self.nodes, &self.pods, &self.policies, &self.cluster_policies, &self.notices)
            == (&o.namespaces, &o.nodes, &o.pods, &o.policies, &o.cluster_policies, &o.notices)
            && (&self.services, &self.endpoint_slices) == (&o.services, &o.endpoint_slices)
    }
}

impl Eq for Objects {}

impl Objects {
    /// Read and parse one file.
    pub fn read(path: &Path) -> Result<Objects, LoadError> {
        Objects::read_with(path, false)
    }

    /// Read and parse one file, recording [`Sources`] if `keep_sources`.
    pub fn read_with(path: &Path, keep_sources: bool) -> Result<Objects, LoadError> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| LoadError::new(&file, None, "", format!("cannot read: {e}")))?;
        Objects::parse_with(&file, decode(&file, &bytes)?, keep_sources)
    }

    /// Every object of a YAML text, named `file` in errors.
    pub fn parse(file: &str, text: &str) -> Result<Objects, LoadError> {
        Objects::parse_with(file, text, false)
    }

    /// As [`parse`](Self::parse), recording [`Sources`] if `keep_sources`.
    /// Each document is converted as soon as it is parsed; the first
    /// invalid one is the error, unless the text has a syntax error, which
    /// is reported first (as when the whole text was parsed before
    /// converting).
    pub fn parse_with(file: &str, text: &str, keep_sources: bool) -> Result<Objects, LoadError> {
        let mut out = Objects { sources: keep_sources.then(Sources::default), ..Objects::default() };
        let mut invalid = None;
        yaml::parse_each(text, |doc| {
            if invalid.is_none() {
                invalid = out.add_doc(file, &doc).err();
            }
        })
        .map_err(|e| LoadError::new(file, Some(e.pos), &e.path, e.message))?;
        match invalid {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// One object, or a `kind: List` of them. Null documents (a trailing
    /// `---`) are skipped.
    pub fn add_doc(&mut self, file: &str, doc: &Doc) -> Result<(), LoadError> {
        let obj = match &doc.value {
            Value::Null => return Ok(()),
            Value::Object(o) => o,
            _ => return Err(LoadError::at(file, doc, "", "expected a Kubernetes object (a mapping with apiVersion and kind)")),
        };
        let kind = match obj.get("kind") {
            Some(Value::String(k)) => k.as_str(),
            _ => return Err(LoadError::at(file, doc, "kind", "every object needs a `kind` (e.g. kind: NetworkPolicy)")),
        };
        if let Some(s) = &mut self.sources {
            if !kind.ends_with("List") {
                *s.kinds.entry(kind.to_string()).or_default() += 1;
            }
        }
        match kind {
            "List" | "NamespaceList" | "PodList" | "NodeList" | "NetworkPolicyList" | "ClusterNetworkPolicyList"
            | "AdminNetworkPolicyList" | "BaselineAdminNetworkPolicyList" | "ServiceList" | "EndpointSliceList" => {
                let items = match obj.get("items") {
                    Some(Value::Array(items)) => items.clone(),
                    None | Some(Value::Null) => Vec::new(),
                    Some(_) => return Err(LoadError::at(file, doc, "items", "expected a list of objects")),
                };
                let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
                for (i, mut item) in items.into_iter().enumerate() {
                    // Typed lists (`kind: PodList`) leave kind off their items.
                    if let (Some(k), Value::Object(o)) = (item_kind, &mut item) {
                        o.entry("kind").or_insert_with(|| Value::String(k.to_string()));
                        let api = match k {
                            "NetworkPolicy" => "networking.k8s.io/v1",
                            "EndpointSlice" => "discovery.k8s.io/v1",
                            "ClusterNetworkPolicy" => CNP_API,
                            "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy" => ANP_API,
                            _ => "v1",
                        };
                        o.entry("apiVersion").or_insert_with(|| Value::String(api.to_string()));
                    }
                    let sub = doc.sub(&format!("items[{i}]"), item);
                    self.add_doc(file, &sub)?;
                }
            }
            "Namespace" => {
                let ns = typed(file, doc)?;
                self.namespaces.push(convert::namespace(&ns).map_err(|e| field_error(file, doc, e))?);
            }
            "Node" => {
                let n = typed(file, doc)?;
                self.nodes.push(convert::node(&n).map_err(|e| field_error(file, doc, e))?);
            }
            "Pod" => {
                let p = typed(file, doc)?;
                let pod = convert::pod(&p).map_err(|e| field_error(file, doc, e))?;
                let at = Location { file: file.into(), pos: doc.start };
                // Within a file the error can name the very field.
                if let Some((ip, i)) = claim(&mut self.addresses, &self.pods, &pod) {
                    return Err(LoadError::at(file, doc, &address_field(doc, ip), shared_message(ip, &self.pods[i], &self.pod_starts[i])));
                }
                if let Some(s) = &mut self.sources {
                    s.pods.entry((pod.namespace.clone(), pod.name.clone())).or_insert(at.clone());
                }
                self.pods.push(pod);
                self.pod_starts.push(at);
            }
            "NetworkPolicy" => {
                let np = typed(file, doc)?;
                let origin = Origin::new(file, Some(doc.start));
                let policy = convert::policy(&np, origin).map_err(|e| field_error(file, doc, e))?;
                if let Some(s) = &mut self.sources {
                    let key = (policy.namespace.clone(), policy.name.clone());
                    s.policies.entry(key).or_default().push(PolicySource { file: file.into(), doc: doc.clone() });
                }
                self.policies.push(policy);
            }
            "Service" => {
                let svc = typed(file, doc)?;
                let origin = Origin::new(file, Some(doc.start));
                if let Some(s) = service::convert_service(&svc, origin).map_err(|e| field_error(file, doc, e))? {
                    self.services.push(s);
                }
            }
            "EndpointSlice" if obj.get("apiVersion").and_then(Value::as_str) == Some("discovery.k8s.io/v1") => {
                let slice = typed(file, doc)?;
                if let Some(s) = service::convert_endpoint_slice(&slice).map_err(|e| field_error(file, doc, e))? {
                    self.endpoint_slices.push(s);
                }
            }
            "ClusterNetworkPolicy" | "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy"
                if obj.get("apiVersion").and_then(Value::as_str) == Some(cluster_api(kind)) =>
            {
                let ck = match kind {
                    "ClusterNetworkPolicy" => ClusterKind::ClusterNetworkPolicy,
                    "AdminNetworkPolicy" => ClusterKind::AdminNetworkPolicy,
                    _ => ClusterKind::BaselineAdminNetworkPolicy,
                };
                let w: cluster_policy::wire::Object = typed(file, doc)?;
                let origin = Origin::new(file, Some(doc.start));
                let policy = cluster_policy::convert(ck, &w, origin).map_err(|e| field_error(file, doc, e))?;
                if let Some(s) = &mut self.sources {
                    let key = (policy.kind, policy.name.clone());
                    s.cluster_policies.entry(key).or_default().push(PolicySource { file: file.into(), doc: doc.clone() });
                }
                self.cluster_policies.push(policy);
            }
            other => {
                let name = obj.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("?");
                self.notices.push(format!("{file}:{}: ignoring {other} {name:?} (netfence reads Namespace, Pod, Node, NetworkPolicy, Service, discovery.k8s.io/v1 EndpointSlice, and {CNP_API} ClusterNetworkPolicy and {ANP_API} AdminNetworkPolicy/BaselineAdminNetworkPolicy)", doc.start.line));
            }
        }
        Ok(())
    }
}

/// The API version of cluster policies we read; the same kind names in
/// other groups (Antrea's `crd.antrea.io` ClusterNetworkPolicy) are other
/// objects, ignored with a notice.
pub const CNP_API: &str = "policy.networking.k8s.io/v1alpha2";
pub const ANP_API: &str = "policy.networking.k8s.io/v1alpha1";

fn cluster_api(kind: &str) -> &'static str {
    if kind == "ClusterNetworkPolicy" {
        CNP_API
    } else {
        ANP_API
    }
}

/// Accumulates objects from any number of sources into one cluster.
#[derive(Debug, Default)]
pub struct ClusterBuilder {
    cluster: Cluster,
    /// Things worth telling the user that are not errors (ignored kinds).
    pub notices: Vec<String>,
    /// Kept only on request: field positions for lint.
    sources: Option<Sources>,
    /// Parallel to the cluster's pods until `finish`.
    pod_starts: Vec<Location>,
    /// Which pod holds each address (running, not host-network ones).
    addresses: HashMap<IpAddr, usize>,
}

impl ClusterBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Also record where every object came from ([`Sources`]), for
    /// diagnostics that point at a field.
    pub fn keep_sources(mut self) -> Self {
        self.sources = Some(Sources::default());
        self
    }

    /// A file, or every `*.yaml`/`*.yml`/`*.json` below a folder, in name
    /// order. Files are parsed in parallel (parsing is the cost of loading)
    /// and added in order, so the result and the error reported (the first
    /// file's, in name order) do not depend on timing.
    pub fn add_path(&mut self, path: &Path) -> Result<(), LoadError> {
        for objects in read_files_with(&manifest_files(path)?, self.sources.is_some()) {
            self.add(objects?)?;
        }
        Ok(())
    }

    pub fn add_text(&mut self, file: &str, text: &str) -> Result<(), LoadError> {
        self.add(Objects::parse_with(file, text, self.sources.is_some())?)
    }

    /// One object, or a `kind: List` of them. Null documents (a trailing
    /// `---`) are skipped.
    pub fn add_doc(&mut self, file: &str, doc: &Doc) -> Result<(), LoadError> {
        let mut objects = Objects { sources: self.sources.is_some().then(Sources::default), ..Objects::default() };
        objects.add_doc(file, doc)?;
        self.add(objects)
    }

    /// A file's objects, refused if one of its running pods has an address
    /// that a running pod added before has: two pods cannot share one (the
    /// CNI gives each its own), and everything downstream (dispatch by
    /// address, the kernel's maps) relies on it.
    pub fn add(&mut self, objects: Objects) -> Result<(), LoadError> {
        let base = self.cluster.pods.len();
        // A refused file leaves its claims behind: an error ends the load.
        for (k, (pod, at)) in objects.pods.iter().zip(&objects.pod_starts).enumerate() {
            if let Some((ip, i)) = claim_at(&mut self.addresses, &self.cluster.pods, &objects.pods, base, k, pod) {
                let (holder, held_at) = if i < base { (&*self.cluster.pods[i], &self.pod_starts[i]) } else { (&objects.pods[i - base], &objects.pod_starts[i - base]) };
                return Err(LoadError::new(&at.file, Some(at.pos), "status.podIPs", shared_message(ip, holder, held_at)));
            }
        }
        self.merge(objects);
        Ok(())
    }

    /// [`add`](Self::add) without the address check: for the agent, which
    /// must follow a live cluster through an address's reuse (the new pod
    /// can be seen before the old one's deletion).
    /// A Namespace or Node named twice is the last one read; a Pod or
    /// NetworkPolicy, the first.
    pub fn merge(&mut self, objects: Objects) {
        self.pod_starts.extend(objects.pod_starts);
        let c = &mut self.cluster;
        for n in objects.namespaces {
            c.namespaces.insert(n.name.clone(), n);
        }
        for n in objects.nodes {
            c.nodes.insert(n.name.clone(), n);
        }
        c.pods.extend(objects.pods.into_iter().map(Arc::new));
        c.policies.extend(objects.policies.into_iter().map(Arc::new));
        c.cluster_policies.extend(objects.cluster_policies);
        c.services.extend(objects.services.into_iter().map(Arc::new));
        c.endpoint_slices.extend(objects.endpoint_slices);
        self.notices.extend(objects.notices);
        if let (Some(mine), Some(theirs)) = (&mut self.sources, objects.sources) {
            mine.extend(theirs);
        }
    }

    pub fn finish(mut self) -> (Cluster, Vec<String>) {
        self.cluster.normalize();
        (self.cluster, self.notices)
    }

    /// As [`finish`](Self::finish), with the sources recorded since
    /// [`keep_sources`](Self::keep_sources) (empty without it).
    pub fn finish_with_sources(mut self) -> (Cluster, Vec<String>, Sources) {
        let sources = self.sources.take().unwrap_or_default();
        let (cluster, notices) = self.finish();
        (cluster, notices, sources)
    }
}

/// Read and parse `files` on as many threads as there are cores, each
/// result in the order of `files`. After a failure, later files are not
/// parsed (their results say so): only the first error is ever reported.
pub fn read_files(files: &[PathBuf]) -> Vec<Result<Objects, LoadError>> {
    read_files_with(files, false)
}

/// As [`read_files`], recording [`Sources`] if `keep_sources`.
pub fn read_files_with(files: &[PathBuf], keep_sources: bool) -> Vec<Result<Objects, LoadError>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(files.len());
    if threads <= 1 {
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            let r = Objects::read_with(f, keep_sources);
            let failed = r.is_err();
            out.push(r);
            if failed {
                break;
            }
        }
        return out;
    }
    let next = AtomicUsize::new(0);
    let first_error = AtomicUsize::new(usize::MAX);
    let mut results: Vec<(usize, Result<Objects, LoadError>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= files.len() || i > first_error.load(Ordering::Relaxed) {
                            return done;
                        }
                        let r = Objects::read_with(&files[i], keep_sources);
                        if r.is_err() {
                            first_error.fetch_min(i, Ordering::Relaxed);
                        }
                        done.push((i, r));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    results.sort_by_key(|(i, _)| *i);
    // Up to the first error, every file was parsed.
    let stop = first_error.into_inner();
    results.into_iter().filter(|(i, _)| *i <= stop).map(|(_, r)| r).collect()
}

/// Records `pod`'s addresses as held by pod number `pods.len()` of `pods`;
/// the first one another running pod already holds, with that pod's number.
fn claim(addresses: &mut HashMap<IpAddr, usize>, pods: &[Pod], pod: &Pod) -> Option<(IpAddr, usize)> {
    claim_at::<Pod, Pod>(addresses, pods, &[], pods.len(), 0, pod)
}

/// As [`claim`] over two lists, `first` then `second` (numbered from
/// `base`), for pod number `base + k`.
fn claim_at<A: std::borrow::Borrow<Pod>, B: std::borrow::Borrow<Pod>>(addresses: &mut HashMap<IpAddr, usize>, first: &[A], second: &[B], base: usize, k: usize, pod: &Pod) -> Option<(IpAddr, usize)> {
    if !pod.is_policy_pod() {
        return None;
    }
    let nth = |i: usize| -> &Pod { if i < base { first[i].borrow() } else { second[i - base].borrow() } };
    for ip in &pod.ips {
        match addresses.get(ip) {
            // The same pod written twice is not a conflict (the first copy wins).
            Some(&i) if (&nth(i).namespace, &nth(i).name) != (&pod.namespace, &pod.name) => return Some((*ip, i)),
            Some(_) => {}
            None => {
                addresses.insert(*ip, base + k);
            }
        }
    }
    None
}

fn shared_message(ip: IpAddr, holder: &Pod, at: &Location) -> String {
    format!(
        "{ip} is already the address of pod {}/{} ({}:{}); two running pods cannot share an address (expected another address, or phase Succeeded or Failed for a pod that has finished)",
        holder.namespace, holder.name, at.file, at.pos.line
    )
}

/// Where a pod's document writes `ip`: its entry in `status.podIPs`, else
/// `status.podIP`.
fn address_field(doc: &Doc, ip: IpAddr) -> String {
    let listed = doc.value.pointer("/status/podIPs").and_then(Value::as_array).and_then(|ips| {
        ips.iter().position(|e| e.get("ip").and_then(Value::as_str).and_then(|s| s.parse::<IpAddr>().ok()) == Some(ip))
    });
    match listed {
        Some(i) => format!("status.podIPs[{i}].ip"),
        None => "status.podIP".to_string(),
    }
}

/// A cluster from one YAML text (manifests as a file would hold them),
/// named `file` in errors. What tests and embedders reach for.
pub fn load_str(file: &str, text: &str) -> Result<Cluster, LoadError> {
    let mut b = ClusterBuilder::new();
    b.add_text(file, text)?;
    Ok(b.finish().0)
}

/// Load a cluster from files and folders of manifests.
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Result<(Cluster, Vec<String>), LoadError> {
    let mut b = ClusterBuilder::new();
    for p in paths {
        b.add_path(p.as_ref())?;
    }
    Ok(b.finish())
}

/// As [`load_paths`], also recording where every object came from.
pub fn load_paths_with_sources<P: AsRef<Path>>(paths: &[P]) -> Result<(Cluster, Vec<String>, Sources), LoadError> {
    let mut b = ClusterBuilder::new().keep_sources();
    for p in paths {
        b.add_path(p.as_ref())?;
    }
    Ok(b.finish_with_sources())
}

/// A file's bytes as text. Bytes that are not UTF-8 are bad input like any
/// other, so the error says where they are.
pub fn decode<'a>(file: &str, bytes: &'a [u8]) -> Result<&'a str, LoadError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let good = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
        let line = good.matches('\n').count() + 1;
        let col = good.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        LoadError::new(file, Some(Pos { line, col }), "", "not UTF-8 text (netfence reads UTF-8 YAML and JSON)")
    })
}

pub fn parse_docs(file: &str, text: &str) -> Result<Vec<Doc>, LoadError> {
    yaml::parse(text).map_err(|e| LoadError::new(file, Some(e.pos), &e.path, e.message))
}

/// Deserialise a document into a k8s-openapi type, keeping the field path
/// of a type error so it can be located. Reads the value in place.
pub fn typed<T: DeserializeOwned>(file: &str, doc: &Doc) -> Result<T, LoadError> {
    serde_path_to_error::deserialize(&doc.value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        LoadError::at(file, doc, &path, e.into_inner().to_string())
    })
}

fn field_error(file: &str, doc: &Doc, e: convert::FieldError) -> LoadError {
    LoadError::at(file, doc, &e.path, e.message)
}

/// The files a path stands for: itself, or the manifests (*.yaml, *.yml,
/// *.json) below a folder, sorted. Hidden entries below a folder are
/// skipped: a ConfigMap mounted as a volume holds every file three times
/// (`x.yaml -> ..data/x.yaml`, `..data -> ..<timestamp>`, and the
/// timestamped folder, two of them during an update), and editors and
/// atomic writers keep their temporaries there.
pub fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| LoadError::new(&path.display().to_string(), None, "", format!("cannot read: {e}")))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    // Folders already walked, by device and inode: a symlink to a parent
    // (`ln -s .. loop`) would otherwise be walked until paths grow too
    // long, and two of them make that exponential.
    let mut seen = std::collections::HashSet::new();
    seen.insert((meta.dev(), meta.ino()));
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| LoadError::new(&dir.display().to_string(), None, "", format!("cannot read folder: {e}")))?;
        // In name order, so which of two names for one folder is walked
        // does not depend on the file system's order.
        let mut entries: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| !e.file_name().as_encoded_bytes().starts_with(b"."))
            .map(|e| e.path())
            .collect();
        entries.sort();
        let mut dirs = Vec::new();
        for p in entries {
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => {
                    if seen.insert((m.dev(), m.ino())) {
                        dirs.push(p);
                    }
                }
                _ if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) => out.push(p),
                _ => {}
            }
        }
        stack.extend(dirs.into_iter().rev());
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Cluster, LoadError> {
        let mut b = ClusterBuilder::new();
        b.add_text("snap.yaml", text)?;
        Ok(b.finish().0)
    }

    #[test]
    fn a_mounted_configmap_is_read_once_through_its_visible_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pod = |ip: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: x}}\nstatus: {{podIP: {ip}}}\n");
        // The kubelet's atomic writer mid-update: the old and the new
        // timestamped folders both exist, `..data` already points to the new.
        for (ts, ip) in [("..2024_01_01_00_00_00.1", "10.0.0.1"), ("..2024_01_02_00_00_00.2", "10.0.0.2")] {
            std::fs::create_dir(d.join(ts)).unwrap();
            std::fs::write(d.join(ts).join("pods.yaml"), pod(ip)).unwrap();
        }
        std::os::unix::fs::symlink("..2024_01_02_00_00_00.2", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/pods.yaml", d.join("pods.yaml")).unwrap();
        std::fs::write(d.join(".pods.yaml.swp"), "not yaml: [").unwrap();
        assert_eq!(manifest_files(d).unwrap(), vec![d.join("pods.yaml")]);
        let c = load_paths(&[d]).unwrap().0;
        assert_eq!(c.pods.len(), 1);
        assert_eq!(c.pods[0].ips, vec!["10.0.0.2".parse::<std::net::IpAddr>().unwrap()]);
        // A hidden file named on its own is still read.
        assert_eq!(manifest_files(&d.join("..data/pods.yaml")).unwrap().len(), 1);
    }

    #[test]
    fn symlink_loops_are_walked_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n").unwrap();
        // Two links back up: without the check, 2^depth paths until names get too long.
        std::os::unix::fs::symlink("..", d.join("sub/up")).unwrap();
        std::os::unix::fs::symlink(".", d.join("sub/here")).unwrap();
        std::os::unix::fs::symlink("sub", d.join("again")).unwrap();
        assert_eq!(manifest_files(d).unwrap(), vec![d.join("again/ns.yaml")]);
        assert_eq!(load_paths(&[d]).unwrap().0.namespaces.len(), 1);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_located() {
        let e = decode("f.yaml", b"a: 1\nb: x\xff\n").unwrap_err();
        assert_eq!(e.to_string(), "f.yaml:2:5: not UTF-8 text (netfence reads UTF-8 YAML and JSON)");
    }

    #[test]
    fn list_and_documents() {
        let c = load(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: x, labels: {a: b}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nstatus: {podIP: 10.0.0.1}\n",
        )
        .unwrap();
        assert_eq!(c.namespaces["x"].labels.get("kubernetes.io/metadata.name"), Some("x"));
        assert_eq!(c.pods[0].ips, vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]);
    }

    #[test]
    fn errors_carry_file_line_and_path() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - protocol: ICMP\n";
        let e = load(text).unwrap_err();
        assert_eq!(e.to_string(), "snap.yaml:8:7: spec.ingress[0].ports[0].protocol: unknown protocol \"ICMP\" (expected TCP, UDP or SCTP)");

        let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  ingress:\n  - ports:\n    - port: [80]\n";
        let e = load(text).unwrap_err();
        assert_eq!((e.pos.map(|p| p.line), e.path.as_str()), (Some(7), "spec.ingress[0].ports[0].port"), "{e}");

        let e = load("kind: Pod\nmetadata: {name: [\n").unwrap_err();
        assert!(e.message.starts_with("invalid YAML"), "{e}");
    }

    #[test]
    fn other_kinds_are_noticed_not_rejected() {
        let mut b = ClusterBuilder::new();
        b.add_text("s.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: s}\n").unwrap();
        assert_eq!(b.notices.len(), 1);
    }
}
