//! Where the index's updates come from: kube-rs watchers on the API server,
//! or a folder of manifests polled for changes.
//!
//! Watchers use kube-runtime's `watcher` with its default backoff, so
//! reconnects, resourceVersion resumption and relists after `410 Gone` are
//! kube-runtime's well-tested logic; this module only maps its events onto
//! index operations. A relist is buffered as converted model objects and
//! applied as one reset, so the index never sees half a listing.
//!
//! The cluster-policy kinds are CRDs a cluster may lack. Their watcher
//! treats a `404` for the list (or the watch) as "not installed": the kind
//! is marked listed and empty in the index (so the first sync and readiness
//! never wait for it), `netfence_watch_kind_available` says 0, a warning is
//! logged once per transition, and the list is tried again every
//! `absent_kind_retry`, so installing the CRD later starts the watch.
//! Any other error (a `403` from an outdated ClusterRole) is retried with
//! backoff and never taken for "no objects": that would enforce a cluster
//! without policies that may exist.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::task::JoinHandle;

use super::index::{convert, Anp, Banp, Cnp, Crd, Key, Kind, Watched};
use super::metrics::{KindLabel, Metrics};
use super::{watched, Source, Store, WATCHED};
use crate::model::load::{ClusterBuilder, LoadError, Objects};
use crate::model::Cluster;

/// Start the source's tasks; they run until aborted.
pub async fn spawn(
    source: &Source,
    store: &Store,
    metrics: &Arc<Metrics>,
    absent_retry: Duration,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    Ok(match source {
        Source::Kube { kubeconfig } => spawn_watchers(client(kubeconfig.as_deref()).await?, store, metrics, absent_retry),
        Source::Client(client) => spawn_watchers(client.clone(), store, metrics, absent_retry),
        Source::Folder { dir, poll } => {
            vec![tokio::spawn(poll_folder(dir.clone(), *poll, store.clone(), metrics.clone()))]
        }
    })
}

/// A client from `--kubeconfig`, or the pod's service account.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("invalid kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster()
            .context("no in-cluster service account (outside a pod, pass --kubeconfig PATH or --source DIR)")?,
    };
    Client::try_from(config).context("cannot build the Kubernetes client")
}

/// One watcher per entry of [`WATCHED`]; a kind whose CRD is absent is
/// asked for again every `absent_retry`.
pub fn spawn_watchers(client: Client, store: &Store, metrics: &Arc<Metrics>, absent_retry: Duration) -> Vec<JoinHandle<()>> {
    WATCHED
        .iter()
        .map(|w| {
            let (c, s, m, r) = (client.clone(), store.clone(), metrics.clone(), absent_retry);
            match w.kind {
                Kind::Namespace => tokio::spawn(watch::<Namespace>(Api::all(c), s, m, r)),
                Kind::Node => tokio::spawn(watch::<Node>(Api::all(c), s, m, r)),
                Kind::Pod => tokio::spawn(watch::<Pod>(Api::all(c), s, m, r)),
                Kind::NetworkPolicy => tokio::spawn(watch::<NetworkPolicy>(Api::all(c), s, m, r)),
                Kind::ClusterNetworkPolicy => tokio::spawn(watch::<Crd<Cnp>>(Api::all(c), s, m, r)),
                Kind::AdminNetworkPolicy => tokio::spawn(watch::<Crd<Anp>>(Api::all(c), s, m, r)),
                Kind::BaselineAdminNetworkPolicy => tokio::spawn(watch::<Crd<Banp>>(Api::all(c), s, m, r)),
            }
        })
        .collect()
}

/// Is this the API server saying it does not serve the resource at all
/// (for a CRD kind: the CRD is not installed, or was removed)?
fn not_served(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.is_not_found(),
        watcher::Error::WatchError(s) => s.is_not_found(),
        _ => false,
    }
}

/// Watch one kind until aborted. For a CRD kind, a `404` ends the watcher:
/// the kind is recorded absent and listed again after `absent_retry`.
async fn watch<K: Watched>(api: Api<K>, store: Store, metrics: Arc<Metrics>, absent_retry: Duration) {
    let kind = K::KIND;
    let crd = watched(kind).crd;
    // None until the API server first answered: each transition is logged once.
    let mut available: Option<bool> = None;
    loop {
        watch_until_absent(&api, &store, &metrics, crd, &mut available).await;
        if !crd {
            return;
        }
        if available != Some(false) {
            tracing::warn!(%kind, retry = ?absent_retry, "not installed (the API server answers 404): no such policies; asking again periodically");
        }
        available = Some(false);
        metrics.set_available(kind, false);
        let changed = store.update(|ix| ix.absent(kind));
        tracing::debug!(%kind, changed, "absent");
        tokio::time::sleep(absent_retry).await;
    }
}

/// Run kube-runtime's watcher on `api` into the index; returns only when
/// the kind turns out not to be served (`crd` kinds only).
async fn watch_until_absent<K: Watched>(
    api: &Api<K>,
    store: &Store,
    metrics: &Metrics,
    crd: bool,
    available: &mut Option<bool>,
) {
    let kind = K::KIND;
    let invalid = metrics.invalid_objects.clone();
    let mut stream = watcher::watcher(api.clone(), watcher::Config::default()).default_backoff().boxed();
    let mut relist = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => relist.clear(),
            Ok(Event::InitApply(obj)) => relist.push(convert(&obj, &invalid)),
            Ok(Event::InitDone) => {
                let objects = std::mem::take(&mut relist);
                let n = objects.len();
                let changed = store.update(|ix| ix.reset_converted(kind, objects));
                if *available == Some(false) {
                    tracing::info!(%kind, "installed now: watching");
                }
                *available = Some(true);
                metrics.set_available(kind, true);
                tracing::info!(%kind, objects = n, changed, "listed");
            }
            Ok(Event::Apply(obj)) => {
                let changed = store.update(|ix| ix.apply(&obj));
                tracing::debug!(%kind, object = ?Key::of(obj.meta()), changed, "applied");
            }
            Ok(Event::Delete(obj)) => {
                if let Some(key) = Key::of(obj.meta()) {
                    let changed = store.update(|ix| ix.delete(kind, &key));
                    tracing::debug!(%kind, object = %key, changed, "deleted");
                }
            }
            Err(e) if crd && not_served(&e) => return,
            Err(e) => {
                metrics.watch_errors.get_or_create(&KindLabel { kind: kind.name() }).inc();
                tracing::warn!(%kind, error = %e, "watch error; retrying with backoff");
            }
        }
    }
}

/// A file's identity and version as `stat` (following symlinks) shows it:
/// a ConfigMap update swaps what the visible symlinks resolve to (a new
/// inode), an editor's or an atomic writer's rename does too, and an
/// in-place write changes the size or the times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(Stamp { dev: m.dev(), ino: m.ino(), len: m.len(), mtime: (m.mtime(), m.mtime_nsec()), ctime: (m.ctime(), m.ctime_nsec()) })
    }
}

/// What the folder source knows of one file.
#[derive(Debug)]
struct Cached {
    /// The version last read (valid or not); `None` when it could not be
    /// stat'ed (a dangling symlink), so it is tried again on every poll.
    stamp: Option<Stamp>,
    /// Its objects as last read validly: an invalid version keeps them.
    objects: Option<Objects>,
    /// Why the version last read is invalid.
    error: Option<LoadError>,
}

/// The folder, file by file: only files whose [`Stamp`] changed are read
/// and parsed again (in parallel), so a change costs its own file's parse
/// plus putting the cluster together, not the whole folder's parse.
#[derive(Debug, Default)]
struct FolderCache {
    files: BTreeMap<PathBuf, Cached>,
    /// Has every file been read validly at once? Until then nothing is
    /// handed to the index: the first ruleset never comes from part of the
    /// folder.
    complete_once: bool,
}

/// What one poll found.
#[derive(Debug, Default)]
struct Poll {
    /// The cluster, when something changed and it may be used.
    cluster: Option<Cluster>,
    notices: Vec<String>,
    /// New errors: files that turned invalid or unreadable (each reported
    /// once, until it changes).
    errors: Vec<LoadError>,
    /// The folder itself cannot be listed (reported on every poll; the
    /// caller reports each distinct one once).
    folder_error: Option<LoadError>,
    /// Files read again.
    reread: usize,
}

impl FolderCache {
    fn poll(&mut self, dir: &Path) -> Poll {
        let mut out = Poll::default();
        let files = match crate::model::load::manifest_files(dir) {
            Ok(f) => f,
            Err(e) => {
                out.folder_error = Some(e);
                return out;
            }
        };
        let mut changed = files.len() != self.files.len() || files.iter().any(|f| !self.files.contains_key(f));
        self.files.retain(|path, _| files.binary_search(path).is_ok());
        let mut stale = Vec::new();
        let mut unreadable = Vec::new();
        for f in &files {
            match Stamp::of(f) {
                Ok(stamp) if self.files.get(f).is_some_and(|c| c.stamp == Some(stamp)) => {}
                Ok(stamp) => stale.push((f.clone(), Some(stamp))),
                Err(e) => unreadable.push((f.clone(), LoadError::new(&f.display().to_string(), None, "", format!("cannot read: {e}")))),
            }
        }
        let paths: Vec<PathBuf> = stale.iter().map(|(p, _)| p.clone()).collect();
        let results = read_all(&paths);
        out.reread = results.len();
        let unreadable = unreadable.into_iter().map(|(f, e)| ((f, None), Err(e)));
        for ((path, stamp), result) in stale.into_iter().zip(results).chain(unreadable) {
            let entry = self.files.entry(path).or_insert(Cached { stamp, objects: None, error: None });
            entry.stamp = stamp;
            match result {
                Ok(objects) => {
                    changed |= entry.objects.as_ref() != Some(&objects) || entry.error.is_some();
                    entry.objects = Some(objects);
                    entry.error = None;
                }
                Err(e) => {
                    if entry.error.as_ref() != Some(&e) {
                        out.errors.push(e.clone());
                    }
                    entry.error = Some(e);
                }
            }
        }
        let complete = self.files.values().all(|c| c.objects.is_some());
        if !changed || !(complete || self.complete_once) {
            return out;
        }
        self.complete_once = true;
        let mut b = ClusterBuilder::new();
        for c in self.files.values() {
            if let Some(o) = &c.objects {
                b.merge(o.clone());
            }
        }
        let (cluster, notices) = b.finish();
        out.cluster = Some(cluster);
        out.notices = notices;
        out
    }

    /// Files whose current version is invalid, with why.
    fn errors(&self) -> impl Iterator<Item = &LoadError> {
        self.files.values().filter_map(|c| c.error.as_ref())
    }
}

/// Every file read and parsed, each result in order (in parallel: this is
/// the cost of a reload).
fn read_all(files: &[PathBuf]) -> Vec<Result<Objects, LoadError>> {
    // `read_files` stops at the first error, for a loader that stops there;
    // here every file stands on its own, so the rest are read one by one.
    let mut results = crate::model::load::read_files(files);
    while results.len() < files.len() {
        results.push(Objects::read(&files[results.len()]));
    }
    results
}

/// Poll `dir` every `interval`; read again the files whose identity, size
/// or times changed, forget removed ones, and hand the index the whole
/// cluster when anything changed. Polling rather than inotify: it also sees
/// the symlink swaps of a mounted ConfigMap, and a folder of manifests is
/// cheap to stat. A file that turns invalid keeps its last valid objects
/// (reported once, with file:line); an unreadable folder keeps everything.
async fn poll_folder(dir: PathBuf, interval: Duration, store: Store, metrics: Arc<Metrics>) {
    let cache = Arc::new(std::sync::Mutex::new(FolderCache::default()));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_folder_error = None;
    loop {
        tick.tick().await;
        let (d, c) = (dir.clone(), cache.clone());
        let outcome = tokio::task::spawn_blocking(move || c.lock().unwrap_or_else(|e| e.into_inner()).poll(&d)).await;
        let Ok(poll) = outcome else { continue };
        for e in &poll.errors {
            metrics.source_errors.inc();
            tracing::error!(error = %e, "cannot load a source file; keeping its last valid objects");
        }
        // An unreadable folder fails every poll: report each distinct error once.
        if let Some(e) = poll.folder_error.as_ref().filter(|e| last_folder_error.as_ref() != Some(*e)) {
            metrics.source_errors.inc();
            tracing::error!(error = %e, "cannot read the source folder; keeping the last good cluster");
        }
        last_folder_error = poll.folder_error;
        let Some(cluster) = poll.cluster else { continue };
        for n in poll.notices {
            tracing::info!("{n}");
        }
        let invalid = cache.lock().unwrap_or_else(|e| e.into_inner()).errors().count();
        let changed = store.update(|ix| ix.replace(cluster));
        tracing::info!(dir = %dir.display(), changed, reread = poll.reread, invalid_files = invalid, "loaded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn watched_table_matches_the_k8s_openapi_types() {
        fn check<K: Watched>() {
            let w = super::super::watched(K::KIND);
            assert_eq!((w.group, w.version, w.plural), (K::group(&()).as_ref(), K::version(&()).as_ref(), K::plural(&()).as_ref()));
            assert_eq!(w.path(), K::url_path(&(), None));
            assert_eq!(w.kind.name(), K::kind(&()));
        }
        check::<Namespace>();
        check::<Node>();
        check::<Pod>();
        check::<NetworkPolicy>();
        check::<Crd<Cnp>>();
        check::<Crd<Anp>>();
        check::<Crd<Banp>>();
    }

    fn pod(name: &str, ip: &str) -> String {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x}}\nstatus: {{podIP: {ip}}}\n")
    }

    /// Write then rename, as editors and atomic writers do.
    fn write(path: &Path, text: &str) {
        let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }

    /// (files read again, the pods of the cluster handed over if any, new errors)
    fn check(cache: &mut FolderCache, dir: &Path, expected: (usize, Option<&[&str]>, usize)) {
        let poll = cache.poll(dir);
        let pods: Option<Vec<String>> = poll.cluster.map(|c| c.pods.iter().map(|p| format!("{}={}", p.name, p.ips[0])).collect());
        let got = (poll.reread, pods, poll.errors.len());
        let want = (expected.0, expected.1.map(|p| p.iter().map(|s| s.to_string()).collect()), expected.2);
        assert_eq!(got, want, "{:?}", poll.errors);
    }

    #[test]
    fn only_changed_files_are_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(&d.join("a.yaml"), &pod("a", "10.0.0.1"));
        write(&d.join("b.yaml"), &pod("b", "10.0.0.2"));
        std::fs::create_dir(d.join("sub")).unwrap();
        write(&d.join("sub/c.yaml"), &pod("c", "10.0.0.3"));
        let mut cache = FolderCache::default();
        check(&mut cache, d, (3, Some(&["a=10.0.0.1", "b=10.0.0.2", "c=10.0.0.3"]), 0));
        check(&mut cache, d, (0, None, 0));
        write(&d.join("b.yaml"), &pod("b", "10.0.0.9"));
        check(&mut cache, d, (1, Some(&["a=10.0.0.1", "b=10.0.0.9", "c=10.0.0.3"]), 0));
        // A new version with the same objects changes nothing.
        write(&d.join("b.yaml"), &pod("b", "10.0.0.9"));
        check(&mut cache, d, (1, None, 0));
        std::fs::remove_file(d.join("sub/c.yaml")).unwrap();
        check(&mut cache, d, (0, Some(&["a=10.0.0.1", "b=10.0.0.9"]), 0));
        // Files the loader skips are not read.
        std::fs::write(d.join(".a.yaml.swp"), "not yaml: [").unwrap();
        std::fs::write(d.join("notes.txt"), "").unwrap();
        check(&mut cache, d, (0, None, 0));
        write(&d.join("d.yaml"), &pod("d", "10.0.0.4"));
        check(&mut cache, d, (1, Some(&["a=10.0.0.1", "b=10.0.0.9", "d=10.0.0.4"]), 0));
    }

    #[test]
    fn an_invalid_file_keeps_its_last_valid_objects_and_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(&d.join("a.yaml"), &pod("a", "10.0.0.1"));
        write(&d.join("b.yaml"), &pod("b", "10.0.0.2"));
        let mut cache = FolderCache::default();
        check(&mut cache, d, (2, Some(&["a=10.0.0.1", "b=10.0.0.2"]), 0));
        write(&d.join("b.yaml"), &pod("b", "10.0.0.300"));
        check(&mut cache, d, (1, None, 1));
        assert!(cache.errors().next().unwrap().to_string().contains("b.yaml:"), "errors name the file");
        check(&mut cache, d, (0, None, 0));
        // Other files still apply, with b's last valid version.
        write(&d.join("a.yaml"), &pod("a", "10.0.0.7"));
        check(&mut cache, d, (1, Some(&["a=10.0.0.7", "b=10.0.0.2"]), 0));
        // Another invalid version is another error.
        write(&d.join("b.yaml"), "kind: Pod\nmetadata: {name: [\n");
        check(&mut cache, d, (1, None, 1));
        write(&d.join("b.yaml"), &pod("b", "10.0.0.8"));
        check(&mut cache, d, (1, Some(&["a=10.0.0.7", "b=10.0.0.8"]), 0));
        assert_eq!(cache.errors().count(), 0);
        // An invalid new file contributes nothing until it is valid.
        write(&d.join("c.yaml"), "kind: Pod\n");
        check(&mut cache, d, (1, Some(&["a=10.0.0.7", "b=10.0.0.8"]), 1));
    }

    #[test]
    fn nothing_is_handed_over_until_every_file_was_valid_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(&d.join("a.yaml"), &pod("a", "10.0.0.1"));
        write(&d.join("b.yaml"), "kind: Pod\nmetadata: {name: [\n");
        let mut cache = FolderCache::default();
        check(&mut cache, d, (2, None, 1));
        write(&d.join("a.yaml"), &pod("a", "10.0.0.2"));
        check(&mut cache, d, (1, None, 0));
        write(&d.join("b.yaml"), &pod("b", "10.0.0.3"));
        check(&mut cache, d, (1, Some(&["a=10.0.0.2", "b=10.0.0.3"]), 0));
        // An unreadable folder keeps everything, and says so.
        let gone = d.join("missing");
        let poll = cache.poll(&gone);
        assert!(poll.cluster.is_none() && poll.folder_error.is_some());
    }

    #[test]
    fn a_configmap_update_is_seen_through_its_symlinks() {
        // The kubelet's layout: `pods.yaml -> ..data/pods.yaml`,
        // `..data -> ..<timestamp>`; an update writes a new timestamped
        // folder and swaps `..data` atomically. Same size and mtime on
        // purpose: the new file is told apart by its inode.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let version = |ts: &str, ip: &str| {
            std::fs::create_dir(d.join(ts)).unwrap();
            let f = d.join(ts).join("pods.yaml");
            std::fs::write(&f, pod("p", ip)).unwrap();
            std::fs::File::options().write(true).open(&f).unwrap().set_modified(mtime).unwrap();
        };
        version("..2024_01_01_00_00_00.1", "10.0.0.1");
        std::os::unix::fs::symlink("..2024_01_01_00_00_00.1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/pods.yaml", d.join("pods.yaml")).unwrap();
        let mut cache = FolderCache::default();
        check(&mut cache, d, (1, Some(&["p=10.0.0.1"]), 0));
        version("..2024_01_02_00_00_00.2", "10.0.0.2");
        check(&mut cache, d, (0, None, 0));
        std::os::unix::fs::symlink("..2024_01_02_00_00_00.2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        check(&mut cache, d, (1, Some(&["p=10.0.0.2"]), 0));
        std::fs::remove_dir_all(d.join("..2024_01_01_00_00_00.1")).unwrap();
        check(&mut cache, d, (0, None, 0));
    }
}
