//! Where a notice goes, behind one trait: a storefront's webhook endpoint (an HTTPS POST signed
//! with `Kassa-Signature`) or the customer's email address (SMTP).

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;

/// One delivery as a channel sends it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The delivery id (sent as `Kassa-Delivery`).
    pub id: uuid::Uuid,
    /// Where to: the endpoint URL, or the email address.
    pub recipient: String,
    /// The endpoint's signing secret (webhooks only).
    pub secret: Option<String>,
    /// The notice as its webhook body (`id`, `type`, `created`, `order_id`, `customer_id`, `data`).
    pub body: Value,
}

/// What a receiver made of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status (webhooks), or the SMTP reply code.
    pub status: Option<u16>,
}

/// Why an attempt failed; every failure is retried until the delivery's window is over.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The receiver answered, but not with success.
    #[error("answered {status}")]
    Refused {
        /// The HTTP status or SMTP code.
        status: u16,
    },
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed.
    #[error("{0}")]
    Connection(String),
    /// The delivery cannot be made as stored (no secret, no template, a bad address).
    #[error("{0}")]
    Unsendable(String),
}

impl SendError {
    /// The status the receiver answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            SendError::Refused { status } => Some(*status),
            _ => None,
        }
    }
}

/// A way of telling someone.
pub trait Channel: Send + Sync {
    /// Sends one delivery, within the channel's time limit.
    fn send(
        &self,
        delivery: &Outgoing,
    ) -> impl std::future::Future<Output = Result<Answer, SendError>> + Send;
}

/// Storefront webhooks: a POST of the body, signed like Stripe's.
pub struct Webhook {
    http: reqwest::Client,
    timeout: Duration,
}

impl Webhook {
    /// A webhook channel giving each receiver `timeout` to answer.
    pub fn new(timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kassa-notifications/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with rustls roots");
        Self { http, timeout }
    }
}

impl Channel for Webhook {
    async fn send(&self, delivery: &Outgoing) -> Result<Answer, SendError> {
        let secret = delivery
            .secret
            .as_deref()
            .ok_or_else(|| SendError::Unsendable("the endpoint has no secret".into()))?;
        let body = serde_json::to_vec(&delivery.body).expect("JSON values serialize");
        let signature = kassa_schemas::signature::signature_header(
            secret,
            chrono::Utc::now().timestamp(),
            &body,
        );
        let sent = self
            .http
            .post(&delivery.recipient)
            .header("content-type", "application/json")
            .header("kassa-signature", signature)
            .header("kassa-delivery", delivery.id.to_string())
            .header(
                "kassa-event-id",
                delivery.body["id"].as_str().unwrap_or_default(),
            )
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => Ok(Answer {
                status: Some(response.status().as_u16()),
            }),
            Ok(response) => Err(SendError::Refused {
                status: response.status().as_u16(),
            }),
            Err(e) if e.is_timeout() => Err(SendError::Timeout(self.timeout)),
            // Without the URL: an endpoint's URL may carry a token of the storefront's.
            Err(e) => Err(SendError::Connection(without_url(&e))),
        }
    }
}

/// A reqwest error's text without the URL it names.
fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "the endpoint");
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// Email through SMTP, from the configured sender to the order's contact address.
pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: lettre::message::Mailbox,
    timeout: Duration,
}

impl Email {
    /// An email channel through the SMTP server at `url` (`smtp://`, `smtps://`, with
    /// `?tls=required` for STARTTLS, credentials in the URL), sending as `from`; an error names
    /// the setting, never the URL's password.
    pub fn new(url: &str, from: &str, timeout: Duration) -> Result<Self, String> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| format!("KASSA_SMTP_URL is not an SMTP URL: {e}"))?
            .timeout(Some(timeout))
            .build();
        let from = from
            .parse()
            .map_err(|e| format!("KASSA_SMTP_FROM is not an address: {e}"))?;
        Ok(Self {
            transport,
            from,
            timeout,
        })
    }
}

impl Channel for Email {
    async fn send(&self, delivery: &Outgoing) -> Result<Answer, SendError> {
        let mail = super::notice::email(&delivery.body)
            .ok_or_else(|| SendError::Unsendable("no email template for this notice".into()))?;
        let to = delivery
            .recipient
            .parse()
            .map_err(|e| SendError::Unsendable(format!("the contact address: {e}")))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject)
            .message_id(Some(format!(
                "<{}@kassa>",
                delivery.body["id"].as_str().unwrap_or_default()
            )))
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body)
            .map_err(|e| SendError::Unsendable(e.to_string()))?;
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Err(_) => Err(SendError::Timeout(self.timeout)),
            Ok(Ok(response)) => Ok(Answer {
                status: Some(u16::from(response.code())),
            }),
            Ok(Err(e)) => match e.status() {
                Some(code) => Err(SendError::Refused {
                    status: u16::from(code),
                }),
                None => Err(SendError::Connection(e.to_string())),
            },
        }
    }
}
