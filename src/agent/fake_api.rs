//! An in-process fake Kubernetes API server, for testing the watchers with
//! the real list/watch protocol and real JSON.
//!
//! It serves the collections in [`WATCHED`] the way the API server does:
//! a global, monotonically increasing resourceVersion (etcd's revision);
//! lists with `limit`/`continue` pages cut from one consistent snapshot;
//! watches (`?watch=true&resourceVersion=N`) that replay every event after
//! N and then stream live ones as newline-delimited JSON, with BOOKMARK
//! events when asked for; an `ERROR` event carrying a `410 Gone` Status
//! ("too old resource version") for a watch from before the last
//! compaction; and the discovery endpoints. The CRD kinds can be
//! uninstalled and installed again: an uninstalled kind is answered `404`
//! and left out of discovery, as the API server does without the CRD.
//! Tests drive it: change objects,
//! send bookmarks, compact, end or abort every watch, or hold all requests
//! (an API server outage) while they change things behind the watchers'
//! backs.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State as AxState};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::index::{Key, Kind};
use super::{watched, WatchedResource, WATCHED};

type Chunk = Result<Bytes, std::io::Error>;

/// Requests the fake has answered, per resource; tests assert on relists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    /// List requests for first pages (a relist), not continuations.
    pub lists: u64,
    pub watches: u64,
    /// Watches answered with `410 Gone`.
    pub gone: u64,
    /// The resourceVersion each watch asked to start from.
    pub watch_versions: Vec<String>,
    /// Lists and watches answered `404` (the kind is not installed).
    pub not_found: u64,
}

struct Watcher {
    resource: &'static WatchedResource,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Chunk>,
}

struct Cursor {
    resource: &'static WatchedResource,
    rv: u64,
    rest: Vec<Value>,
}

#[derive(Default)]
struct State {
    rv: u64,
    compacted: u64,
    next_uid: u64,
    objects: BTreeMap<(Kind, Key), Value>,
    /// (rv, kind, event type, object) since the last compaction.
    log: Vec<(u64, Kind, &'static str, Value)>,
    watchers: Vec<Watcher>,
    cursors: HashMap<String, Cursor>,
    next_cursor: u64,
    served: HashMap<Kind, Served>,
    /// CRD kinds not installed: answered 404, absent from discovery.
    uninstalled: std::collections::BTreeSet<Kind>,
}

/// The running fake; dropping it stops the server.
pub struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    available: watch::Sender<bool>,
    server: JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<State>>,
    available: watch::Receiver<bool>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeApi {
    /// Serve on 127.0.0.1 on a free port.
    pub async fn start() -> std::io::Result<FakeApi> {
        let state = Arc::new(Mutex::new(State::default()));
        let (available, rx) = watch::channel(true);
        let shared = Shared { state: state.clone(), available: rx };
        let app = Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeApi { addr, state, available, server })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client pointed at this server.
    pub fn client(&self) -> kube::Client {
        let uri = self.url().parse().expect("a valid URL");
        kube::Client::try_from(kube::Config::new(uri)).expect("a client for a plain http URL")
    }

    /// Create or replace an object (any k8s-openapi type of a watched kind,
    /// or JSON with `kind`); it gets a new resourceVersion and an ADDED or
    /// MODIFIED event. Returns that resourceVersion.
    pub fn apply(&self, obj: &impl Serialize) -> u64 {
        let mut obj = serde_json::to_value(obj).expect("serialisable");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        let res = WATCHED.iter().find(|w| w.kind.name() == kind).unwrap_or_else(|| panic!("not a watched kind: {kind:?}"));
        let mut s = self.lock();
        assert!(!s.uninstalled.contains(&res.kind), "{kind} is not installed: install it first");
        s.rv += 1;
        let rv = s.rv;
        let meta = obj.as_object_mut().expect("an object").entry("metadata").or_insert_with(|| json!({}));
        if res.namespaced && meta.get("namespace").is_none() {
            meta["namespace"] = json!("default");
        }
        meta["resourceVersion"] = json!(rv.to_string());
        obj["apiVersion"] = json!(res.api_version());
        let key = key_of(res, &obj);
        let old = s.objects.get(&(res.kind, key.clone())).cloned();
        let uid = match old.as_ref().and_then(|o| o["metadata"].get("uid")) {
            Some(uid) => uid.clone(),
            None => {
                s.next_uid += 1;
                json!(format!("00000000-0000-4000-8000-{:012}", s.next_uid))
            }
        };
        obj["metadata"]["uid"] = uid;
        let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
        s.objects.insert((res.kind, key), obj.clone());
        s.publish(res, rv, kind, obj);
        rv
    }

    /// Delete an object: a DELETED event carrying its last state at a new
    /// resourceVersion. False if it did not exist.
    pub fn delete(&self, kind: Kind, key: &Key) -> bool {
        let res = watched(kind);
        let mut s = self.lock();
        let Some(mut obj) = s.objects.remove(&(kind, key.clone())) else { return false };
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.publish(res, rv, "DELETED", obj);
        true
    }

    /// Remove a CRD kind, as deleting its CustomResourceDefinition does:
    /// its objects are deleted (DELETED events), its watches end, and from
    /// now on its lists and watches are answered `404`.
    pub fn uninstall(&self, kind: Kind) {
        let res = watched(kind);
        assert!(res.crd, "{kind} is built in, not a CRD");
        let keys: Vec<Key> = self.lock().objects.keys().filter(|(k, _)| *k == kind).map(|(_, key)| key.clone()).collect();
        for key in keys {
            self.delete(kind, &key);
        }
        let mut s = self.lock();
        s.uninstalled.insert(kind);
        s.watchers.retain(|w| w.resource.kind != kind);
    }

    /// Install a CRD kind again (every kind is installed at start).
    pub fn install(&self, kind: Kind) {
        self.lock().uninstalled.remove(&kind);
    }

    /// Send a BOOKMARK at the current resourceVersion to every watch that
    /// allowed them.
    pub fn bookmark(&self) -> u64 {
        let s = self.lock();
        for w in s.watchers.iter().filter(|w| w.bookmarks) {
            let _ = w.tx.send(Ok(line("BOOKMARK", bookmark_object(w.resource, s.rv, false))));
        }
        s.rv
    }

    /// Forget history up to now: watches from an older resourceVersion get
    /// `410 Gone`, and outstanding list continuations expire.
    pub fn compact(&self) {
        let mut s = self.lock();
        s.compacted = s.rv;
        s.log.clear();
        s.cursors.clear();
    }

    /// End every watch cleanly, as the API server does on a timeout or a
    /// restart; clients resume from their last resourceVersion.
    pub fn disconnect(&self) {
        self.lock().watchers.clear();
    }

    /// Break every watch connection mid-stream, as a dropped TCP
    /// connection does.
    pub fn abort_connections(&self) {
        for w in self.lock().watchers.drain(..) {
            let _ = w.tx.send(Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "dropped by test")));
        }
    }

    /// An outage: end every watch and hold all requests until [`FakeApi::resume`].
    pub fn pause(&self) {
        self.available.send_replace(false);
        self.disconnect();
    }

    pub fn resume(&self) {
        self.available.send_replace(true);
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    pub fn served(&self, kind: Kind) -> Served {
        self.lock().served.get(&kind).cloned().unwrap_or_default()
    }

    /// Live watch streams.
    pub fn watchers(&self) -> usize {
        let mut s = self.lock();
        s.watchers.retain(|w| !w.tx.is_closed());
        s.watchers.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn publish(&mut self, res: &'static WatchedResource, rv: u64, kind: &'static str, obj: Value) {
        self.watchers.retain(|w| !w.tx.is_closed());
        for w in self.watchers.iter().filter(|w| w.resource.kind == res.kind) {
            let _ = w.tx.send(Ok(line(kind, obj.clone())));
        }
        self.log.push((rv, res.kind, kind, obj));
    }

    fn served(&mut self, kind: Kind) -> &mut Served {
        self.served.entry(kind).or_default()
    }

    fn items(&self, kind: Kind) -> Vec<Value> {
        self.objects.range((kind, Key::cluster(""))..).take_while(|((k, _), _)| *k == kind).map(|(_, v)| list_item(v)).collect()
    }
}

fn key_of(res: &WatchedResource, obj: &Value) -> Key {
    let meta = &obj["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    match (res.namespaced, meta["namespace"].as_str()) {
        (true, Some(ns)) => Key::namespaced(ns, name),
        _ => Key::cluster(name),
    }
}

/// List items carry neither kind nor apiVersion on the wire.
fn list_item(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    o
}

fn line(kind: &str, object: Value) -> Bytes {
    let mut s = serde_json::to_string(&json!({"type": kind, "object": object})).expect("JSON");
    s.push('\n');
    Bytes::from(s)
}

fn bookmark_object(res: &WatchedResource, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": res.kind.name(), "apiVersion": res.api_version(), "metadata": meta})
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn error(code: StatusCode, reason: &str, message: &str) -> Response {
    json_response(code, &status(code.as_u16(), reason, message))
}

async fn handle(AxState(shared): AxState<Shared>, uri: Uri, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut available = shared.available.clone();
    let _ = available.wait_for(|up| *up).await;
    let path = uri.path();
    let uninstalled = shared.state.lock().unwrap_or_else(|e| e.into_inner()).uninstalled.clone();
    let served: Vec<&'static WatchedResource> = WATCHED.iter().filter(|w| !uninstalled.contains(&w.kind)).collect();
    if let Some(body) = discovery(path, &served) {
        return json_response(StatusCode::OK, &body);
    }
    let not_found = || error(StatusCode::NOT_FOUND, "NotFound", &format!("the server could not find the requested resource ({path})"));
    let Some(res) = WATCHED.iter().find(|w| w.path() == path) else {
        return not_found();
    };
    if uninstalled.contains(&res.kind) {
        shared.state.lock().unwrap_or_else(|e| e.into_inner()).served(res.kind).not_found += 1;
        return not_found();
    }
    if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
        watch_response(&shared, res, &q)
    } else {
        list_response(&shared, res, &q)
    }
}

/// The discovery documents, listing the `served` resources (a group's
/// versions each have their own resource list).
fn discovery(path: &str, served: &[&'static WatchedResource]) -> Option<Value> {
    let resources = |gv: &str| -> Value {
        let list: Vec<Value> = served
            .iter()
            .filter(|w| w.api_version() == gv)
            .map(|w| {
                json!({"name": w.plural, "singularName": w.kind.name().to_lowercase(), "namespaced": w.namespaced,
                       "kind": w.kind.name(), "verbs": super::WATCH_VERBS})
            })
            .collect();
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
    };
    Some(match path {
        "/version" => json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-netfence-fake", "gitCommit": "",
                             "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24",
                             "compiler": "gc", "platform": "linux/amd64"}),
        "/api" => json!({"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        "/apis" => {
            let mut groups: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
            for w in served.iter().filter(|w| !w.group.is_empty()) {
                groups.entry(w.group).or_default().insert(w.version);
            }
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(group, versions)| {
                    let vs: Vec<Value> = versions
                        .iter()
                        .rev()
                        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                        .collect();
                    json!({"name": group, "versions": vs.clone(), "preferredVersion": vs[0]})
                })
                .collect();
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        }
        "/api/v1" => resources("v1"),
        _ => {
            let w = served.iter().find(|w| !w.group.is_empty() && path == format!("/apis/{}", w.api_version()))?;
            resources(&w.api_version())
        }
    })
}

fn list_response(shared: &Shared, res: &'static WatchedResource, q: &HashMap<String, String>) -> Response {
    let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
    let (rv, mut items) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match s.cursors.remove(token) {
            Some(c) if c.resource.kind == res.kind => (c.rv, c.rest),
            _ => {
                return error(
                    StatusCode::GONE,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result.",
                )
            }
        },
        None => {
            s.served(res.kind).lists += 1;
            (s.rv, s.items(res.kind))
        }
    };
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(limit) = limit.filter(|l| items.len() > *l) {
        let rest = items.split_off(limit);
        s.next_cursor += 1;
        let token = format!("{}-{}", res.plural, s.next_cursor);
        s.cursors.insert(token.clone(), Cursor { resource: res, rv, rest });
        meta["continue"] = json!(token);
        meta["remainingItemCount"] = json!(s.cursors[&token].rest.len());
    }
    let body = json!({"kind": format!("{}List", res.kind.name()), "apiVersion": res.api_version(),
                      "metadata": meta, "items": items});
    json_response(StatusCode::OK, &body)
}

fn watch_response(shared: &Shared, res: &'static WatchedResource, q: &HashMap<String, String>) -> Response {
    let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    let from = q.get("resourceVersion").cloned().unwrap_or_default();
    {
        let served = s.served(res.kind);
        served.watches += 1;
        served.watch_versions.push(from.clone());
    }
    let (tx, rx) = mpsc::unbounded_channel::<Chunk>();
    let initial = matches!(q.get("sendInitialEvents").map(String::as_str), Some("true"));
    if from.is_empty() || from == "0" || initial {
        // "Any"/"most recent": synthetic ADDED events for what exists now.
        for item in s.items(res.kind) {
            let mut obj = item;
            obj["kind"] = json!(res.kind.name());
            obj["apiVersion"] = json!(res.api_version());
            let _ = tx.send(Ok(line("ADDED", obj)));
        }
        if initial {
            let _ = tx.send(Ok(line("BOOKMARK", bookmark_object(res, s.rv, true))));
        }
    } else {
        let Ok(n) = from.parse::<u64>() else {
            return error(StatusCode::BAD_REQUEST, "BadRequest", &format!("invalid resourceVersion {from:?}"));
        };
        if n < s.compacted {
            s.served(res.kind).gone += 1;
            let msg = format!("too old resource version: {n} ({})", s.compacted);
            let _ = tx.send(Ok(line("ERROR", status(410, "Expired", &msg))));
            drop(tx);
            return stream_response(rx, None);
        }
        for (_, _, kind, obj) in s.log.iter().filter(|(rv, k, _, _)| *rv > n && *k == res.kind) {
            let _ = tx.send(Ok(line(kind, obj.clone())));
        }
    }
    let bookmarks = matches!(q.get("allowWatchBookmarks").map(String::as_str), Some("true"));
    s.watchers.push(Watcher { resource: res, bookmarks, tx });
    let timeout = q.get("timeoutSeconds").and_then(|t| t.parse().ok()).map(Duration::from_secs);
    stream_response(rx, timeout)
}

/// A chunked body fed by `rx`, ending when the sender is dropped or after
/// `timeout` (the server-side watch timeout).
fn stream_response(rx: mpsc::UnboundedReceiver<Chunk>, timeout: Option<Duration>) -> Response {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let stream = futures::stream::unfold(rx, move |mut rx| async move {
        let next = match deadline {
            Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok().flatten(),
            None => rx.recv().await,
        };
        next.map(|chunk| (chunk, rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("a valid response")
}
