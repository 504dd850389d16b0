//! The instance count from a Kubernetes StatefulSet: `GET
//! /apis/apps/v1/namespaces/{ns}/statefulsets/{name}`, field `spec.replicas`.
//!
//! `spec.replicas` (the desired count) rather than `status.replicas`: when an operator
//! scales from 4 to 3, pod 3 is being stopped while the other three already own its
//! partitions under the new count; a new pod that is still being scheduled leaves its
//! partitions paused until it starts, never owned twice (the sink's fence sees to that).
//!
//! In a pod the defaults are the cluster's own: the API server from
//! `KUBERNETES_SERVICE_HOST`/`_PORT`, the service account's token (re-read on every
//! request: projected tokens rotate) and CA, and its namespace. The service account
//! needs `get` on the StatefulSet (k8s/processor.yaml has the Role).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum KubernetesError {
    #[error("no Kubernetes API server: KUBERNETES_SERVICE_HOST is not set (not in a pod? pass --kube-api)")]
    NotInCluster,
    #[error("no namespace: pass --kube-namespace (or POD_NAMESPACE), or run in a pod ({0})")]
    NoNamespace(std::io::Error),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("building the Kubernetes API client: {0}")]
    Client(reqwest::Error),
    #[error("reading StatefulSet {name} from {url}: {source}")]
    Request {
        name: String,
        url: String,
        source: reqwest::Error,
    },
    #[error("StatefulSet {name} at {url}: HTTP {status} ({body})")]
    Status {
        name: String,
        url: String,
        status: u16,
        body: String,
    },
}

#[derive(Deserialize)]
struct StatefulSet {
    spec: Spec,
}

#[derive(Deserialize)]
struct Spec {
    /// Kubernetes defaults an absent `replicas` to 1.
    replicas: Option<u32>,
}

/// Reads one StatefulSet's `spec.replicas`.
pub struct StatefulSetReplicas {
    name: String,
    url: String,
    token: Option<PathBuf>,
    client: reqwest::blocking::Client,
}

impl StatefulSetReplicas {
    /// `api`: the API server's base URL (default: in-cluster); `namespace`: default
    /// `POD_NAMESPACE`, then the service account's.
    pub fn new(
        name: &str,
        api: Option<&str>,
        namespace: Option<&str>,
    ) -> Result<StatefulSetReplicas, KubernetesError> {
        let sa = Path::new(SERVICE_ACCOUNT);
        let mut builder = reqwest::blocking::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT);
        let (base, token) = match api {
            Some(url) => (url.trim_end_matches('/').to_owned(), None),
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST")
                    .map_err(|_| KubernetesError::NotInCluster)?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host
                };
                let ca = read(&sa.join("ca.crt"))?;
                let cert = reqwest::Certificate::from_pem(ca.as_bytes())
                    .map_err(KubernetesError::Client)?;
                builder = builder.add_root_certificate(cert);
                (format!("https://{host}:{port}"), Some(sa.join("token")))
            }
        };
        let namespace = match namespace
            .map(str::to_owned)
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
        {
            Some(ns) => ns,
            None => std::fs::read_to_string(sa.join("namespace"))
                .map(|s| s.trim().to_owned())
                .map_err(KubernetesError::NoNamespace)?,
        };
        Ok(StatefulSetReplicas {
            name: name.to_owned(),
            url: format!("{base}/apis/apps/v1/namespaces/{namespace}/statefulsets/{name}"),
            token,
            client: builder.build().map_err(KubernetesError::Client)?,
        })
    }

    pub fn read(&self) -> Result<u32, KubernetesError> {
        let request_error = |source| KubernetesError::Request {
            name: self.name.clone(),
            url: self.url.clone(),
            source,
        };
        let mut request = self.client.get(&self.url);
        if let Some(path) = &self.token {
            request = request.bearer_auth(read(path)?.trim());
        }
        let response = request.send().map_err(request_error)?;
        let status = response.status();
        if !status.is_success() {
            let body: String = response
                .text()
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            return Err(KubernetesError::Status {
                name: self.name.clone(),
                url: self.url.clone(),
                status: status.as_u16(),
                body,
            });
        }
        let set: StatefulSet = response.json().map_err(request_error)?;
        Ok(set.spec.replicas.unwrap_or(1))
    }
}

fn read(path: &Path) -> Result<String, KubernetesError> {
    std::fs::read_to_string(path).map_err(|source| KubernetesError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{CountSource, InstanceCount};
    use paydedup_testkit::KubernetesApiDouble;

    /// The real client against the API double: the replicas, a change followed, and a
    /// StatefulSet that is not there named in the error.
    #[test]
    fn replicas_are_read_and_followed() {
        let api = KubernetesApiDouble::start("payments", "paydedup", 3).unwrap();
        let set = StatefulSetReplicas::new("paydedup", Some(&api.url()), Some("payments")).unwrap();
        assert_eq!(set.read().unwrap(), 3);
        let count =
            InstanceCount::start(CountSource::StatefulSet(set), Duration::from_millis(50)).unwrap();
        assert_eq!(count.get(), 3);
        api.set_replicas(5);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while count.get() != 5 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(count.get(), 5);
        let missing =
            StatefulSetReplicas::new("other", Some(&api.url()), Some("payments")).unwrap();
        let e = missing.read().unwrap_err().to_string();
        assert!(e.contains("StatefulSet other") && e.contains("404"), "{e}");
    }

    /// An API server that is away keeps the last count (ownership must not flap).
    #[test]
    fn an_unreachable_api_keeps_the_last_count() {
        let api = KubernetesApiDouble::start("payments", "paydedup", 2).unwrap();
        let url = api.url();
        let set = StatefulSetReplicas::new("paydedup", Some(&url), Some("payments")).unwrap();
        let count =
            InstanceCount::start(CountSource::StatefulSet(set), Duration::from_millis(50)).unwrap();
        drop(api);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(count.get(), 2);
    }
}
