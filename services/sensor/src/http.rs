//! `GET /readings`: the sensor's history over HTTP, the talk's "replay interface" for people
//! and tools.
//!
//! ```text
//! GET /readings?from=100&to=199            (epoch defaults to the current one)
//! GET /readings?epoch=1732712345678&from=100&to=199
//! ```
//!
//! Answers `200` with the readings of `from..=to` that the history holds and the ranges it
//! does not (evicted, or not taken yet):
//!
//! ```json
//! {"sensor_id":"s1","epoch":1732712345678,"from":100,"to":199,
//!  "oldest_seq":1,"newest_seq":150,
//!  "readings":[{"schema":1,"sensor_id":"s1","epoch":1732712345678,"seq":100,...}],
//!  "unavailable":[{"from":151,"to":199}]}
//! ```
//!
//! A range is at most [`MAX_RANGE`] seqs. Bad parameters get `400 {"error": "..."}` saying
//! what is wrong; an epoch other than the current one gets `404` (its readings are gone).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use messages::SensorReading;
use serde::Serialize;

use crate::{
    history::{History, SeqRange},
    metrics as m,
};

/// Most seqs one `GET /readings` may ask for.
pub const MAX_RANGE: u64 = 10_000;

/// What the `/readings` handler needs.
#[derive(Debug, Clone)]
pub struct ReadingsState {
    /// This sensor's id, echoed in answers.
    pub sensor_id: Arc<str>,
    /// The current epoch: the only one the history holds.
    pub epoch: u64,
    /// The history, shared with the sensor's loop.
    pub history: Arc<Mutex<History>>,
}

/// The sensor's own routes, to merge into the common router.
pub fn router(state: ReadingsState) -> Router {
    Router::new()
        .route("/readings", get(readings))
        .with_state(state)
}

/// The answer to a good `GET /readings`.
#[derive(Debug, Serialize)]
struct ReadingsAnswer {
    /// This sensor's id.
    sensor_id: String,
    /// The epoch of the readings.
    epoch: u64,
    /// First seq asked for.
    from: u64,
    /// Last seq asked for (inclusive).
    to: u64,
    /// Oldest seq the history holds (`null` when empty).
    oldest_seq: Option<u64>,
    /// Newest seq the history holds (`null` when empty).
    newest_seq: Option<u64>,
    /// The readings found, in seq order.
    readings: Vec<SensorReading>,
    /// Parts of the range not held.
    unavailable: Vec<SeqRange>,
}

/// A `GET /readings` that cannot be answered with readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    /// 400 for bad parameters, 404 for another epoch.
    pub status: StatusCode,
    /// What is wrong, in words.
    pub message: String,
}

impl QueryError {
    /// A 400 with this message.
    fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// Checks the query parameters of `GET /readings`; returns the range `(from, to)`.
pub fn parse_query(
    params: &HashMap<String, String>,
    current_epoch: u64,
) -> Result<(u64, u64), QueryError> {
    if let Some(unknown) = params
        .keys()
        .find(|k| !matches!(k.as_str(), "epoch" | "from" | "to"))
    {
        return Err(QueryError::bad(format!(
            "unknown parameter '{unknown}' (expected epoch, from, to)"
        )));
    }
    let number = |name: &str| -> Result<Option<u64>, QueryError> {
        params
            .get(name)
            .map(|v| {
                v.trim().parse::<u64>().map_err(|_| {
                    QueryError::bad(format!(
                        "'{name}' must be a non-negative integer, not '{v}'"
                    ))
                })
            })
            .transpose()
    };
    let epoch = number("epoch")?;
    let from = number("from")?.ok_or_else(|| QueryError::bad("'from' is required"))?;
    let to = number("to")?.ok_or_else(|| QueryError::bad("'to' is required"))?;
    if from == 0 {
        return Err(QueryError::bad(
            "'from' must be at least 1 (seqs start at 1)",
        ));
    }
    if to < from {
        return Err(QueryError::bad(format!(
            "'to' ({to}) must not be less than 'from' ({from})"
        )));
    }
    if to - from >= MAX_RANGE {
        return Err(QueryError::bad(format!(
            "range {from}..={to} is too large: at most {MAX_RANGE} seqs per request"
        )));
    }
    if let Some(epoch) = epoch.filter(|e| *e != current_epoch) {
        return Err(QueryError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "epoch {epoch} is not this sensor's current epoch {current_epoch}: \
                 readings of other epochs are not kept"
            ),
        });
    }
    Ok((from, to))
}

/// `GET /readings`.
async fn readings(
    State(state): State<ReadingsState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<ReadingsAnswer>, QueryError> {
    let (from, to) = parse_query(&params, state.epoch)?;
    let history = state.history.lock().map_err(|_| QueryError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: "the history is not available".to_owned(),
    })?;
    let lookup = history.range(from, to);
    let answer = ReadingsAnswer {
        sensor_id: state.sensor_id.to_string(),
        epoch: state.epoch,
        from,
        to,
        oldest_seq: history.oldest_seq(),
        newest_seq: history.newest_seq(),
        readings: lookup.readings,
        unavailable: lookup.unavailable,
    };
    drop(history);
    metrics::counter!(m::READINGS_SERVED).increment(answer.readings.len() as u64);
    Ok(Json(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn good_queries() {
        assert_eq!(
            parse_query(&q(&[("from", "1"), ("to", "10")]), 7),
            Ok((1, 10))
        );
        assert_eq!(
            parse_query(&q(&[("epoch", "7"), ("from", "5"), ("to", "5")]), 7),
            Ok((5, 5))
        );
        assert_eq!(
            parse_query(&q(&[("from", "1"), ("to", "10000")]), 7),
            Ok((1, 10_000))
        );
    }

    #[test]
    fn bad_queries_say_why() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("to", "3")], "'from' is required"),
            (&[("from", "3")], "'to' is required"),
            (
                &[("from", "x"), ("to", "3")],
                "'from' must be a non-negative integer, not 'x'",
            ),
            (
                &[("from", "-1"), ("to", "3")],
                "'from' must be a non-negative integer",
            ),
            (&[("from", "0"), ("to", "3")], "'from' must be at least 1"),
            (
                &[("from", "5"), ("to", "3")],
                "'to' (3) must not be less than 'from' (5)",
            ),
            (
                &[("from", "1"), ("to", "10001")],
                "too large: at most 10000",
            ),
            (
                &[("from", "1"), ("to", "2"), ("seq", "1")],
                "unknown parameter 'seq'",
            ),
            (
                &[("epoch", "e"), ("from", "1"), ("to", "2")],
                "'epoch' must be",
            ),
        ];
        for (params, expected) in cases {
            let err = parse_query(&q(params), 7).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{params:?}");
            assert!(
                err.message.contains(expected),
                "{params:?}: {}",
                err.message
            );
        }
    }

    #[test]
    fn other_epoch_is_not_found() {
        let err = parse_query(&q(&[("epoch", "6"), ("from", "1"), ("to", "2")]), 7).unwrap_err();
        assert_eq!(err.status, StatusCode::NOT_FOUND);
        assert!(err.message.contains("epoch 6"), "{}", err.message);
    }
}
