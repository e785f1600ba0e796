//! Prometheus export, computed when scraped.
//!
//! [`Metrics`] is a [`prometheus::core::Collector`] over one bus's atomic counters. Nothing
//! is updated in Prometheus types while events flow; a scrape loads the counters and builds
//! the metric families then. Names start with the configured `metrics-prefix`
//! (`event_bus` by default):
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `<prefix>_dropped_events{reason}` | counter | events dropped, by [`DropReason`] label |
//! | `<prefix>_accepted_events` | counter | events accepted into the ring |
//! | `<prefix>_published_events` | counter | publish attempts sent, retries included |
//! | `<prefix>_acked_events` | counter | events acknowledged by JetStream |
//! | `<prefix>_retried_events` | counter | publish attempts beyond each event's first |
//! | `<prefix>_duplicate_acks` | counter | acks flagged duplicate (a retry already stored) |
//! | `<prefix>_queue_depth` | gauge | events waiting in the ring |
//! | `<prefix>_queue_capacity` | gauge | capacity of the ring |
//! | `<prefix>_in_flight` | gauge | events sent and awaiting their acknowledgement |
//! | `<prefix>_connected` | gauge | 1 while connected to NATS, else 0 |
//! | `<prefix>_ack_latency_seconds` | summary | publish-to-acknowledgement latency |
//! | `<prefix>_batch_size` | histogram | events the drain popped from the ring per batch |

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType, Quantile,
    Summary,
};

use crate::bus::Shared;
use crate::stats::{DropReason, BATCH_BUCKETS};

/// Quantiles exported for the acknowledgement latency.
const LATENCY_QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 1.0];

/// A Prometheus collector over one bus. Made by [`Bus::metrics`](crate::Bus::metrics).
pub struct Metrics {
    shared: Arc<Shared>,
    descs: Vec<Desc>,
}

/// Name, help and type of each metric, in export order.
const FAMILIES: [(&str, &str, MetricType); 12] = [
    (
        "dropped_events",
        "Events dropped, by reason.",
        MetricType::COUNTER,
    ),
    (
        "accepted_events",
        "Events accepted into the ring.",
        MetricType::COUNTER,
    ),
    (
        "published_events",
        "Publish attempts sent to NATS, retries included.",
        MetricType::COUNTER,
    ),
    (
        "acked_events",
        "Events acknowledged by JetStream.",
        MetricType::COUNTER,
    ),
    (
        "retried_events",
        "Publish attempts beyond each event's first.",
        MetricType::COUNTER,
    ),
    (
        "duplicate_acks",
        "Acknowledgements flagged duplicate: a retried event the stream already held.",
        MetricType::COUNTER,
    ),
    (
        "queue_depth",
        "Events waiting in the ring.",
        MetricType::GAUGE,
    ),
    ("queue_capacity", "Capacity of the ring.", MetricType::GAUGE),
    (
        "in_flight",
        "Events sent and awaiting their acknowledgement.",
        MetricType::GAUGE,
    ),
    (
        "connected",
        "1 while connected to NATS, else 0.",
        MetricType::GAUGE,
    ),
    (
        "ack_latency_seconds",
        "Latency from publishing to NATS to the JetStream acknowledgement.",
        MetricType::SUMMARY,
    ),
    (
        "batch_size",
        "Events popped from the ring per drain batch.",
        MetricType::HISTOGRAM,
    ),
];

impl Metrics {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let prefix = &shared.settings.config.metrics_prefix;
        let descs = FAMILIES
            .iter()
            .filter_map(|(name, help, kind)| {
                let labels = match kind {
                    _ if *name == "dropped_events" => vec!["reason".to_owned()],
                    _ => Vec::new(),
                };
                // Names and help are valid by construction (the prefix is validated with the
                // config), so `Desc::new` cannot fail here.
                Desc::new(
                    format!("{prefix}_{name}"),
                    (*help).to_owned(),
                    labels,
                    Default::default(),
                )
                .ok()
            })
            .collect();

        Metrics { shared, descs }
    }

    fn family(&self, index: usize, metrics: Vec<Metric>) -> MetricFamily {
        let (name, help, kind) = FAMILIES[index];
        let mut family = MetricFamily::default();
        family.set_name(format!(
            "{}_{name}",
            self.shared.settings.config.metrics_prefix
        ));
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        family.set_metric(metrics);
        family
    }
}

fn counter(value: u64) -> Metric {
    let mut counter = Counter::default();
    counter.set_value(value as f64);
    let mut metric = Metric::default();
    metric.set_counter(counter);
    metric
}

fn gauge(value: u64) -> Metric {
    let mut gauge = Gauge::default();
    gauge.set_value(value as f64);
    let mut metric = Metric::default();
    metric.set_gauge(gauge);
    metric
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

impl Collector for Metrics {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let stats = self.shared.stats();
        let counters = &self.shared.counters;

        let dropped = DropReason::ALL
            .iter()
            .map(|&reason| {
                let mut metric = counter(stats.dropped(reason));
                metric.set_label(vec![label("reason", reason.as_str())]);
                metric
            })
            .collect();

        vec![
            self.family(0, dropped),
            self.family(1, vec![counter(stats.accepted)]),
            self.family(2, vec![counter(stats.published)]),
            self.family(3, vec![counter(stats.acked)]),
            self.family(4, vec![counter(stats.retried)]),
            self.family(5, vec![counter(stats.duplicates)]),
            self.family(6, vec![gauge(stats.queue_depth)]),
            self.family(7, vec![gauge(stats.queue_capacity)]),
            self.family(8, vec![gauge(stats.in_flight)]),
            self.family(9, vec![gauge(u64::from(stats.connected))]),
            self.family(10, vec![self.latency_summary()]),
            self.family(11, vec![batch_histogram(counters)]),
        ]
    }
}

impl Metrics {
    fn latency_summary(&self) -> Metric {
        let mut summary = Summary::default();

        if let Ok(latency) = self.shared.latency.lock() {
            let micros_to_secs = |micros: u64| micros as f64 / 1e6;
            let quantiles = LATENCY_QUANTILES
                .iter()
                .map(|&q| {
                    let mut quantile = Quantile::default();
                    quantile.set_quantile(q);
                    quantile.set_value(micros_to_secs(latency.value_at_quantile(q)));
                    quantile
                })
                .collect();

            summary.set_quantile(quantiles);
            summary.set_sample_count(latency.len());
            summary.set_sample_sum(latency.mean() * latency.len() as f64 / 1e6);
        }

        let mut metric = Metric::default();
        metric.set_summary(summary);
        metric
    }
}

fn batch_histogram(counters: &crate::stats::Counters) -> Metric {
    let mut cumulative = 0;
    let buckets = BATCH_BUCKETS
        .iter()
        .enumerate()
        .map(|(i, &bound)| {
            cumulative += counters.batch_buckets[i].load(Relaxed);
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(bound as f64);
            bucket.set_cumulative_count(cumulative);
            bucket
        })
        .collect();
    let count = cumulative + counters.batch_buckets[BATCH_BUCKETS.len()].load(Relaxed);

    let mut histogram = Histogram::default();
    histogram.set_bucket(buckets);
    histogram.set_sample_count(count);
    histogram.set_sample_sum(counters.batch_sum.load(Relaxed) as f64);

    let mut metric = Metric::default();
    metric.set_histogram(histogram);
    metric
}
