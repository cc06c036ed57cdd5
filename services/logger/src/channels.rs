//! The channels of the logger's topic, as nsqd sees them: how deep each is and how many
//! clients read it.
//!
//! A channel whose consumer went away for good (the compose `archive` logger after an `up`
//! without the profile, any retired consumer) keeps a copy of every result for ever: its depth
//! grows and spills to disk. nsqd does not report it anywhere but its `/stats`, so every
//! `--summary-interval` the logger asks the nsqd that nsqlookupd lists for its topic, adds the
//! channels to its summary line (`results channels: logger 0 (1 client), archive 7274 (no
//! client)`), sets the gauges `nsq_suite_channel_depth` and `nsq_suite_channel_clients`, and
//! warns about a channel with messages and no client. Without nsqlookupd (from
//! `--lookupd-http-address` or Consul) the nsqd HTTP ports are unknown and this is off.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use suite_common::log_limit::LogLimiter;

/// Gauge, labels `topic`, `channel`: messages waiting in the channel, over every nsqd.
pub const CHANNEL_DEPTH: &str = "nsq_suite_channel_depth";
/// Gauge, labels `topic`, `channel`: clients reading the channel, over every nsqd.
pub const CHANNEL_CLIENTS: &str = "nsq_suite_channel_clients";

/// Longest an answer of nsqlookupd or nsqd may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read (nsqd's `/stats` of one topic without its clients is a few KiB).
const MAX_BODY: usize = 1 << 20;
/// Most nsqd asked, and most channels kept (the topic's channels are anyone's to create).
const MAX_NODES: usize = 64;
const MAX_CHANNELS: usize = 256;
/// How often a channel with messages and no client is warned about again.
const ORPHAN_WARN_EVERY: Duration = Duration::from_secs(600);
/// Most channels the summary line lists.
const SUMMARY_MAX_CHANNELS: usize = 8;

/// One channel of the topic, summed over the nsqd that have it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelDepth {
    /// Messages waiting (in memory and on disk).
    pub depth: u64,
    /// Clients subscribed.
    pub clients: u64,
}

/// The channels of the last look, by name.
pub type Channels = BTreeMap<String, ChannelDepth>;

/// The summary's part for the channels, e.g. `results channels: archive 7274 (no client),
/// logger 0 (1 client)`; empty when there is nothing to show.
pub fn summary(topic: &str, channels: &Channels) -> String {
    if channels.is_empty() {
        return String::new();
    }
    let mut parts: Vec<String> = channels
        .iter()
        .take(SUMMARY_MAX_CHANNELS)
        .map(|(name, c)| {
            let clients = match c.clients {
                0 => "no client".to_owned(),
                1 => "1 client".to_owned(),
                n => format!("{n} clients"),
            };
            format!("{name} {} ({clients})", c.depth)
        })
        .collect();
    if channels.len() > SUMMARY_MAX_CHANNELS {
        parts.push(format!(
            "... ({} more)",
            channels.len() - SUMMARY_MAX_CHANNELS
        ));
    }
    format!("{topic} channels: {}", parts.join(", "))
}

/// nsqlookupd's answer to `/lookup`.
#[derive(Debug, Deserialize)]
struct Lookup {
    #[serde(default)]
    producers: Vec<Producer>,
}

/// One nsqd in nsqlookupd's answer.
#[derive(Debug, Deserialize)]
struct Producer {
    broadcast_address: String,
    http_port: u16,
}

/// nsqd's answer to `/stats?format=json`.
#[derive(Debug, Deserialize)]
struct Stats {
    #[serde(default)]
    topics: Vec<TopicStats>,
}

#[derive(Debug, Deserialize)]
struct TopicStats {
    topic_name: String,
    #[serde(default)]
    channels: Vec<ChannelStats>,
}

#[derive(Debug, Deserialize)]
struct ChannelStats {
    channel_name: String,
    #[serde(default)]
    depth: u64,
    #[serde(default)]
    client_count: u64,
}

/// Asks nsqlookupd and nsqd about the channels of one topic.
#[derive(Debug, Clone)]
pub struct ChannelWatch {
    client: reqwest::Client,
    /// `--lookupd-http-address` (base URLs).
    lookupds: Vec<String>,
    /// The passing nsqlookupd in Consul (`host:port`), with `--consul-http-address`.
    consul: Option<tokio::sync::watch::Receiver<Vec<String>>>,
    topic: String,
}

impl ChannelWatch {
    /// A watch of `topic` through the nsqlookupd base URLs `lookupds` (`http://host:port`)
    /// and those Consul lists (`consul`); `None` when there is neither.
    pub fn new(
        lookupds: Vec<String>,
        consul: Option<tokio::sync::watch::Receiver<Vec<String>>>,
        topic: &str,
    ) -> Option<ChannelWatch> {
        if lookupds.is_empty() && consul.is_none() {
            return None;
        }
        let client = reqwest::Client::builder().timeout(TIMEOUT).build().ok()?;
        Some(ChannelWatch {
            client,
            lookupds,
            consul,
            topic: topic.to_owned(),
        })
    }

    /// The nsqlookupd base URLs to ask now.
    fn lookupd_urls(&self) -> Vec<String> {
        let found: Vec<String> = self
            .consul
            .as_ref()
            .map(|rx| {
                rx.borrow()
                    .iter()
                    .map(|a| {
                        if a.starts_with("http://") {
                            a.clone()
                        } else {
                            format!("http://{a}")
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        suite_common::consul::union(&self.lookupds, &found)
    }

    /// GETs `url` and parses at most [`MAX_BODY`] bytes of JSON.
    async fn get<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let body = suite_common::body::read_capped(response, MAX_BODY)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }

    /// The topic's channels over every nsqd nsqlookupd lists for it. Errors of single nodes
    /// leave their channels out; `Err` when no node answered.
    pub async fn look(&self) -> Result<Channels, String> {
        let mut nodes = Vec::new();
        let mut errors = Vec::new();
        for lookupd in &self.lookupd_urls() {
            let url = format!("{lookupd}/lookup?topic={}", self.topic);
            match self.get::<Lookup>(&url).await {
                Ok(lookup) => {
                    for p in lookup.producers {
                        let node = format!("{}:{}", p.broadcast_address, p.http_port);
                        if !nodes.contains(&node) && nodes.len() < MAX_NODES {
                            nodes.push(node);
                        }
                    }
                }
                Err(e) => errors.push(format!("{lookupd}: {e}")),
            }
        }
        let mut channels = Channels::new();
        let mut answered = 0;
        for node in &nodes {
            let url = format!(
                "http://{node}/stats?format=json&topic={}&include_clients=false",
                self.topic
            );
            match self.get::<Stats>(&url).await {
                Ok(stats) => {
                    answered += 1;
                    let topic = stats
                        .topics
                        .into_iter()
                        .find(|t| t.topic_name == self.topic);
                    for c in topic.map(|t| t.channels).unwrap_or_default() {
                        if channels.len() >= MAX_CHANNELS && !channels.contains_key(&c.channel_name)
                        {
                            continue;
                        }
                        let entry = channels.entry(c.channel_name).or_default();
                        entry.depth = entry.depth.saturating_add(c.depth);
                        entry.clients = entry.clients.saturating_add(c.client_count);
                    }
                }
                Err(e) => errors.push(format!("nsqd {node}: {e}")),
            }
        }
        if answered == 0 && !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(channels)
    }
}

/// Describes the gauges.
pub fn describe() {
    metrics::describe_gauge!(
        CHANNEL_DEPTH,
        "Messages waiting in a channel of the logger's topic, over every nsqd"
    );
    metrics::describe_gauge!(
        CHANNEL_CLIENTS,
        "Clients reading a channel of the logger's topic, over every nsqd"
    );
}

/// Every `interval`, looks at the channels, sets the gauges, keeps the result in `latest`
/// for the summary line and warns about a channel with messages and no client.
pub async fn run(watch: ChannelWatch, interval: Duration, latest: Arc<Mutex<Channels>>) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warn_error = LogLimiter::default();
    // When each channel without a client was last warned about.
    let mut warned: BTreeMap<String, Instant> = BTreeMap::new();
    let mut known: Vec<String> = Vec::new();
    loop {
        tick.tick().await;
        let channels = match watch.look().await {
            Ok(channels) => channels,
            Err(e) => {
                if let Some(suppressed) = warn_error.check() {
                    tracing::warn!(error = %e, suppressed, topic = %watch.topic,
                        "cannot read the topic's channels from nsqlookupd and nsqd");
                }
                continue;
            }
        };
        // Channels gone since the last look read 0, not their last value.
        for name in known.iter().filter(|n| !channels.contains_key(*n)) {
            let labels = [("topic", watch.topic.clone()), ("channel", name.clone())];
            metrics::gauge!(CHANNEL_DEPTH, &labels).set(0.0);
            metrics::gauge!(CHANNEL_CLIENTS, &labels).set(0.0);
        }
        known = channels.keys().cloned().collect();
        warned.retain(|name, _| channels.get(name).is_some_and(|c| c.clients == 0));
        for (name, c) in &channels {
            let labels = [("topic", watch.topic.clone()), ("channel", name.clone())];
            metrics::gauge!(CHANNEL_DEPTH, &labels).set(c.depth as f64);
            metrics::gauge!(CHANNEL_CLIENTS, &labels).set(c.clients as f64);
            let due = warned
                .get(name)
                .is_none_or(|last| last.elapsed() >= ORPHAN_WARN_EVERY);
            if c.clients == 0 && c.depth > 0 && due {
                warned.insert(name.clone(), Instant::now());
                {
                    tracing::warn!(
                        topic = %watch.topic,
                        channel = %name,
                        depth = c.depth,
                        "a channel with messages and no client keeps a copy of every message: \
                         if its consumer is gone for good, delete it (README, Operating it: \
                         a channel left behind)"
                    );
                }
            }
        }
        match latest.lock() {
            Ok(mut l) => *l = channels,
            Err(poisoned) => *poisoned.into_inner() = channels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_channels_without_clients() {
        let mut c = Channels::new();
        c.insert(
            "archive".into(),
            ChannelDepth {
                depth: 7274,
                clients: 0,
            },
        );
        c.insert(
            "logger".into(),
            ChannelDepth {
                depth: 0,
                clients: 1,
            },
        );
        assert_eq!(
            summary("results", &c),
            "results channels: archive 7274 (no client), logger 0 (1 client)"
        );
        assert_eq!(summary("results", &Channels::new()), "");
        for n in 0..20 {
            c.insert(format!("c{n:02}"), ChannelDepth::default());
        }
        assert!(summary("results", &c).ends_with("... (14 more)"));
    }
}
