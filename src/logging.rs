//! The process's logs and traces: events as text or JSON lines (`KASSA_LOG`, `KASSA_LOG_FORMAT`;
//! a JSON line carries the fields of the spans it happened in: `trace_id`, `order_id`, …)
//! and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, the
//! spans exported over OTLP/HTTP (protobuf) in batches, with the standard `OTEL_SERVICE_NAME`
//! (default `kassa`) and `OTEL_RESOURCE_ATTRIBUTES`.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
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
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
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

/// Log lines as JSON objects, one a line: `timestamp`, `level`, `target`, `message` and the
/// event's fields, and, flattened beside them, the fields of the spans it happened in (inner
/// spans' win): `trace_id`, `order_id`, `group`, `route` where known.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = serde_json::Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(serde_json::Value::Object(fields)) =
                    serde_json::from_str::<serde_json::Value>(fields)
                {
                    line.extend(fields);
                }
                line.insert("span".into(), span.name().into());
            }
        }
        let mut fields = FieldsOf(serde_json::Map::new());
        event.record(&mut fields);
        line.extend(fields.0);
        line.remove("otel.name");
        line.insert("timestamp".into(), chrono::Utc::now().to_rfc3339().into());
        line.insert("level".into(), event.metadata().level().as_str().into());
        line.insert("target".into(), event.metadata().target().into());
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// An event's fields as JSON values.
struct FieldsOf(serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for FieldsOf {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
}
