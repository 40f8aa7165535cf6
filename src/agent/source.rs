//! Where the index's updates come from: kube-rs watchers on the API server,
//! or a folder of manifests polled for changes.
//!
//! Watchers use kube-runtime's `watcher` with its default backoff, so
//! reconnects, resourceVersion resumption and relists after `410 Gone` are
//! kube-runtime's well-tested logic; this module only maps its events onto
//! index operations. A relist is buffered as converted model objects and
//! applied as one reset, so the index never sees half a listing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::task::JoinHandle;

use super::index::{convert, Key, Kind, Watched};
use super::metrics::{KindLabel, Metrics};
use super::{Source, Store, WATCHED};
use crate::model::load::ClusterBuilder;
use crate::model::Cluster;

/// Start the source's tasks; they run until aborted.
pub async fn spawn(source: &Source, store: &Store, metrics: &Arc<Metrics>) -> anyhow::Result<Vec<JoinHandle<()>>> {
    Ok(match source {
        Source::Kube { kubeconfig } => spawn_watchers(client(kubeconfig.as_deref()).await?, store, metrics),
        Source::Client(client) => spawn_watchers(client.clone(), store, metrics),
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

/// One watcher per entry of [`WATCHED`].
pub fn spawn_watchers(client: Client, store: &Store, metrics: &Arc<Metrics>) -> Vec<JoinHandle<()>> {
    WATCHED
        .iter()
        .map(|w| {
            let (c, s, m) = (client.clone(), store.clone(), metrics.clone());
            match w.kind {
                Kind::Namespace => tokio::spawn(watch::<Namespace>(Api::all(c), s, m)),
                Kind::Node => tokio::spawn(watch::<Node>(Api::all(c), s, m)),
                Kind::Pod => tokio::spawn(watch::<Pod>(Api::all(c), s, m)),
                Kind::NetworkPolicy => tokio::spawn(watch::<NetworkPolicy>(Api::all(c), s, m)),
            }
        })
        .collect()
}

async fn watch<K: Watched>(api: Api<K>, store: Store, metrics: Arc<Metrics>) {
    let kind = K::KIND;
    let invalid = metrics.invalid_objects.clone();
    let mut stream = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut relist = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => relist.clear(),
            Ok(Event::InitApply(obj)) => relist.push(convert(&obj, &invalid)),
            Ok(Event::InitDone) => {
                let objects = std::mem::take(&mut relist);
                let n = objects.len();
                let changed = store.update(|ix| ix.reset_converted(kind, objects));
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
            Err(e) => {
                metrics.watch_errors.get_or_create(&KindLabel { kind: kind.name() }).inc();
                tracing::warn!(%kind, error = %e, "watch error; retrying with backoff");
            }
        }
    }
}

/// What a folder looked like: every file's path, size and mtime.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

fn fingerprint(dir: &Path) -> std::io::Result<Fingerprint> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let meta = std::fs::metadata(&d)?;
        if !meta.is_dir() {
            files.push((d, meta.len(), meta.modified().ok()));
            continue;
        }
        for entry in std::fs::read_dir(&d)? {
            stack.push(entry?.path());
        }
    }
    files.sort();
    Ok(Fingerprint(files))
}

fn load(dir: &Path) -> Result<(Cluster, Vec<String>), crate::model::LoadError> {
    let mut b = ClusterBuilder::new();
    b.add_path(dir)?;
    Ok(b.finish())
}

/// Poll `dir` every `interval`; reload when any file's size or mtime
/// changed, or a file came or went. Polling rather than inotify: it also
/// sees the symlink swaps of a mounted ConfigMap, and a folder of manifests
/// is cheap to stat.
async fn poll_folder(dir: PathBuf, interval: Duration, store: Store, metrics: Arc<Metrics>) {
    let mut last: Option<Fingerprint> = None;
    let mut last_error = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let d = dir.clone();
        let seen = last.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let fp = fingerprint(&d);
            if matches!((&fp, &seen), (Ok(a), Some(b)) if a == b) {
                return None;
            }
            Some((fp.ok(), load(&d)))
        })
        .await;
        let Ok(Some((fp, loaded))) = outcome else { continue };
        last = fp;
        match loaded {
            Ok((cluster, notices)) => {
                last_error = None;
                for n in notices {
                    tracing::info!("{n}");
                }
                let changed = store.update(|ix| ix.replace(cluster));
                tracing::info!(dir = %dir.display(), changed, "loaded");
            }
            // An unreadable folder has no fingerprint and is retried on
            // every poll: report each distinct error once.
            Err(e) if last_error.as_ref() != Some(&e) => {
                metrics.source_errors.inc();
                tracing::error!(error = %e, "cannot load the source folder; keeping the last good cluster");
                last_error = Some(e);
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn fingerprint_sees_edits_additions_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.yaml");
        std::fs::write(&f, "x").unwrap();
        let a = fingerprint(dir.path()).unwrap();
        assert_eq!(a, fingerprint(dir.path()).unwrap());
        std::fs::write(&f, "xy").unwrap();
        let b = fingerprint(dir.path()).unwrap();
        assert_ne!(a, b);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.yaml"), "").unwrap();
        let c = fingerprint(dir.path()).unwrap();
        assert_ne!(b, c);
        std::fs::remove_file(&f).unwrap();
        assert_eq!(fingerprint(dir.path()).unwrap().0.len(), 1);
    }
}
