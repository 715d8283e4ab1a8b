//! A minimal HTTP/1.1 responder for `/metrics`: one request per connection,
//! `GET` or `HEAD`, the last published text. Enough for Prometheus and curl;
//! a web framework would be most of tracer's dependencies for one route.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::Published;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Longest request head read: a scrape's is a few hundred bytes.
const MAX_HEAD: usize = 8192;

/// Serves `published` on `listener` until the runtime stops.
pub fn spawn(listener: TcpListener, published: Published) {
    tokio::spawn(async move {
        loop {
            // A failed accept ends that connection, not the server.
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors, say: wait instead of spinning on the error.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let published = published.clone();
            tokio::spawn(async move {
                // A client that sends nothing is not held forever.
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), serve(stream, published)).await;
            });
        }
    });
}

async fn serve(mut stream: TcpStream, published: Published) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let response = respond(&line, &published);
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// The whole response to a request line.
fn respond(request_line: &str, published: &Published) -> Vec<u8> {
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let text = published.lock().map(|t| t.clone()).unwrap_or_default();
            ("200 OK", CONTENT_TYPE, text)
        }
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "tracer serves /metrics only\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET /metrics\n".to_string(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn routes() {
        let p: Published = Arc::new(Mutex::new("# EOF\n".into()));
        let ok = String::from_utf8(respond("GET /metrics HTTP/1.1", &p)).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(CONTENT_TYPE) && ok.contains("Content-Length: 6\r\n"));
        assert!(ok.ends_with("\r\n\r\n# EOF\n"));
        let head = String::from_utf8(respond("HEAD /metrics?x=1 HTTP/1.1", &p)).unwrap();
        assert!(head.contains("Content-Length: 6") && head.ends_with("\r\n\r\n"));
        let missing = String::from_utf8(respond("GET / HTTP/1.1", &p)).unwrap();
        assert!(missing.starts_with("HTTP/1.1 404"));
        let post = String::from_utf8(respond("POST /metrics HTTP/1.1", &p)).unwrap();
        assert!(post.starts_with("HTTP/1.1 405"));
    }
}
