//! The Schema Registry behind HTTPS and basic auth, for the tests of secured connections: a
//! reverse proxy in the test process, with the development CA's certificate (`scripts/dev`'s
//! `.local/data/tls`), that turns away requests without the user and password and passes the
//! rest to the real registry (Apicurio). Stopped when dropped.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio_native_tls::{TlsAcceptor, TlsStream};

/// A running secured registry.
pub struct SecuredRegistry {
    /// Its ccompat URL: `https://127.0.0.1:<port>/apis/ccompat/v7`.
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SecuredRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the proxy checks and where it forwards.
struct Upstream {
    authorization: String,
    origin: String,
    http: reqwest::Client,
}

/// TLS connections accepted with the development certificate.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A client that does not trust the certificate hangs up here: next.
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Starts the proxy in front of `KASSA_SCHEMA_REGISTRY_URL`, asking for `user` and `password`.
pub async fn start(user: &str, password: &str) -> SecuredRegistry {
    let ca =
        std::env::var("KASSA_TEST_TLS_CA").expect("KASSA_TEST_TLS_CA (scripts/dev env --test)");
    let tls = std::path::Path::new(&ca)
        .parent()
        .expect("the TLS directory");
    let certificate = std::fs::read(tls.join("server.pem")).expect("the development certificate");
    let key = std::fs::read(tls.join("server.pk8")).expect("its PKCS#8 key");
    let identity = native_tls::Identity::from_pkcs8(&certificate, &key).expect("an identity");
    let acceptor = TlsAcceptor::from(native_tls::TlsAcceptor::new(identity).expect("an acceptor"));
    let registry =
        reqwest::Url::parse(&std::env::var("KASSA_SCHEMA_REGISTRY_URL").unwrap()).unwrap();
    let origin = registry.origin().ascii_serialization();
    let upstream = Arc::new(Upstream {
        authorization: format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{user}:{password}")
            )
        ),
        origin,
        http: reqwest::Client::new(),
    });
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let port = tcp.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(forward).with_state(upstream);
    let task = tokio::spawn(async move {
        let _ = axum::serve(TlsListener { tcp, acceptor }, app).await;
    });
    SecuredRegistry {
        url: format!("https://127.0.0.1:{port}{}", registry.path()),
        task,
    }
}

/// Checks the credentials, then passes the request on and the answer back.
async fn forward(
    State(upstream): State<Arc<Upstream>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == upstream.authorization.as_bytes());
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"registry\"")],
            "unauthorized",
        )
            .into_response();
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = upstream
        .http
        .request(method, format!("{}{path}", upstream.origin))
        .body(body);
    for name in [header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(value) = headers.get(&name) {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
            let body = answer.bytes().await.unwrap_or_default();
            let mut response = (status, body).into_response();
            if let Some(content_type) = content_type {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, content_type);
            }
            response
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
