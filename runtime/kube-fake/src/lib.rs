//! An in-process fake of the Kubernetes API server, on loopback, for testing Cairn's Kubernetes
//! backend (`cairn_cluster::KubeCluster`) and the `cairn` commands that use it.
//!
//! It keeps objects as JSON by their API path and answers what `kube` asks of it: get, list
//! (with label selectors), create (with `generateName`), merge patch, delete, the
//! `scale` subresource, and `exec` over WebSocket (`v5.channel.k8s.io`) that runs the command
//! as a process on this machine, with the container's `env` values and `workingDir`. As with a
//! kubelet, a client that goes away does not kill its command: the command's stdin ends and it
//! runs on.
//!
//! Small controllers stand in for the cluster's: scaling a workload makes its ready pods at
//! once and stops the ones it removes as a kubelet does, listed with a `deletionTimestamp`
//! for [`POD_SHUTDOWN`] before they are gone; a workload's `generation` counts its spec's
//! changes (a Deployment's, its annotations' too, as the API server's) and its status says it
//! observed the latest; a new pod runs at once, unless its image is `missing` (then it waits in
//! `ErrImagePull`); a new VolumeSnapshot is ready at once with its claim's size. Paths marked
//! with [`FakeApi::forbid`] answer 403, as RBAC would. Deleting a pod kills the commands its
//! execs run (their process groups), as stopping its containers does. Every change gives an object a new
//! `resourceVersion`, and a patch that names another version than the object's answers 409, as
//! the API server's optimistic concurrency does.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The fake server; it stops when dropped.
#[derive(Debug)]
pub struct FakeApi {
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
    /// The runtime serving it, when [`FakeApi::start_blocking`] made one; dropped last.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, Default)]
struct State {
    /// Collection path → name → object.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    /// Paths (prefixes) that answer 403.
    forbidden: BTreeSet<String>,
    /// Every object ever created, by collection path.
    created: BTreeMap<String, Vec<Value>>,
    next: u64,
    /// Pods shutting down: collection, name, and when they are gone.
    stopping: Vec<(String, String, std::time::Instant)>,
    /// Exec speaks `v4.channel.k8s.io` only, as Kubernetes 1.29 does by default: stdin can
    /// end only with the whole connection.
    exec_v4_only: bool,
    /// New snapshots are cut but not ready to use, as a cloud's while it copies them.
    snapshots_pending: bool,
    /// New claims stay Pending whatever their class, as while a provisioner works or fails.
    claims_pending: bool,
    /// How long a deleted pod stays listed, terminating (its containers stopping, its volumes
    /// unmounted); none by default.
    pod_deletion: std::time::Duration,
    /// How long a new pod takes to run (scheduled, its volumes attached, its image pulled);
    /// none by default.
    pod_start: std::time::Duration,
    /// Pods starting: collection, name, when they run, and their status then.
    starting: Vec<(String, String, std::time::Instant, Value)>,
    /// By `COLLECTION/NAME` of a pod: what tells its execs' commands that it is deleted, so
    /// they are killed as a kubelet stops the pod's containers.
    pod_kills: BTreeMap<String, tokio::sync::watch::Sender<bool>>,
}

/// How long a pod a scale-down removed stays listed, shutting down (a real one's grace period
/// is 30 s by default).
pub const POD_SHUTDOWN: std::time::Duration = std::time::Duration::from_millis(300);

impl State {
    /// Removes the pods whose shutdown is over.
    fn reap(&mut self) {
        let now = std::time::Instant::now();
        let (started, starting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.starting)
            .into_iter()
            .partition(|(_, _, at, _)| *at <= now);
        self.starting = starting;
        for (collection, name, _, status) in started {
            if let Some(pod) = self
                .objects
                .get_mut(&collection)
                .and_then(|c| c.get_mut(&name))
            {
                pod["status"] = status;
            }
        }
        let (gone, stopping): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stopping)
            .into_iter()
            .partition(|(_, _, at)| *at <= now);
        self.stopping = stopping;
        for (collection, name, _) in gone {
            if let Some(c) = self.objects.get_mut(&collection) {
                c.remove(&name);
            }
        }
    }
}

/// The `pod-template-hash` of every Deployment's pods, and the suffix of the ReplicaSet that
/// owns them.
const TEMPLATE_HASH: &str = "5d9c7f";

/// Bytes of the send and receive buffers of the server's sockets.
const SOCKET_BUFFER: u32 = 16 * 1024;

impl FakeApi {
    pub async fn start() -> FakeApi {
        // Small socket buffers, as a congested path between client, API server and kubelet:
        // flow control that waits on the wrong side deadlocks within megabytes, not gigabytes.
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .set_recv_buffer_size(SOCKET_BUFFER)
            .expect("a receive buffer size");
        socket
            .set_send_buffer_size(SOCKET_BUFFER)
            .expect("a send buffer size");
        socket
            .bind(([127, 0, 0, 1], 0).into())
            .expect("bind the fake API server");
        let listener = socket.listen(64).expect("listen");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        FakeApi {
            url,
            state,
            task,
            runtime: None,
        }
    }

    /// [`FakeApi::start`] for a test without a runtime of its own (one that runs the `cairn`
    /// binary): the server gets a runtime, which lives as long as it does.
    pub fn start_blocking() -> FakeApi {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime for the fake API server");
        let mut api = runtime.block_on(FakeApi::start());
        api.runtime = Some(runtime);
        api
    }

    /// Creates namespace `name`.
    pub fn namespace(&self, name: &str) {
        self.put(
            "/api/v1/namespaces",
            json!({ "metadata": { "name": name } }),
        );
    }

    /// A client of this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("the server's URL"));
        kube::Client::try_from(config).expect("a client")
    }

    /// Writes a kubeconfig whose one context, `fake`, points at this server; `kubectl` and
    /// `cairn --target kube` use it through `KUBECONFIG`.
    pub fn kubeconfig(&self, path: &std::path::Path) {
        let config = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user: {{}}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n",
            self.url
        );
        std::fs::write(path, config).expect("write the kubeconfig");
    }

    /// Stores `object` under the collection `path`, as a create would (controllers included).
    pub fn put(&self, path: &str, object: Value) {
        let mut state = self.state.lock().expect("state");
        create(&mut state, path, object).expect("a new object");
    }

    /// The object `name` of the collection `path`.
    pub fn get(&self, path: &str, name: &str) -> Option<Value> {
        let state = self.state.lock().expect("state");
        state.objects.get(path)?.get(name).cloned()
    }

    /// Deletes the object `name` of the collection `path`, as `kubectl delete` would.
    pub fn remove(&self, path: &str, name: &str) -> Option<Value> {
        let mut state = self.state.lock().expect("state");
        state.objects.get_mut(path)?.remove(name)
    }

    /// Every object created in the collection `path`, deleted ones included, in order.
    pub fn created(&self, path: &str) -> Vec<Value> {
        let state = self.state.lock().expect("state");
        state.created.get(path).cloned().unwrap_or_default()
    }

    /// Makes exec speak `v4.channel.k8s.io` only, as Kubernetes 1.29 does by default.
    pub fn exec_v4_only(&self) {
        self.state.lock().expect("state").exec_v4_only = true;
    }

    /// Makes new VolumeSnapshots cut (`creationTime` set) but not ready to use, until
    /// [`FakeApi::ready_snapshots`].
    pub fn snapshots_pending(&self) {
        self.state.lock().expect("state").snapshots_pending = true;
    }

    /// Makes every VolumeSnapshot ready to use, as a cloud's copy finishing.
    pub fn ready_snapshots(&self) {
        let mut state = self.state.lock().expect("state");
        for (collection, objects) in &mut state.objects {
            if collection.ends_with("/volumesnapshots") {
                for snapshot in objects.values_mut() {
                    if snapshot["status"]["error"].is_null() {
                        snapshot["status"]["readyToUse"] = json!(true);
                    }
                }
            }
        }
    }

    /// Makes new claims stay Pending, until [`FakeApi::bind_claims`].
    pub fn claims_pending(&self) {
        self.state.lock().expect("state").claims_pending = true;
    }

    /// Binds every Pending claim, as a provisioner finishing, and binds new ones at once again
    /// (those of a class that waits for its first consumer aside).
    pub fn bind_claims(&self) {
        let mut state = self.state.lock().expect("state");
        state.claims_pending = false;
        for (collection, objects) in &mut state.objects {
            if collection.ends_with("/persistentvolumeclaims") {
                for claim in objects.values_mut() {
                    claim["status"]["phase"] = json!("Bound");
                }
            }
        }
    }

    /// Makes a deleted pod stay listed, with a `deletionTimestamp`, for `time` before it is
    /// gone, as a kubelet stopping its containers and unmounting its volumes.
    pub fn pod_deletion_takes(&self, time: std::time::Duration) {
        self.state.lock().expect("state").pod_deletion = time;
    }

    /// Makes a new pod take `time` to run (Pending, its containers `ContainerCreating`), as
    /// while it is scheduled, its volumes attached and its image pulled.
    pub fn pod_start_takes(&self, time: std::time::Duration) {
        self.state.lock().expect("state").pod_start = time;
    }

    /// Makes requests to paths under `prefix` answer 403.
    pub fn forbid(&self, prefix: &str) {
        let mut state = self.state.lock().expect("state");
        state.forbidden.insert(prefix.to_owned());
    }

    /// A namespace with a Deployment `web` (one replica, containers `web` and `sidecar`,
    /// claim `web-data`), a StatefulSet `db` (two replicas, claim template `data`, 1 GiB
    /// claims), and a ConfigMap `settings`.
    pub async fn shop() -> FakeApi {
        let api = FakeApi::start().await;
        api.namespace("shop");
        api.namespace("kube-system");
        api.put(
            "/apis/apps/v1/namespaces/shop/deployments",
            workload(
                "web",
                1,
                json!({
                    "containers": [
                        { "name": "web", "image": "web" },
                        { "name": "sidecar", "image": "sidecar" },
                    ],
                    "volumes": [
                        { "name": "data", "persistentVolumeClaim": { "claimName": "web-data" } },
                    ],
                }),
            ),
        );
        for claim in ["web-data", "data-db-0", "data-db-1"] {
            api.put(
                "/api/v1/namespaces/shop/persistentvolumeclaims",
                json!({
                    "metadata": { "name": claim, "labels": { "app": "shop" },
                                  "annotations": { "pv.kubernetes.io/bind-completed": "yes" } },
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": "fast",
                        "resources": { "requests": { "storage": "1Gi" } },
                    },
                }),
            );
        }
        let mut db = workload(
            "db",
            2,
            json!({ "containers": [{ "name": "postgres", "image": "postgres" }] }),
        );
        db["spec"]["serviceName"] = json!("db");
        db["spec"]["volumeClaimTemplates"] = json!([{ "metadata": { "name": "data" } }]);
        api.put("/apis/apps/v1/namespaces/shop/statefulsets", db);
        api.put(
            "/api/v1/namespaces/shop/configmaps",
            json!({ "metadata": { "name": "settings" }, "data": { "mode": "fast" } }),
        );
        api
    }
}

/// A Deployment or StatefulSet `name` of `replicas` pods labelled `app: NAME`, selected by
/// that label, with the pod spec `pod`; adjust it before [`FakeApi::put`].
pub fn workload(name: &str, replicas: u32, pod: Value) -> Value {
    json!({
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": pod,
            },
        },
    })
}

fn status(code: StatusCode, reason: &str, message: String, name: &str) -> Response<Full<Bytes>> {
    respond(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": reason, "message": message,
            "code": code.as_u16(), "details": { "name": name },
        }),
    )
}

fn respond(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// What a path addresses: a collection, one object in it, or an object's subresource.
struct Target {
    collection: String,
    name: Option<String>,
    sub: Option<String>,
}

fn target(path: &str) -> Option<Target> {
    let rest = path
        .strip_prefix("/api/v1/")
        .map(|r| ("/api/v1".to_owned(), r))
        .or_else(|| {
            let r = path.strip_prefix("/apis/")?;
            let mut parts = r.splitn(3, '/');
            let (group, version, rest) = (parts.next()?, parts.next()?, parts.next()?);
            Some((format!("/apis/{group}/{version}"), rest))
        })?;
    let (prefix, rest) = rest;
    let segments: Vec<&str> = rest.split('/').collect();
    let (collection, tail) = match segments.as_slice() {
        ["namespaces", tail @ ..] if tail.len() <= 1 => (format!("{prefix}/namespaces"), tail),
        ["namespaces", ns, plural, tail @ ..] => {
            (format!("{prefix}/namespaces/{ns}/{plural}"), tail)
        }
        // Cluster-scoped kinds Cairn reads: storage classes and persistent volumes. (Listing
        // a namespaced kind across namespaces stays unrouted, so code that does so by mistake
        // fails here too.)
        [plural @ ("storageclasses" | "persistentvolumes"), tail @ ..] if tail.len() <= 1 => {
            (format!("{prefix}/{plural}"), tail)
        }
        _ => return None,
    };
    Some(Target {
        collection,
        name: tail.first().map(|s| (*s).to_owned()),
        sub: tail.get(1).map(|s| (*s).to_owned()),
    })
}

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), decode(v)))
        .collect()
}

fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let forbidden = {
        let state = state.lock().expect("state");
        state.forbidden.iter().any(|p| path.starts_with(p.as_str()))
    };
    if forbidden {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("{path} is forbidden: User \"cairn\" cannot do this"),
            "",
        );
    }
    let Some(t) = target(&path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no route {path}"),
            "",
        );
    };
    if t.sub.as_deref() == Some("exec") {
        return exec(state, req, &t).await;
    }
    let method = req.method().clone();
    let params = query(&req);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string(), ""),
    };
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string(), ""),
        }
    };
    let mut state = state.lock().expect("state");
    state.reap();
    let Target {
        collection,
        name,
        sub,
    } = t;
    match (method, name, sub.as_deref()) {
        (Method::GET, None, None) => {
            let selector = params
                .iter()
                .find(|(k, _)| k == "labelSelector")
                .map(|(_, v)| v.clone());
            let items: Vec<Value> = state
                .objects
                .get(&collection)
                .into_iter()
                .flat_map(|c| c.values())
                .filter(|o| selector.as_deref().is_none_or(|s| matches(o, s)))
                .cloned()
                .collect();
            respond(
                StatusCode::OK,
                &json!({ "kind": "List", "apiVersion": "v1",
                         "metadata": { "resourceVersion": "1" }, "items": items }),
            )
        }
        (Method::POST, None, None) => match create(&mut state, &collection, body) {
            Ok(object) => respond(StatusCode::CREATED, &object),
            Err(name) => status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{name} already exists"),
                &name,
            ),
        },
        (method, Some(name), sub) => {
            let Some(object) = state.objects.get(&collection).and_then(|c| c.get(&name)) else {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{collection}/{name} not found"),
                    &name,
                );
            };
            let object = object.clone();
            match (method, sub) {
                (Method::GET, None) => respond(StatusCode::OK, &object),
                (Method::GET, Some("scale")) => respond(StatusCode::OK, &scale_of(&object)),
                (Method::PATCH, Some("scale")) => {
                    let replicas = body["spec"]["replicas"].clone();
                    let mut object = object;
                    object["spec"]["replicas"] = replicas;
                    let object = store(&mut state, &collection, object);
                    respond(StatusCode::OK, &scale_of(&object))
                }
                // A patch that names a resourceVersion applies only to that version.
                (Method::PATCH, _)
                    if body["metadata"]["resourceVersion"]
                        .as_str()
                        .is_some_and(|v| {
                            Some(v) != object["metadata"]["resourceVersion"].as_str()
                        }) =>
                {
                    status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on {collection} \"{name}\": the object \
                             has been modified; please apply your changes to the latest version"
                        ),
                        &name,
                    )
                }
                // The status subresource changes the status alone, as the API server does.
                (Method::PATCH, Some("status")) => {
                    let mut object = object;
                    merge(&mut object["status"], &body["status"]);
                    let object = store(&mut state, &collection, object);
                    respond(StatusCode::OK, &object)
                }
                (Method::PATCH, None) => {
                    let mut object = object;
                    merge(&mut object, &body);
                    let object = store(&mut state, &collection, object);
                    respond(StatusCode::OK, &object)
                }
                (Method::DELETE, None)
                    if collection.ends_with("/pods") && !state.pod_deletion.is_zero() =>
                {
                    kill_execs(&mut state, &collection, &name);
                    let gone = std::time::Instant::now() + state.pod_deletion;
                    let mut object = object;
                    if object["metadata"]["deletionTimestamp"].is_null() {
                        object["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                        state.stopping.push((collection.clone(), name, gone));
                        object = store(&mut state, &collection, object);
                    }
                    respond(StatusCode::OK, &object)
                }
                (Method::DELETE, None) => {
                    if collection.ends_with("/pods") {
                        kill_execs(&mut state, &collection, &name);
                    }
                    if let Some(c) = state.objects.get_mut(&collection) {
                        c.remove(&name);
                    }
                    respond(StatusCode::OK, &object)
                }
                (method, sub) => status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    format!("{method} {sub:?} is not faked"),
                    &name,
                ),
            }
        }
        (method, None, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} on a collection is not faked"),
            "",
        ),
    }
}

/// How long a kubelet takes to stop a deleted pod's containers: it learns of the deletion
/// through its watch of the API server, then signals them.
const KUBELET_LATENCY: std::time::Duration = std::time::Duration::from_millis(200);

/// Kills the commands running in pod `name` by exec, as its containers stop (after
/// [`KUBELET_LATENCY`]).
fn kill_execs(state: &mut State, collection: &str, name: &str) {
    if let Some(kill) = state.pod_kills.remove(&format!("{collection}/{name}")) {
        tokio::spawn(async move {
            tokio::time::sleep(KUBELET_LATENCY).await;
            let _ = kill.send(true);
        });
    }
}

/// Whether `object`'s labels satisfy a label selector: terms joined by commas, each `k=v`,
/// `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (has it) or `!k` (has it not).
fn matches(object: &Value, selector: &str) -> bool {
    let label = |k: &str| {
        object["metadata"]["labels"][k.trim()]
            .as_str()
            .map(str::to_owned)
    };
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            let set = |rest: &str| -> Vec<String> {
                rest.trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .collect()
            };
            if let Some((k, rest)) = term.split_once(" notin ") {
                label(k).is_none_or(|v| !set(rest).contains(&v))
            } else if let Some((k, rest)) = term.split_once(" in ") {
                label(k).is_some_and(|v| set(rest).contains(&v))
            } else if let Some((k, v)) = term.split_once("!=") {
                label(k).as_deref() != Some(v.trim())
            } else if let Some((k, v)) = term.split_once('=') {
                label(k).as_deref() == Some(v.trim_start_matches('=').trim())
            } else if let Some(k) = term.strip_prefix('!') {
                label(k).is_none()
            } else {
                label(term).is_some()
            }
        })
}

/// A JSON merge patch (RFC 7386): nulls remove, objects merge (into an empty one when the
/// target is not an object), anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn scale_of(object: &Value) -> Value {
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": { "name": object["metadata"]["name"], "namespace": object["metadata"]["namespace"] },
        "spec": { "replicas": object["spec"]["replicas"] },
        "status": { "replicas": object["status"]["replicas"] },
    })
}

/// Creates `object` in `collection`; `Err(name)` when the name is taken.
fn create(state: &mut State, collection: &str, mut object: Value) -> Result<Value, String> {
    state.next += 1;
    let name = match object["metadata"]["name"].as_str() {
        Some(name) => name.to_owned(),
        None => format!(
            "{}{:05x}",
            object["metadata"]["generateName"]
                .as_str()
                .unwrap_or("object-"),
            state.next
        ),
    };
    if state
        .objects
        .get(collection)
        .is_some_and(|c| c.contains_key(&name))
    {
        return Err(name);
    }
    let namespace = collection
        .split("/namespaces/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .map(str::to_owned);
    object["metadata"]["name"] = json!(name);
    if let Some(ns) = namespace {
        object["metadata"]["namespace"] = json!(ns);
    }
    object["metadata"]["uid"] = json!(format!("uid-{}", state.next));
    object["metadata"]["resourceVersion"] = json!(state.next.to_string());
    object["metadata"]["creationTimestamp"] = json!("2026-12-05T10:00:00Z");
    if collection.ends_with("/pods") && object.get("status").is_none() {
        // The kubelet's part: the pod runs at once, unless an image is named `missing`.
        let containers = object["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let missing = containers.iter().any(|c| c["image"] == "missing");
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| {
                let state = match missing {
                    false => json!({ "running": {} }),
                    true => json!({ "waiting": { "reason": "ErrImagePull",
                                                 "message": "pull access denied" } }),
                };
                json!({ "name": c["name"], "started": !missing, "ready": !missing,
                        "state": state })
            })
            .collect();
        object["status"] = match missing {
            false => json!({ "phase": "Running", "containerStatuses": statuses,
                             "conditions": [{ "type": "Ready", "status": "True" }] }),
            true => json!({ "phase": "Pending", "containerStatuses": statuses }),
        };
        if !missing && !state.pod_start.is_zero() {
            let at = std::time::Instant::now() + state.pod_start;
            let running = std::mem::replace(
                &mut object["status"],
                json!({ "phase": "Pending", "containerStatuses": containers.iter().map(|c| json!({
                    "name": c["name"], "started": false, "ready": false,
                    "state": { "waiting": { "reason": "ContainerCreating" } } })).collect::<Vec<_>>() }),
            );
            state
                .starting
                .push((collection.to_owned(), name.clone(), at, running));
        }
    }
    // A claim is bound at once, unless its class (or the default one) waits for a consumer.
    if collection.ends_with("/persistentvolumeclaims") && object["status"].is_null() {
        let classes = state.objects.get("/apis/storage.k8s.io/v1/storageclasses");
        let class = match object["spec"]["storageClassName"].as_str() {
            Some(name) => classes.and_then(|c| c.get(name)),
            None => classes.and_then(|c| {
                c.values().find(|class| {
                    class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"]
                        == "true"
                })
            }),
        };
        let waits = class.is_some_and(|c| c["volumeBindingMode"] == "WaitForFirstConsumer");
        let phase = if waits || state.claims_pending {
            "Pending"
        } else {
            "Bound"
        };
        object["status"] = json!({ "phase": phase });
    }
    // A snapshot put with a status (a test's) keeps it; one created gets the controller's.
    if collection.ends_with("/volumesnapshots") && object["status"].is_null() {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let claim = object["spec"]["source"]["persistentVolumeClaimName"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let size = state
            .objects
            .get(&format!("/api/v1/namespaces/{ns}/persistentvolumeclaims"))
            .and_then(|c| c.get(&claim))
            .map(|c| c["spec"]["resources"]["requests"]["storage"].clone());
        object["status"] = match size {
            Some(size) if state.snapshots_pending => json!({
                "readyToUse": false, "restoreSize": size, "creationTime": "2026-12-05T10:00:00Z"
            }),
            Some(size) => json!({ "readyToUse": true, "restoreSize": size }),
            None => json!({ "readyToUse": false,
                            "error": { "message": format!("claim {claim} not found") } }),
        };
    }
    state
        .created
        .entry(collection.to_owned())
        .or_default()
        .push(object.clone());
    Ok(store(state, collection, object))
}

/// Stores `object` and runs the fake workload controller on it: a Deployment or StatefulSet
/// gets as many ready pods as it wants replicas.
fn store(state: &mut State, collection: &str, mut object: Value) -> Value {
    state.next += 1;
    object["metadata"]["resourceVersion"] = json!(state.next.to_string());
    let is_workload = collection.ends_with("/deployments") || collection.ends_with("/statefulsets");
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if is_workload {
        let replicas = object["spec"]["replicas"].as_u64().unwrap_or(1);
        let before = state.objects.get(collection).and_then(|c| c.get(&name));
        // As the API server's strategies: a StatefulSet's generation counts changes of its
        // spec; a Deployment's of its annotations too, which it copies to its ReplicaSets.
        let annotations = |o: &Value| match &o["metadata"]["annotations"] {
            Value::Null => json!({}),
            a => a.clone(),
        };
        let same = |b: &Value| {
            b["spec"] == object["spec"]
                && (!collection.ends_with("/deployments") || annotations(b) == annotations(&object))
        };
        let generation = match before {
            Some(b) if same(b) => b["metadata"]["generation"].as_i64(),
            Some(b) => b["metadata"]["generation"].as_i64().map(|g| g + 1),
            None => object["metadata"]["generation"].as_i64(),
        }
        .unwrap_or(1);
        object["metadata"]["generation"] = json!(generation);
        object["status"] = json!({ "replicas": replicas, "readyReplicas": replicas,
                                   "observedGeneration": generation });
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let collection_of_pods = format!("/api/v1/namespaces/{ns}/pods");
        let pods = state.objects.entry(collection_of_pods.clone()).or_default();
        let prefix = format!("{name}-");
        let mut stopping = Vec::new();
        for (pod_name, pod) in pods.iter_mut() {
            let removed = pod_name
                .strip_prefix(&prefix)
                .and_then(|i| i.parse::<u64>().ok())
                .is_some_and(|i| i >= replicas);
            if removed && pod["metadata"]["deletionTimestamp"].is_null() {
                pod["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                pod["status"]["conditions"] = json!([{ "type": "Ready", "status": "False" }]);
                stopping.push(pod_name.clone());
            }
        }
        let gone = std::time::Instant::now() + POD_SHUTDOWN;
        state.stopping.extend(
            stopping
                .into_iter()
                .map(|pod| (collection_of_pods.clone(), pod, gone)),
        );
        // A pod scaled back up before it was gone runs again.
        let wanted: BTreeSet<String> = (0..replicas).map(|i| format!("{name}-{i}")).collect();
        state
            .stopping
            .retain(|(c, pod, _)| *c != collection_of_pods || !wanted.contains(pod));
        // Owned as the controllers own theirs: a StatefulSet its pods, a Deployment's through
        // its ReplicaSet `NAME-HASH`, which labels them with the hash.
        let template = &object["spec"]["template"];
        let mut labels = template["metadata"]["labels"].clone();
        let owner = if collection.ends_with("/deployments") {
            labels["pod-template-hash"] = json!(TEMPLATE_HASH);
            json!({ "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": format!("{name}-{TEMPLATE_HASH}"), "uid": "uid-rs",
                    "controller": true })
        } else {
            json!({ "apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
                    "uid": object["metadata"]["uid"], "controller": true })
        };
        let pods = state.objects.entry(collection_of_pods).or_default();
        for i in 0..replicas {
            pods.insert(
                format!("{name}-{i}"),
                json!({
                    "metadata": { "name": format!("{name}-{i}"), "namespace": ns,
                                  "labels": labels, "ownerReferences": [owner] },
                    "spec": template["spec"],
                    "status": { "phase": "Running",
                                "conditions": [{ "type": "Ready", "status": "True" }] },
                }),
            );
        }
    }
    state
        .objects
        .entry(collection.to_owned())
        .or_default()
        .insert(name, object.clone());
    object
}

/// The exec subresource: a WebSocket on which the command's stdin, stdout, stderr and final
/// status travel as channels 0, 1, 2 and 3 (and 255 closes a channel).
async fn exec(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
    t: &Target,
) -> Response<Full<Bytes>> {
    let name = t.name.clone().unwrap_or_default();
    let params = query(&req);
    let pod = {
        let state = state.lock().expect("state");
        state
            .objects
            .get(&t.collection)
            .and_then(|c| c.get(&name))
            .cloned()
    };
    let Some(pod) = pod else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pods \"{name}\" not found"),
            &name,
        );
    };
    let container = params
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.clone());
    let spec = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| Some(c["name"].as_str().unwrap_or_default()) == container.as_deref())
        .cloned();
    let Some(spec) = spec else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("container {container:?} is not valid for pod {name}"),
            &name,
        );
    };
    // As the API server (a completed pod) and the kubelet (a container not running) refuse it.
    let phase = pod["status"]["phase"].as_str().unwrap_or("Running");
    if phase == "Succeeded" || phase == "Failed" {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("cannot exec into a container in a completed pod; current phase is {phase}"),
            &name,
        );
    }
    let not_running = pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| Some(c["name"].as_str().unwrap_or_default()) == container.as_deref())
        .is_some_and(|c| c["state"]["running"].is_null());
    if not_running {
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!(
                "container {:?} in pod {name} is not created or running",
                container.as_deref().unwrap_or_default()
            ),
            &name,
        );
    }
    // The container's environment and working directory, as its runtime would give them.
    let setting = Setting {
        env: spec["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_owned(),
                    e["value"].as_str()?.to_owned(),
                ))
            })
            .collect(),
        dir: spec["workingDir"].as_str().map(str::to_owned),
    };
    let argv: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let wants_stdin = params.iter().any(|(k, v)| k == "stdin" && v == "true");
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "not a WebSocket".into(),
            &name,
        );
    };
    let protocols = req
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|p| p.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let speaks = if state.lock().expect("state").exec_v4_only {
        "v4.channel.k8s.io"
    } else {
        "v5.channel.k8s.io"
    };
    if !protocols.split(',').any(|p| p.trim() == speaks) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("the fake speaks {speaks} only, not {protocols}"),
            &name,
        );
    }
    let accept = derive_accept_key(key.as_bytes());
    let killed = state
        .lock()
        .expect("state")
        .pod_kills
        .entry(format!("{}/{name}", t.collection))
        .or_insert_with(|| tokio::sync::watch::channel(false).0)
        .subscribe();
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        run_exec(ws, argv, setting, wants_stdin, killed).await;
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        header::HeaderValue::from_str(&accept).expect("an accept key"),
    );
    headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        header::HeaderValue::from_static(speaks),
    );
    response
}

fn channel(id: u8, data: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(id);
    frame.extend_from_slice(data);
    Message::binary(frame)
}

/// A container's environment variables and working directory.
struct Setting {
    env: Vec<(String, String)>,
    dir: Option<String>,
}

async fn run_exec<S>(
    ws: WebSocketStream<S>,
    argv: Vec<String>,
    setting: Setting,
    wants_stdin: bool,
    mut killed: tokio::sync::watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, mut rx) = ws.split();
    // As the API server does: a message of the channel byte alone opens each output channel
    // (the status channel too), which a client must not take for output or a status.
    for id in [1, 2, 3] {
        if tx.send(channel(id, &[])).await.is_err() {
            return;
        }
    }
    let spawned = argv.first().map(|program| {
        let mut command = tokio::process::Command::new(program);
        if let Some(dir) = &setting.dir {
            command.current_dir(dir);
        }
        command
            .envs(setting.env.iter().map(|(k, v)| (k, v)))
            .args(&argv[1..])
            .stdin(if wants_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own group, killed whole when the pod is deleted, as a container stopped.
            .process_group(0)
            .spawn()
    });
    let mut child = match spawned {
        Some(Ok(child)) => child,
        other => {
            let message = match other {
                Some(Err(e)) => format!(
                    "exec: {:?}: executable file not found in $PATH: {e}",
                    argv[0]
                ),
                _ => "exec: no command".to_owned(),
            };
            let status = json!({ "metadata": {}, "status": "Failure", "reason": "InternalError",
                                 "message": message });
            let _ = tx.send(channel(3, status.to_string().as_bytes())).await;
            let _ = tx.close().await;
            return;
        }
    };
    // Stdin as a kubelet takes it: each frame is written into the command's stdin before the
    // next is read, so a command that stops reading its stdin stops the client's sending (TCP
    // backpressure), while its output goes on being sent by the loop below. Once the client
    // leaves, stdin ends.
    let (left_tx, mut left_rx) = tokio::sync::oneshot::channel::<()>();
    let mut stdin = child.stdin.take();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = rx.next().await {
            let Message::Binary(data) = message else {
                continue;
            };
            match data.first() {
                Some(0) => {
                    if let Some(pipe) = stdin.as_mut()
                        && pipe.write_all(&data[1..]).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Some(255) if data.get(1) == Some(&0) => stdin = None,
                _ => {}
            }
        }
        drop(stdin);
        let _ = left_tx.send(());
    });
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    // The command ends, or is killed when its pod is deleted, as its container stops.
    let (exited_tx, exited) = tokio::sync::oneshot::channel();
    let waiter = tokio::spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            true = async { killed.wait_for(|k| *k).await.is_ok() } => {
                let group = child
                    .id()
                    .and_then(|id| rustix::process::Pid::from_raw(i32::try_from(id).ok()?));
                if let Some(group) = group {
                    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                }
                let _ = child.start_kill();
                child.wait().await
            }
        };
        let _ = exited_tx.send(status);
    });
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Message>(4);
    let err_tx = out_tx.clone();
    let pump = |mut pipe: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                id: u8,
                tx: tokio::sync::mpsc::Sender<Message>| {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 || tx.send(channel(id, &buf[..n])).await.is_err() {
                    break;
                }
            }
        })
    };
    let pump_out = pump(Box::new(stdout), 1, out_tx);
    let pump_err = pump(Box::new(stderr), 2, err_tx);
    // Output to the client until the output pipes close or the client leaves.
    let client_left = loop {
        tokio::select! {
            outgoing = out_rx.recv() => match outgoing {
                Some(message) => {
                    if tx.send(message).await.is_err() {
                        break true;
                    }
                }
                None => break false,
            },
            _ = &mut left_rx => break true,
        }
    };
    if client_left {
        // As a kubelet does: the connection gone, the command is not killed. Its stdin ends
        // and it runs on, its output read and dropped.
        tokio::spawn(async move {
            while out_rx.recv().await.is_some() {}
            let _ = (pump_out.await, pump_err.await, reader.await, waiter.await);
        });
        return;
    }
    let _ = (pump_out.await, pump_err.await);
    let exited = exited
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("the command's waiter ended")));
    let status = match exited {
        Ok(s) if s.success() => json!({ "metadata": {}, "status": "Success" }),
        Ok(s) => {
            let code = s.code().unwrap_or(137);
            json!({ "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                    "message": format!("command terminated with non-zero exit code: {code}"),
                    "details": { "causes": [{ "reason": "ExitCode", "message": code.to_string() }] } })
        }
        Err(e) => json!({ "metadata": {}, "status": "Failure", "reason": "InternalError",
                          "message": e.to_string() }),
    };
    let _ = tx.send(channel(3, status.to_string().as_bytes())).await;
    let _ = tx.close().await;
    // The reader reads on until the client closes, so that stdin it is still sending never
    // blocks it (writes into the ended command's stdin fail and are dropped).
    let _ = reader.await;
}
