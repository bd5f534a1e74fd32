//! A Kubernetes-API peer for tests: speaks the list and watch protocol over plain HTTP the way
//! kube-apiserver does, so kube-rs talks to it unchanged (`kube::Config::new(peer.url())`).
//!
//! - `GET <collection>`: a `<Kind>List` with `metadata.resourceVersion`;
//! - `GET <collection>?watch=1&resourceVersion=N`: chunked JSON lines `{"type":"ADDED"|
//!   "MODIFIED"|"DELETED"|"BOOKMARK","object":...}` for every change after N, then live ones;
//!   when N is older than the compacted history, one `ERROR` event with a `410 Gone` Status;
//! - [`ApiServer::drop_connections`] cuts every open connection (as a restarting apiserver or
//!   a load balancer would), [`ApiServer::compact`] forgets history so old watches get `410`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The collections the peer serves, by kind.
pub const COLLECTIONS: [(&str, &str, &str); 8] = [
    ("Namespace", "v1", "/api/v1/namespaces"),
    ("Node", "v1", "/api/v1/nodes"),
    ("Pod", "v1", "/api/v1/pods"),
    ("Service", "v1", "/api/v1/services"),
    (
        "EndpointSlice",
        "discovery.k8s.io/v1",
        "/apis/discovery.k8s.io/v1/endpointslices",
    ),
    (
        "NetworkPolicy",
        "networking.k8s.io/v1",
        "/apis/networking.k8s.io/v1/networkpolicies",
    ),
    ("ReplicaSet", "apps/v1", "/apis/apps/v1/replicasets"),
    ("Job", "batch/v1", "/apis/batch/v1/jobs"),
];

#[derive(Default)]
struct Collection {
    objects: BTreeMap<String, Value>,
    /// (resourceVersion, event type, object) in order.
    history: Vec<(u64, &'static str, Value)>,
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
    lists: usize,
    watches: usize,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Watches from a resourceVersion below this get `410 Gone`.
    compacted: u64,
    collections: HashMap<String, Collection>,
    connections: Vec<JoinHandle<()>>,
}

#[derive(Clone)]
pub struct ApiServer {
    url: String,
    state: Arc<Mutex<State>>,
    accept: Arc<JoinHandle<()>>,
}

fn path_of(kind: &str) -> &'static str {
    COLLECTIONS
        .iter()
        .find(|(k, _, _)| *k == kind)
        .map(|(_, _, p)| *p)
        .unwrap_or_else(|| panic!("the test apiserver does not serve kind {kind}"))
}

fn key_of(obj: &Value) -> String {
    let m = &obj["metadata"];
    format!(
        "{}/{}",
        m["namespace"].as_str().unwrap_or(""),
        m["name"].as_str().expect("object needs metadata.name")
    )
}

fn line(kind: &str, obj: &Value) -> Bytes {
    let mut s = serde_json::to_string(&json!({"type": kind, "object": obj})).unwrap();
    s.push('\n');
    Bytes::from(s)
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, v: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl ApiServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        {
            let mut st = state.lock().unwrap();
            st.rv = 100;
            for (_, _, p) in COLLECTIONS {
                st.collections.insert(p.to_string(), Collection::default());
            }
        }
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st2 = st.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st2.clone();
                        async move { Ok::<_, Infallible>(handle(st, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                let mut s = st.lock().unwrap();
                s.connections.retain(|c| !c.is_finished());
                s.connections.push(conn);
            }
        });
        Self {
            url,
            state,
            accept: Arc::new(accept),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kube client configuration pointing at this peer.
    pub fn kube_config(&self) -> kube::Config {
        let mut c = kube::Config::new(self.url.parse().unwrap());
        c.default_namespace = "default".into();
        c
    }

    /// Creates or replaces an object (`ADDED` / `MODIFIED`); returns its resourceVersion.
    pub fn apply(&self, mut obj: Value) -> u64 {
        let kind = obj["kind"].as_str().expect("object needs kind").to_string();
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let col = st.collections.get_mut(path_of(&kind)).unwrap();
        let ev = if col.objects.insert(key_of(&obj), obj.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        col.history.push((rv, ev, obj.clone()));
        let l = line(ev, &obj);
        col.watchers.retain(|w| w.send(l.clone()).is_ok());
        rv
    }

    /// Deletes an object (`DELETED`).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let col = st.collections.get_mut(path_of(kind)).unwrap();
        let mut obj = col
            .objects
            .remove(&format!("{namespace}/{name}"))
            .unwrap_or_else(|| panic!("no {kind} {namespace}/{name} to delete"));
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        col.history.push((rv, "DELETED", obj.clone()));
        let l = line("DELETED", &obj);
        col.watchers.retain(|w| w.send(l.clone()).is_ok());
    }

    /// Sends a `BOOKMARK` to every open watch.
    pub fn bookmark(&self) {
        let mut st = self.state.lock().unwrap();
        let rv = st.rv;
        for (_, _, p) in COLLECTIONS {
            let (kind, api_version, _) = COLLECTIONS.iter().find(|c| c.2 == p).unwrap();
            let bm = json!({"kind": kind, "apiVersion": api_version,
                            "metadata": {"resourceVersion": rv.to_string()}});
            let l = line("BOOKMARK", &bm);
            let col = st.collections.get_mut(p).unwrap();
            col.watchers.retain(|w| w.send(l.clone()).is_ok());
        }
    }

    /// Changes state while nobody watches and forgets the history, as etcd compaction does:
    /// the next watch from an older resourceVersion gets `410 Gone` and must re-list.
    pub fn change_unseen_and_compact(&self, f: impl FnOnce(&ApiServer)) {
        self.drop_connections();
        // Watchers that reconnect meanwhile only see events after the compaction point.
        {
            let mut st = self.state.lock().unwrap();
            st.compacted = u64::MAX;
        }
        f(self);
        let mut st = self.state.lock().unwrap();
        st.compacted = st.rv;
        for col in st.collections.values_mut() {
            col.history.clear();
            col.watchers.clear();
        }
        drop(st);
        self.drop_connections();
    }

    /// Cuts every open connection (list and watch streams die mid-flight).
    pub fn drop_connections(&self) {
        let mut st = self.state.lock().unwrap();
        for c in st.connections.drain(..) {
            c.abort();
        }
        for col in st.collections.values_mut() {
            col.watchers.clear();
        }
    }

    /// How many list requests a kind's collection served.
    pub fn lists(&self, kind: &str) -> usize {
        self.state.lock().unwrap().collections[path_of(kind)].lists
    }

    /// How many watch requests a kind's collection served.
    pub fn watches(&self, kind: &str) -> usize {
        self.state.lock().unwrap().collections[path_of(kind)].watches
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if Arc::strong_count(&self.accept) == 1 {
            self.accept.abort();
            if let Ok(mut st) = self.state.lock() {
                for c in st.connections.drain(..) {
                    c.abort();
                }
            }
        }
    }
}

fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Body> {
    if req.method() != hyper::Method::GET {
        return full(
            StatusCode::METHOD_NOT_ALLOWED,
            status(405, "MethodNotAllowed", "the test apiserver is read-only"),
        );
    }
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut st = state.lock().unwrap();
    let compacted = st.compacted;
    let current = st.rv;
    let Some((kind, api_version, _)) = COLLECTIONS.iter().find(|c| c.2 == path) else {
        return full(
            StatusCode::NOT_FOUND,
            status(404, "NotFound", &format!("no collection at {path}")),
        );
    };
    let col = st.collections.get_mut(&path).unwrap();
    let watch = matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
    if !watch {
        col.lists += 1;
        let items: Vec<Value> = col.objects.values().cloned().collect();
        return full(
            StatusCode::OK,
            json!({"kind": format!("{kind}List"), "apiVersion": api_version,
                   "metadata": {"resourceVersion": current.to_string()}, "items": items}),
        );
    }
    col.watches += 1;
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(current);
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    if from < compacted {
        let gone = status(
            410,
            "Expired",
            &format!("too old resource version: {from} ({compacted})"),
        );
        let _ = tx.send(line("ERROR", &gone));
        drop(tx);
    } else {
        for (rv, ev, obj) in &col.history {
            if *rv > from {
                let _ = tx.send(line(ev, obj));
            }
        }
        col.watchers.push(tx);
    }
    let stream = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|o| o.map(|b| Ok::<_, Infallible>(Frame::data(b))))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .unwrap()
}

/// Test objects.
pub mod objects {
    use serde_json::{Value, json};

    pub fn namespace(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "uid": format!("ns-{name}"), "labels": {"kubernetes.io/metadata.name": name}}})
    }

    pub fn node(name: &str, ip: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": name, "uid": format!("node-{name}")},
               "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                         {"type": "Hostname", "address": name}]}})
    }

    /// A running pod owned by ReplicaSet `<app>-<hash>` (hash `5d8f9c7b6`).
    pub fn deployment_pod(ns: &str, name: &str, uid: &str, ip: &str, app: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns, "uid": uid,
                            "labels": {"app": app, "pod-template-hash": "5d8f9c7b6"},
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                                 "name": format!("{app}-5d8f9c7b6"), "uid": format!("rs-{app}"),
                                                 "controller": true}]},
               "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "img",
                        "ports": [{"name": "http", "containerPort": 8080}]}]},
               "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
    }

    pub fn replicaset(ns: &str, app: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
               "metadata": {"name": format!("{app}-5d8f9c7b6"), "namespace": ns, "uid": format!("rs-{app}"),
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": app,
                                                 "uid": format!("deploy-{app}"), "controller": true}]},
               "spec": {"selector": {"matchLabels": {"app": app, "pod-template-hash": "5d8f9c7b6"}},
                        "template": {"metadata": {"labels": {"app": app}}}}})
    }

    /// Service `port` → `target` (a number or a port name).
    pub fn service(ns: &str, name: &str, cluster_ip: &str, port: u16, target: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": ns, "uid": format!("svc-{name}")},
               "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "selector": {"app": name},
                        "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": target}]}})
    }

    pub fn endpoint_slice(ns: &str, service: &str, ips: &[&str], port: u16) -> Value {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": format!("{service}-abcde"), "namespace": ns,
                            "labels": {"kubernetes.io/service-name": service}},
               "addressType": "IPv4",
               "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
               "ports": [{"name": "http", "protocol": "TCP", "port": port}]})
    }
}
