//! OTLP export of the gateway's request spans (`--features otel`): spans go
//! over OTLP/HTTP protobuf to `$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or
//! `$OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`, in batches from the SDK's
//! own thread; nothing is exported when neither is set.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Flushes and stops the exporter when dropped (at process exit).
pub struct Guard(SdkTracerProvider);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("portcullis: flushing spans to the OTLP endpoint failed: {e}");
        }
    }
}

/// The tracing layer that exports spans, if an endpoint is configured.
/// Must run outside the async runtime (the HTTP client is blocking).
pub fn layer<S>() -> Option<(impl Layer<S>, Guard)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let endpoint = match std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        Ok(e) if !e.is_empty() => e,
        _ => {
            let base = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok()?;
            format!("{}/v1/traces", base.trim_end_matches('/'))
        }
    };
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint.clone())
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("portcullis: OTLP exporter for {endpoint} not started: {e}");
            return None;
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("portcullis").build())
        .build();
    let tracer = provider.tracer("portcullis");
    eprintln!("portcullis: exporting request spans to {endpoint} (OTLP/HTTP)");
    Some((
        tracing_opentelemetry::layer().with_tracer(tracer),
        Guard(provider),
    ))
}
