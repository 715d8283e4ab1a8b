//! Names from Docker: which container a sandbox namespace belongs to, and
//! which overlay network a `1-<id>` namespace is, asked of the Engine API on
//! its unix socket. Where no dockerd answers, nothing changes.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

/// Where dockerd listens unless `DOCKER_HOST` says otherwise.
pub const SOCKET: &str = "/var/run/docker.sock";
/// Oldest API version that has what is read here (Docker 1.13); newer
/// daemons answer it too.
const API: &str = "v1.25";

/// The Engine API of the dockerd on this host.
#[derive(Debug, Clone)]
pub struct Engine {
    socket: PathBuf,
    /// Sandbox keys by container id, with the endpoints the container had
    /// then: a container keeps its sandbox while it runs, so it is
    /// inspected once, not at every look (a host of hundreds of containers
    /// would be hundreds of requests each time). A restart gives it a new
    /// sandbox and new endpoints, and so another look.
    keys: HashMap<String, (Vec<String>, PathBuf)>,
}

#[derive(Deserialize)]
struct Listed {
    #[serde(rename = "Id")]
    id: String,
    /// `/name`: read at every look, as `docker rename` changes it.
    #[serde(rename = "Names", default)]
    names: Vec<String>,
    #[serde(rename = "NetworkSettings", default)]
    settings: Option<ListedSettings>,
}

#[derive(Deserialize)]
struct ListedSettings {
    #[serde(rename = "Networks", default)]
    networks: Option<HashMap<String, Endpoint>>,
}

#[derive(Deserialize)]
struct Endpoint {
    #[serde(rename = "EndpointID", default)]
    id: Option<String>,
}

impl Listed {
    /// Its endpoints' ids, sorted.
    fn endpoints(&self) -> Vec<String> {
        let mut ids: Vec<String> = (self.settings.iter())
            .flat_map(|s| s.networks.iter().flatten())
            .filter_map(|(_, e)| e.id.clone())
            .collect();
        ids.sort();
        ids
    }
}

#[derive(Deserialize)]
struct Inspected {
    #[serde(rename = "NetworkSettings")]
    settings: Option<Settings>,
}

#[derive(Deserialize)]
struct Settings {
    #[serde(rename = "SandboxKey")]
    sandbox_key: Option<String>,
}

#[derive(Deserialize)]
struct Network {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name")]
    name: String,
}

impl Engine {
    /// The socket `DOCKER_HOST` names (`unix://PATH`), else [`SOCKET`], if it exists.
    pub fn find() -> Option<Engine> {
        let socket = match std::env::var("DOCKER_HOST") {
            Ok(h) => PathBuf::from(h.strip_prefix("unix://")?),
            Err(_) => PathBuf::from(SOCKET),
        };
        // Through `/var/run`'s link once, not at every connection.
        let socket = std::fs::canonicalize(&socket).unwrap_or(socket);
        socket.exists().then_some(Engine {
            socket,
            keys: HashMap::new(),
        })
    }

    /// `GET path` as JSON. HTTP/1.0, so that the answer is never chunked
    /// and ends when the daemon closes the connection.
    fn get<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T> {
        let mut s = UnixStream::connect(&self.socket)
            .with_context(|| format!("connect to {}", self.socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        write!(s, "GET /{API}{path} HTTP/1.0\r\nHost: docker\r\n\r\n")?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .with_context(|| format!("read the answer to GET {path}"))?;
        let body = body(&raw).with_context(|| format!("GET {path}"))?;
        serde_json::from_slice(body).with_context(|| format!("GET {path}: unexpected JSON"))
    }

    /// Names of the sandbox namespaces: container names by sandbox key (a
    /// path under `/var/run/docker/netns`), and overlay networks by the
    /// file name their namespace has there (`1-` and the network id's
    /// first ten characters).
    pub fn sandbox_names(&mut self) -> Result<Names> {
        let mut names = Names::default();
        let listed: Vec<Listed> = self.get("/containers/json")?;
        self.keys.retain(|id, _| listed.iter().any(|c| c.id == *id));
        for c in listed {
            let endpoints = c.endpoints();
            let key = match self.keys.get(&c.id).filter(|(e, _)| *e == endpoints) {
                Some((_, k)) => k.clone(),
                None => {
                    // A container may be gone between the list and this, or
                    // have no sandbox yet (asked again next time).
                    let Ok(i) = self.get::<Inspected>(&format!("/containers/{}/json", c.id)) else {
                        continue;
                    };
                    let key = i.settings.and_then(|s| s.sandbox_key);
                    let Some(key) = key.filter(|k| !k.is_empty()).map(PathBuf::from) else {
                        continue;
                    };
                    self.keys.insert(c.id.clone(), (endpoints, key.clone()));
                    key
                }
            };
            if let Some(name) = own_name(&c.names) {
                names.by_path.entry(key).or_insert(name);
            }
        }
        let networks: Vec<Network> =
            self.get("/networks?filters=%7B%22driver%22%3A%5B%22overlay%22%5D%7D")?;
        names.overlays = networks.into_iter().map(|n| (n.id, n.name)).collect();
        Ok(names)
    }
}

/// What [`Engine::sandbox_names`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    by_path: HashMap<PathBuf, String>,
    /// (network id, name) of overlay networks.
    overlays: Vec<(String, String)>,
}

impl Names {
    /// The name of the namespace file at `path`, if Docker knows it.
    pub fn of(&self, path: &Path) -> Option<String> {
        if let Some(n) = self.by_path.get(path) {
            return Some(n.clone());
        }
        // Docker's paths may differ from ours by the /run symlink.
        let file = path.file_name()?.to_str()?;
        if let Some((_, n)) = self
            .by_path
            .iter()
            .find(|(p, _)| p.file_name().and_then(|f| f.to_str()) == Some(file))
        {
            return Some(n.clone());
        }
        overlay_name(file, &self.overlays)
    }

    #[cfg(test)]
    pub fn fixture(by_path: &[(&str, &str)], overlays: &[(&str, &str)]) -> Names {
        Names {
            by_path: by_path
                .iter()
                .map(|(p, n)| (PathBuf::from(p), n.to_string()))
                .collect(),
            overlays: overlays
                .iter()
                .map(|(i, n)| (i.to_string(), n.to_string()))
                .collect(),
        }
    }
}

/// `1-3f2a9c1b7e` is the namespace of the overlay network whose id starts
/// with `3f2a9c1b7e` (the number is the network's epoch).
fn overlay_name(file: &str, overlays: &[(String, String)]) -> Option<String> {
    let (epoch, prefix) = file.split_once('-')?;
    if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_digit()) || prefix.len() < 6 {
        return None;
    }
    overlays
        .iter()
        .find(|(id, _)| id.starts_with(prefix))
        .map(|(_, n)| n.clone())
}

/// A container's own name among those the list gives it: `db`, not a
/// legacy link's `/web/db`.
fn own_name(names: &[String]) -> Option<String> {
    let own = names.iter().find(|n| n.rfind('/') == Some(0));
    Some(own.or(names.first())?.trim_start_matches('/').to_string())
}

/// The body of an HTTP answer, if its status is 200.
fn body(raw: &[u8]) -> Result<&[u8]> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(raw)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => bail!("the answer ended in its headers"),
    };
    match resp.code {
        Some(200) => Ok(&raw[len..]),
        code => {
            let text = String::from_utf8_lossy(&raw[len..]);
            bail!("status {}: {}", code.unwrap_or(0), text.trim())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_container_s_endpoints_change_when_it_restarts() {
        let listed = |json: &str| serde_json::from_str::<Listed>(json).unwrap().endpoints();
        let two = r#"{"Id":"c","Names":["/web"],"NetworkSettings":{"Networks":
            {"b":{"EndpointID":"e2"},"a":{"EndpointID":"e1"}}}}"#;
        assert_eq!(listed(two), ["e1", "e2"]);
        let restarted = r#"{"Id":"c","NetworkSettings":{"Networks":{"a":{"EndpointID":"e3"}}}}"#;
        assert_eq!(listed(restarted), ["e3"]);
        // Older daemons or a container with no network say less.
        assert!(listed(r#"{"Id":"c","NetworkSettings":{"Networks":null}}"#).is_empty());
        assert!(listed(r#"{"Id":"c"}"#).is_empty());
    }

    #[test]
    fn a_container_is_named_by_its_own_name_not_a_link() {
        let v = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(own_name(&v(&["/web/db", "/db"])).as_deref(), Some("db"));
        assert_eq!(own_name(&v(&["/db", "/web/db"])).as_deref(), Some("db"));
        assert_eq!(own_name(&v(&["/a/b"])).as_deref(), Some("a/b"));
        assert_eq!(own_name(&[]), None);
    }

    #[test]
    fn body_of_an_answer() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[{\"Id\":\"ab\"}]";
        assert_eq!(body(ok).unwrap(), b"[{\"Id\":\"ab\"}]");
        let err = b"HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"page not found\"}";
        assert_eq!(
            body(err).unwrap_err().to_string(),
            "status 404: {\"message\":\"page not found\"}"
        );
        assert!(body(b"HTTP/1.0 200 OK\r\nContent-").is_err());
    }

    #[test]
    fn names_by_sandbox_key_and_overlay_id() {
        let n = Names::fixture(
            &[("/var/run/docker/netns/63688d990477", "web")],
            &[("3f2a9c1b7e55aa", "ov")],
        );
        assert_eq!(
            n.of(Path::new("/var/run/docker/netns/63688d990477")),
            Some("web".into())
        );
        assert_eq!(
            n.of(Path::new("/run/docker/netns/63688d990477")),
            Some("web".into())
        );
        assert_eq!(
            n.of(Path::new("/var/run/docker/netns/1-3f2a9c1b7e")),
            Some("ov".into())
        );
        assert_eq!(n.of(Path::new("/var/run/docker/netns/1-ffffffffff")), None);
        assert_eq!(n.of(Path::new("/var/run/docker/netns/ingress_sbox")), None);
    }
}
