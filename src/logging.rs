//! The process's logs and traces: events as text or JSON lines (`KASSA_LOG`, `KASSA_LOG_FORMAT`)
//! and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, the
//! spans exported over OTLP/HTTP (protobuf) in batches, with the standard `OTEL_SERVICE_NAME`
//! (default `kassa`) and `OTEL_RESOURCE_ATTRIBUTES`.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use kassa::settings::{LogFormat, ProcessSettings};

/// What must be flushed before the process exits: the spans not yet exported.
pub struct Logging {
    provider: Option<SdkTracerProvider>,
}

impl Logging {
    /// Exports the spans still buffered (waits up to the exporter's timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("exporting the last spans failed: {e}");
        }
    }
}

/// Whether spans are to be exported (an OTLP endpoint is configured).
fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.is_empty()))
}

/// Installs the process's subscriber: the filter, the log lines, and the span exporter when an
/// OTLP endpoint is configured.
pub fn init(process: &ProcessSettings) -> Logging {
    let filter = EnvFilter::try_new(&process.log).unwrap_or_else(|e| {
        eprintln!("KASSA_LOG: {e}; logging at info");
        EnvFilter::new("info")
    });
    let lines = match process.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let mut provider = None;
    let mut failed = None;
    let spans = if otlp_configured() {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => {
                let mut resource = Resource::builder();
                if std::env::var("OTEL_SERVICE_NAME").is_err() {
                    resource = resource.with_service_name("kassa");
                }
                let built = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource.build())
                    .build();
                let tracer = built.tracer("kassa");
                provider = Some(built);
                kassa_schemas::trace::set_exporting();
                Some(tracing_opentelemetry::layer().with_tracer(tracer))
            }
            Err(e) => {
                failed = Some(e.to_string());
                None
            }
        }
    } else {
        None
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(spans)
        .init();
    if let Some(error) = failed {
        tracing::error!(%error, "the OTLP span exporter could not be set up: spans are not exported");
    } else if provider.is_some() {
        tracing::info!("exporting spans over OTLP");
    }
    Logging { provider }
}
