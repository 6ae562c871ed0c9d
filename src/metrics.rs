//! Prometheus metrics for the whole process. Labels are bounded and never carry a secret,
//! a token, an agent name or a path: only provider names from the provider table, status
//! codes and decisions.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::audit::AuditRecord;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    provider: String,
    status: u16,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Latency buckets from 100 µs to about 13 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Every metric the broker exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<ProviderLabel, Histogram>,
    upstream: Family<ProviderLabel, Histogram>,
    /// Open agent connections.
    pub connections: Gauge,
    /// Agent responses still streaming.
    pub streams: Gauge,
    /// Copies of secrets masked in responses.
    pub scrub_hits: Counter,
    /// Audit records waiting to be written.
    pub audit_queue: Gauge,
    /// Audit records lost (queue full, or unwritable at shutdown).
    pub audit_lost: Counter,
    audit_write: Histogram,
    foreign_tokens: Family<ProviderLabel, Counter>,
    egress_refusals: Family<ReasonLabel, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("seks");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Agent requests by provider, status and decision",
            requests.clone(),
        );
        let duration = Family::<ProviderLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival until its response ended",
            duration.clone(),
        );
        let upstream = Family::<ProviderLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from forwarding a request until the upstream's response headers",
            upstream.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "connections_active",
            "Open agent connections",
            connections.clone(),
        );
        let streams = Gauge::default();
        registry.register(
            "streams_active",
            "Agent responses still streaming",
            streams.clone(),
        );
        let scrub_hits = Counter::default();
        registry.register(
            "scrub_hits",
            "Copies of secrets masked in responses to agents",
            scrub_hits.clone(),
        );
        let audit_queue = Gauge::default();
        registry.register(
            "audit_queue_depth",
            "Audit records waiting to be written",
            audit_queue.clone(),
        );
        let audit_lost = Counter::default();
        registry.register(
            "audit_records_lost",
            "Audit records that could not be written",
            audit_lost.clone(),
        );
        let audit_write = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "audit_write_duration_seconds",
            "Time to commit one batch of audit records",
            audit_write.clone(),
        );
        let foreign_tokens = Family::<ProviderLabel, Counter>::default();
        registry.register(
            "tokens_to_foreign_hosts",
            "Requests refused because an agent token was headed to a host not its provider's",
            foreign_tokens.clone(),
        );
        let egress_refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "egress_refused",
            "Forward-proxy destinations refused, by reason",
            egress_refusals.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            upstream,
            connections,
            streams,
            scrub_hits,
            audit_queue,
            audit_lost,
            audit_write,
            foreign_tokens,
            egress_refusals,
        }
    }

    /// Count a request refused because a token of `provider` (a name from the provider table,
    /// or `unknown`) was headed to another host.
    pub fn token_to_foreign_host(&self, provider: &str) {
        self.foreign_tokens
            .get_or_create(&ProviderLabel {
                provider: provider.to_owned(),
            })
            .inc();
    }

    /// Count a forward-proxy destination refused for `reason` (a refusal code).
    pub fn egress_refused(&self, reason: &'static str) {
        self.egress_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Count a finished request.
    pub fn request(&self, record: &AuditRecord) {
        let provider = record.provider.clone().unwrap_or_else(|| "none".to_owned());
        self.requests
            .get_or_create(&RequestLabels {
                provider: provider.clone(),
                status: record.status,
                decision: record.decision.as_str(),
            })
            .inc();
        let label = ProviderLabel { provider };
        self.duration
            .get_or_create(&label)
            .observe(record.total_us as f64 / 1e6);
        if let Some(us) = record.upstream_us {
            self.upstream.get_or_create(&label).observe(us as f64 / 1e6);
        }
    }

    /// Note how long an audit batch took to commit.
    pub fn audit_write(&self, took: Duration) {
        self.audit_write.observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String can't fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
