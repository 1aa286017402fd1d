//! A fault-injecting TCP proxy in front of a real service, on loopback, for faults the service
//! cannot be made to produce itself: answering HTTP errors or garbage in its place, refusing
//! connections, or dropping its answers (requests reach it, answers never come back). Switching the fault drops the
//! connections opened under the previous one, so pooled clients meet the new fault at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards bytes both ways.
    Pass,
    /// Answers every HTTP request with this status and a JSON error body.
    Status(u16),
    /// Answers every HTTP request 200 with a body that is not what was asked for.
    Garbage,
    /// Closes every connection at once.
    Refuse,
    /// Forwards requests to the service but drops its answers: what was asked is done, and the
    /// client never learns it.
    DropReplies,
    /// Forwards both ways until a client sends these bytes; then the service's answer to them is
    /// withheld and the connection cut: what was asked is done, and the client meets a broken
    /// connection instead of the answer. Once per proxy (then it forwards as `Pass`); counted in
    /// [`FaultProxy::cuts`].
    CutAfter(&'static str),
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Connections cut by [`Fault::CutAfter`].
    pub cuts: Arc<AtomicUsize>,
    mode: watch::Sender<Fault>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on a free loopback port in front of `upstream`, starting with `fault`.
    pub async fn start(upstream: SocketAddr, fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let (mode, watching) = watch::channel(fault);
        let cuts = Arc::new(AtomicUsize::new(0));
        let counted = cuts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let mut watching = watching.clone();
                let fault = *watching.borrow_and_update();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let served = serve(client, upstream, fault, counted);
                    tokio::select! {
                        _ = served => {}
                        _ = watching.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            cuts,
            mode,
            task,
        }
    }

    /// Switches the fault; connections opened under the previous one are dropped.
    pub fn set(&self, fault: Fault) {
        self.mode.send_replace(fault);
    }

    /// `http://<addr>` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, fault: Fault, cuts: Arc<AtomicUsize>) {
    match fault {
        Fault::CutAfter(pattern) => {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut server_read, mut server_write) = server.into_split();
            let (mut client_read, mut client_write) = client.into_split();
            let seen = AtomicBool::new(false);
            let forward = async {
                let mut buffer = vec![0u8; 64 * 1024];
                let mut recent: Vec<u8> = Vec::new();
                loop {
                    let n = match client_read.read(&mut buffer).await {
                        Ok(n) if n > 0 => n,
                        _ => return,
                    };
                    // Noted before it is forwarded, so the answer cannot overtake the note.
                    recent.extend_from_slice(&buffer[..n]);
                    if recent
                        .windows(pattern.len())
                        .any(|w| w == pattern.as_bytes())
                    {
                        seen.store(true, Ordering::SeqCst);
                    }
                    let keep = recent.len().saturating_sub(pattern.len());
                    recent.drain(..keep);
                    if server_write.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                }
            };
            let back = async {
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    let n = match server_read.read(&mut buffer).await {
                        Ok(n) if n > 0 => n,
                        _ => return,
                    };
                    if seen.load(Ordering::SeqCst)
                        && cuts
                            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                            .is_ok()
                    {
                        return; // withheld: both connections close as this returns
                    }
                    if client_write.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = forward => {}
                _ = back => {}
            }
        }
        Fault::Pass => {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        }
        Fault::Refuse => {}
        Fault::DropReplies => {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut server_read, mut server_write) = server.into_split();
            let (mut client_read, _client_write) = client.into_split();
            let forward = tokio::io::copy(&mut client_read, &mut server_write);
            let mut sink = tokio::io::sink();
            let drop_answers = tokio::io::copy(&mut server_read, &mut sink);
            let _ = tokio::join!(forward, drop_answers);
        }
        Fault::Status(_) | Fault::Garbage => {
            // One answer per request head read (bodies of the registry's requests are small and
            // arrive with their head); the client may keep the connection.
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match tokio::time::timeout(Duration::from_secs(30), client.read(&mut buffer)).await
                {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                }
                let (status, body) = match fault {
                    Fault::Status(code) => (
                        code,
                        format!(r#"{{"error_code":{code}00,"message":"injected fault"}}"#),
                    ),
                    _ => (200, "<html>not a schema</html>".to_owned()),
                };
                let answer = format!(
                    "HTTP/1.1 {status} Injected\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if client.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}
