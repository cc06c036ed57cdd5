//! The Prometheus metrics every service has for its NSQ connections, named and described
//! once: the consumer's counters (worker, logger) and the connection gauge (all three).
//! A service re-exports the names it uses from its own `metrics` module and adds its own.
//!
//! Every series also carries the labels `service` and `id`, added by the recorder that
//! [`crate::http::install_metrics`] installs.

/// Counter, labels `topic`, `channel`: messages delivered to the consumer.
pub const CONSUMED: &str = "nsq_suite_messages_consumed_total";
/// Counter, labels `topic`, `channel`: messages finished (FIN), whatever the reason.
pub const FINISHED: &str = "nsq_suite_messages_finished_total";
/// Counter, labels `topic`, `channel`: messages requeued (REQ).
pub const REQUEUED: &str = "nsq_suite_messages_requeued_total";
/// Counter, labels `topic`, `channel`: bodies that are not the message type the channel
/// carries (finished, logged).
pub const DECODE_ERRORS: &str = "nsq_suite_decode_errors_total";
/// Gauge, labels `topic`, `channel`: messages delivered and not yet finished or requeued.
pub const IN_FLIGHT: &str = "nsq_suite_messages_in_flight";
/// Gauge, labels `role` (`consumer`, `producer`), `nsqd` (its TCP address): 1 while the
/// connection to that nsqd is open, else 0.
pub const CONNECTIONS: &str = "nsq_suite_nsq_connections";

/// Registers the help text of [`CONNECTIONS`] (every service has it).
pub fn describe_connections() {
    metrics::describe_gauge!(
        CONNECTIONS,
        "1 while the connection to an nsqd is open, by role and nsqd"
    );
}

/// Registers the help text of the consumer's metrics and [`CONNECTIONS`]; `body` names what
/// the channel carries (`SensorReading`, `WorkResult`).
pub fn describe_consumer(body: &str) {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(CONSUMED, "Messages delivered, by topic and channel");
    describe_counter!(FINISHED, "Messages finished (FIN), by topic and channel");
    describe_counter!(REQUEUED, "Messages requeued (REQ), by topic and channel");
    describe_counter!(
        DECODE_ERRORS,
        format!("Message bodies that are not a {body}")
    );
    describe_gauge!(
        IN_FLIGHT,
        "Messages delivered and not yet finished or requeued"
    );
    describe_connections();
}

/// The labels of the consumer's series.
pub fn consumer_labels(topic: &str, channel: &str) -> [(&'static str, String); 2] {
    [("topic", topic.to_owned()), ("channel", channel.to_owned())]
}

/// Creates the consumer's counters at zero, so that they are scraped (and `rate()` works)
/// before the first message of each kind.
pub fn register_consumer(topic: &str, channel: &str) {
    let labels = consumer_labels(topic, channel);
    for name in [CONSUMED, FINISHED, REQUEUED, DECODE_ERRORS] {
        metrics::counter!(name, &labels).increment(0);
    }
}
