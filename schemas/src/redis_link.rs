//! A Redis connection made in the background and kept: the flash-sale gate (API) and the token
//! give-back (inventory) share it. Redis is a shield, never the authority, so nothing waits for
//! it: while it cannot be reached, [`RedisLink::get`] answers None and callers fail open; once it
//! answers, the connection is kept, and redis-rs reconnects it by itself after an outage.
//! `rediss://` URLs connect over TLS, trusting the system's CAs or the PEM file `KASSA_REDIS_CA`
//! names; an ACL user and password go in the URL (`rediss://user:password@host:port/db`).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;

/// The variable naming a PEM file of the CAs to trust for `rediss://` (unset: the system's).
pub const CA_VARIABLE: &str = "KASSA_REDIS_CA";

/// A client for `url`, trusting the CAs `KASSA_REDIS_CA` names when it is set.
fn client(url: &str) -> Result<redis::Client, String> {
    match std::env::var(CA_VARIABLE) {
        Ok(path) if !path.is_empty() => {
            let pem = std::fs::read(&path)
                .map_err(|e| format!("{CA_VARIABLE}={path} cannot be read: {e}"))?;
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            redis::Client::build_with_tls(url, certificates).map_err(|e| e.to_string())
        }
        _ => redis::Client::open(url).map_err(|e| e.to_string()),
    }
}

/// A shared handle on the Redis connection, None until Redis first answered.
#[derive(Clone)]
pub struct RedisLink {
    connection: watch::Receiver<Option<ConnectionManager>>,
}

impl RedisLink {
    /// Starts connecting to `url` in the background (retrying with backoff, up to every 5 s,
    /// until Redis answers); each answer may take up to `response_timeout`. A malformed URL or
    /// an unreadable CA file is logged and leaves the link unconnected for good.
    pub fn start(url: &str, response_timeout: Duration) -> Self {
        let (slot, connection) = watch::channel(None);
        let link = Self { connection };
        let client = match client(url) {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "bad Redis URL or CA: flash sales run without their gate and give-back");
                return link;
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(response_timeout));
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            let mut failures = 0u32;
            loop {
                let attempt = tokio::time::timeout(
                    Duration::from_secs(3),
                    ConnectionManager::new_with_config(client.clone(), config.clone()),
                )
                .await;
                match attempt {
                    Ok(Ok(connection)) => {
                        if failures > 0 {
                            tracing::info!(
                                failures,
                                "Redis answers again: flash-sale gate and give-back on"
                            );
                        }
                        slot.send_replace(Some(connection));
                        return;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, ?delay, "Redis unreachable: flash-sale gate fails open; retrying")
                    }
                    Err(_) => tracing::warn!(
                        ?delay,
                        "Redis did not answer in 3 s: flash-sale gate fails open; retrying"
                    ),
                }
                failures += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        });
        link
    }

    /// The connection, once Redis has answered (None: not yet; fail open).
    pub fn get(&self) -> Option<ConnectionManager> {
        self.connection.borrow().clone()
    }

    /// Waits up to `limit` for the connection (for start-up checks and tests).
    pub async fn wait(&self, limit: Duration) -> Option<ConnectionManager> {
        let mut connection = self.connection.clone();
        let ready = tokio::time::timeout(limit, connection.wait_for(Option::is_some)).await;
        ready.ok().and_then(Result::ok).and_then(|c| c.clone())
    }
}
