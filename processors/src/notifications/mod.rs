//! The notifications processor: tells the customer and the storefront what became of an order.
//! It consumes `orders.events`; from an order's reservation (or rejection) it learns whom to tell
//! (the storefront the order was placed at, the contact email), and for each event a customer
//! needs to hear of ([`notice`]: confirmed, completed, cancelled, rejected, payment action
//! required) it writes one delivery per recipient (each webhook endpoint of the storefront that
//! subscribes to it, and the email address) in the batch's transaction: exactly once, however
//! often the event is redelivered. The [`dispatch`]er sends them over the [`channels`], retried
//! with backoff for up to 3 days, every attempt recorded.

pub mod channels;
pub mod dispatch;
pub mod notice;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use kassa_schemas::events::orders::OrderEvent;
use kassa_schemas::secret::Secret;
use kassa_schemas::{Codec, CodecError, Envelope, Topic};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::ConsumerGroup;
use crate::runtime::{Delivered, HandleError, Handled, Handler};
use crate::settings::{millis, seconds};

/// The notifications processor's handler (writing deliveries; sending is the dispatcher's).
pub struct Notifications {
    codec: Arc<Codec>,
    email: bool,
    retry_for: chrono::Duration,
}

impl Handler for Notifications {
    type Input = Envelope<OrderEvent>;

    fn group(&self) -> ConsumerGroup {
        ConsumerGroup::Notifications
    }

    async fn decode(&self, topic: Topic, bytes: &[u8]) -> Result<Self::Input, CodecError> {
        match topic {
            Topic::OrdersEvents => self.codec.decode(bytes).await,
            other => Err(CodecError::UnexpectedTopic(other.name())),
        }
    }

    fn event_id(input: &Self::Input) -> Uuid {
        input.event_id
    }

    async fn handle(
        &mut self,
        conn: &mut PgConnection,
        batch: &[Delivered<Self::Input>],
    ) -> Result<Handled, HandleError> {
        let mut handled = Handled::default();
        let mut contacts = Vec::new();
        let mut notices = Vec::new();
        // An event older than the retry window would only be sent to be given up on: an order
        // that old (a group started on an old topic, a replay) is not news any more.
        let oldest = chrono::Utc::now() - self.retry_for;
        for (index, d) in batch.iter().enumerate() {
            let event = &d.input;
            let order = event.payload.order_id();
            if !d.keyed_by(index, order, &mut handled) {
                continue;
            }
            if let Some(contact) = notice::contact(&event.payload) {
                contacts.push((order, contact));
            }
            if let Some(n) = notice::of(&event.payload).filter(|_| event.occurred_at >= oldest) {
                notices.push(store::Enqueue {
                    order_id: order,
                    notification_id: notice::notification_id(event.event_id, n.kind),
                    occurred_at: event.occurred_at,
                    notice: n,
                });
            }
        }
        store::remember(conn, &contacts).await?;
        let written = store::enqueue(conn, &notices, self.email, self.retry_for).await?;
        metrics::counter!("kassa_notifications_enqueued_total").increment(written);
        Ok(handled)
    }

    fn forget(&mut self, _partitions: &[(Topic, i32)]) {}
}

/// The notifications processor's own settings.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Settings {
    /// SMTP server for customer emails: `smtp://host:port` (plain, for a local relay),
    /// `smtp://user:password@host:587?tls=required` (STARTTLS) or `smtps://…` (TLS). Unset: no
    /// emails are sent (webhooks still are).
    #[arg(
        long = "smtp-url",
        env = "KASSA_SMTP_URL",
        hide_env_values = true,
        global = true
    )]
    pub smtp_url: Option<Secret>,

    /// The sender of customer emails.
    #[arg(
        long = "smtp-from",
        env = "KASSA_SMTP_FROM",
        default_value = "kassa@localhost",
        global = true
    )]
    pub smtp_from: String,

    /// How long a webhook receiver or the SMTP server has to answer one delivery, in seconds.
    #[arg(long = "notify-timeout-seconds", env = "KASSA_NOTIFY_TIMEOUT_SECONDS", default_value = "10", value_parser = seconds, global = true)]
    pub notify_timeout: Duration,

    /// The wait before a failed delivery's first retry, in ms; each further retry waits twice as
    /// long (with jitter), up to an hour.
    #[arg(long = "notify-backoff-ms", env = "KASSA_NOTIFY_BACKOFF_MS", default_value = "30000", value_parser = millis, global = true)]
    pub notify_backoff: Duration,

    /// How long a delivery is retried before it is given up on (and shown as failed), in
    /// seconds.
    #[arg(long = "notify-retry-for-seconds", env = "KASSA_NOTIFY_RETRY_FOR_SECONDS", default_value = "259200", value_parser = seconds, global = true)]
    pub notify_retry_for: Duration,

    /// Deliveries in flight at once per notifications instance.
    #[arg(
        long = "notify-concurrency",
        env = "KASSA_NOTIFY_CONCURRENCY",
        default_value = "32",
        global = true
    )]
    pub notify_concurrency: usize,
}

/// What the notifications processor runs with. (Not `Debug`: the SMTP URL may hold a password.)
#[derive(Clone)]
pub struct Config {
    smtp_url: Option<Secret>,
    smtp_from: String,
    dispatch: dispatch::DispatchConfig,
    retry_for: chrono::Duration,
}

impl crate::Processor for Notifications {
    const NAME: &'static str = "notifications";
    const INPUTS: &'static [Topic] = &[Topic::OrdersEvents];
    type Settings = Settings;
    type Config = Config;

    fn config(settings: &Settings, _: &crate::settings::Common) -> Result<Config, String> {
        if settings.notify_concurrency == 0 {
            return Err("KASSA_NOTIFY_CONCURRENCY must be at least 1".into());
        }
        if let Some(url) = &settings.smtp_url {
            channels::Email::new(url.expose(), &settings.smtp_from, settings.notify_timeout)?;
        }
        Ok(Config {
            smtp_url: settings.smtp_url.clone(),
            smtp_from: settings.smtp_from.clone(),
            dispatch: dispatch::DispatchConfig {
                concurrency: settings.notify_concurrency,
                backoff: settings.notify_backoff,
                timeout: settings.notify_timeout,
            },
            retry_for: crate::settings::chrono_of(settings.notify_retry_for),
        })
    }

    /// Runs the notifications processor (and its dispatcher).
    async fn run(
        shared: &crate::Shared,
        codec: Arc<Codec>,
        config: &Config,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), crate::ProcessorError> {
        let email = match &config.smtp_url {
            Some(url) => Some(
                channels::Email::new(url.expose(), &config.smtp_from, config.dispatch.timeout)
                    .map_err(crate::ProcessorError::Setup)?,
            ),
            None => None,
        };
        let Some(pool) = crate::runtime::connect(
            &shared.runtime,
            config.dispatch.concurrency as u32 / 4 + 2,
            &mut shutdown.clone(),
        )
        .await
        else {
            return Ok(());
        };
        let handler = Notifications {
            codec,
            email: email.is_some(),
            retry_for: config.retry_for,
        };
        let channels = Arc::new(dispatch::Channels {
            webhook: channels::Webhook::new(config.dispatch.timeout),
            email,
        });
        let dispatcher = tokio::spawn(dispatch::run(
            pool,
            channels,
            config.dispatch.clone(),
            shutdown.clone(),
        ));
        Ok(crate::runtime::run(&shared.runtime, handler, shutdown, vec![dispatcher]).await?)
    }
}
