//! A Kubernetes-API peer for the `--cluster` tests: lists pods of a namespace
//! by label selector and proxies `/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/...`
//! to `{podIP}:{port}` as kube-apiserver does: the client's `Authorization`
//! (its credential for the API server) is not passed on, the agent's answer
//! streams back unchanged, and an agent that cannot be reached is a 503 Status.
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

type Body = BoxBody<Bytes, hyper::Error>;

pub struct KubeProxy {
    pub url: String,
    pods: Arc<Mutex<Vec<Value>>>,
    /// Requests proxied to agents (path and query).
    pub proxied: Arc<Mutex<Vec<String>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// An agent pod on `node` answering on 127.0.0.1:`port` (a container port
/// named `port_name`: `api`, or `http` as deploy/'s DaemonSet names it).
pub fn agent_pod(name: &str, node: &str, port: u16, port_name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "flowpol", "uid": format!("uid-{name}"),
                        "labels": {"app.kubernetes.io/name": "flowpol"}},
           "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "flowpol",
                    "ports": [{"name": port_name, "containerPort": port}]}]},
           "status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}})
}

fn full(status: StatusCode, v: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(v.to_string()))
                .map_err(|e: Infallible| match e {})
                .boxed(),
        )
        .unwrap()
}

fn failure(code: u16, reason: &str, message: &str) -> Response<Body> {
    full(
        StatusCode::from_u16(code).unwrap(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

fn selector_matches(pod: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|req| {
        let (k, v) = req
            .split_once('=')
            .expect("the test peer only knows k=v selectors");
        pod["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

impl KubeProxy {
    pub async fn start(pods: Vec<Value>) -> KubeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let pods = Arc::new(Mutex::new(pods));
        let proxied = Arc::new(Mutex::new(Vec::new()));
        let (p2, x2) = (pods.clone(), proxied.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (pods, proxied) = (p2.clone(), x2.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (pods, proxied) = (pods.clone(), proxied.clone());
                        async move { Ok::<_, Infallible>(handle(pods, proxied, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        KubeProxy {
            url,
            pods,
            proxied,
            accept,
        }
    }

    /// A kubeconfig file pointing at this peer.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig.yaml");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\nusers:\n- name: test\n  user:\n    token: kube-credential\n",
                self.url
            ),
        )
        .unwrap();
        path
    }

    pub fn kube_client(&self) -> kube::Client {
        let mut c = kube::Config::new(self.url.parse().unwrap());
        c.default_namespace = "default".into();
        flowpol::serve::cluster::agent_client(c).unwrap()
    }
}

async fn handle(
    pods: Arc<Mutex<Vec<Value>>>,
    proxied: Arc<Mutex<Vec<String>>>,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(7, '/').collect();
    // api/v1/namespaces/{ns}/pods
    if parts.len() == 5 && parts[..3] == ["api", "v1", "namespaces"] && parts[4] == "pods" {
        let selector = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("labelSelector="))
            .map(decode)
            .unwrap_or_default();
        let items: Vec<Value> = pods
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["namespace"] == parts[3] && selector_matches(p, &selector))
            .cloned()
            .collect();
        return full(
            StatusCode::OK,
            json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}),
        );
    }
    // api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/{rest}
    if parts.len() == 7 && parts[4] == "pods" && parts[6].starts_with("proxy/") {
        let (name, port) = parts[5].split_once(':').unwrap_or((parts[5], "80"));
        let rest = &parts[6]["proxy".len()..];
        let Some(pod) = pods
            .lock()
            .unwrap()
            .iter()
            .find(|p| p["metadata"]["namespace"] == parts[3] && p["metadata"]["name"] == name)
            .cloned()
        else {
            return failure(404, "NotFound", &format!("pods \"{name}\" not found"));
        };
        let ip = pod["status"]["podIP"].as_str().unwrap().to_string();
        let target = format!("{ip}:{port}");
        proxied.lock().unwrap().push(format!("{rest}?{query}"));
        let stream = match TcpStream::connect(&target).await {
            Ok(s) => s,
            Err(e) => {
                return failure(
                    503,
                    "ServiceUnavailable",
                    &format!("error trying to reach service: dial tcp {target}: {e}"),
                );
            }
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut out = Request::get(format!("{rest}?{query}")).header("host", &target);
        for (k, v) in req.headers() {
            // The API server authenticated the client with it; agents never see it.
            if k != "authorization" && k != "host" {
                out = out.header(k, v);
            }
        }
        let res = match sender
            .send_request(out.body(Empty::<Bytes>::new()).unwrap())
            .await
        {
            Ok(r) => r,
            Err(e) => return failure(503, "ServiceUnavailable", &format!("proxy error: {e}")),
        };
        let (parts, body) = res.into_parts();
        return Response::from_parts(parts, body.boxed());
    }
    failure(
        404,
        "NotFound",
        &format!("the test peer does not serve {path}"),
    )
}
