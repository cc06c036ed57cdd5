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

/// Longest piece of the request an error message repeats; longer ones are cut with `...`,
/// so that an answer never grows with what a client sends.
const MAX_ECHO: usize = 40;

/// `text` as an error message shows it: at most [`MAX_ECHO`] characters.
fn echo(text: &str) -> String {
    match text.char_indices().nth(MAX_ECHO) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
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
            "unknown parameter '{}' (expected epoch, from, to)",
            echo(unknown)
        )));
    }
    let number = |name: &str| -> Result<Option<u64>, QueryError> {
        params
            .get(name)
            .map(|v| {
                v.trim().parse::<u64>().map_err(|_| {
                    QueryError::bad(format!(
                        "'{name}' must be a non-negative integer, not '{}'",
                        echo(v)
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

    /// Property tests of the query parsing: arbitrary query strings (huge or negative
    /// numbers, repeated keys, non-UTF-8 escapes, very long values) give a range within
    /// [`MAX_RANGE`] or a 4xx whose message is short, never a panic. `PROPTEST_CASES` scales
    /// them (README, "Test it").
    mod props {
        use super::*;
        use axum::http::Uri;
        use proptest::prelude::*;

        /// Longest error message: the longest template (the range one, about 80 characters
        /// with two u64 of 20 digits each) or a template of under 70 characters with one
        /// echo of at most `MAX_ECHO` characters of up to 4 bytes each, plus `...`.
        const MAX_MESSAGE: usize = 100 + 4 * MAX_ECHO;

        /// Pieces a query string is made of: the real names, separators, numbers at and
        /// past the u64 edges, signs, spaces, escapes of any byte (non-UTF-8 included).
        fn token() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => proptest::sample::select(vec![
                    "epoch", "from", "to", "=", "=", "&", "&", "-", "+", "%20", "0", "1", "7",
                    "10000", "10001", "18446744073709551615", "18446744073709551616",
                    "99999999999999999999999999", "seq", "%00", "%FF", "%C3%A9", "%",
                ]).prop_map(str::to_owned),
                1 => any::<u64>().prop_map(|n| n.to_string()),
                1 => any::<u8>().prop_map(|b| format!("%{b:02X}")),
                1 => (1usize..3000).prop_map(|n| "9".repeat(n)),
                1 => "[a-zA-Z0-9._~-]{1,12}",
            ]
        }

        /// What the handler's `Query` extractor makes of `query`, then `parse_query`.
        fn parse(query: &str, epoch: u64) -> Result<Result<(u64, u64), QueryError>, TestCaseError> {
            let uri: Uri = format!("/readings?{query}")
                .parse()
                .map_err(|e| TestCaseError::fail(format!("{query:?} is not a URI: {e}")))?;
            match Query::<HashMap<String, String>>::try_from_uri(&uri) {
                Ok(Query(params)) => Ok(parse_query(&params, epoch)),
                // axum answers these itself, with a 400.
                Err(rejection) => {
                    prop_assert!(rejection.status().is_client_error(), "{rejection:?}");
                    Err(TestCaseError::reject("not a query string axum accepts"))
                }
            }
        }

        proptest! {
            /// Any query string: a range of at most MAX_RANGE seqs starting at 1 or more, or a
            /// 400/404 with a short message; never a panic.
            #[test]
            fn any_query_gives_a_bounded_range_or_a_short_4xx(
                tokens in proptest::collection::vec(token(), 0..24),
                epoch in prop_oneof![Just(7u64), any::<u64>()],
            ) {
                let query = tokens.concat();
                match parse(&query, epoch)? {
                    Ok((from, to)) => {
                        prop_assert!(from >= 1 && from <= to, "{from}..={to}");
                        prop_assert!(to - from < MAX_RANGE, "{from}..={to}");
                    }
                    Err(e) => {
                        prop_assert!(
                            e.status == StatusCode::BAD_REQUEST || e.status == StatusCode::NOT_FOUND,
                            "{e:?}"
                        );
                        prop_assert!(!e.message.is_empty());
                        prop_assert!(e.message.len() <= MAX_MESSAGE, "{} bytes: {}", e.message.len(), e.message);
                    }
                }
            }

            /// Well-formed numbers (and keys given twice, the last one counting): the result
            /// is exactly what the rules say.
            #[test]
            fn numeric_queries_follow_the_rules(
                from in prop_oneof![any::<u64>(), 0u64..20_000],
                span in prop_oneof![any::<u64>(), 0u64..20_000],
                asked_epoch in proptest::option::of(prop_oneof![Just(7u64), any::<u64>()]),
                decoy in any::<u64>(),
            ) {
                let to = from.saturating_add(span);
                let mut query = format!("from={decoy}&from={from}&to={to}");
                if let Some(e) = asked_epoch {
                    query.push_str(&format!("&epoch={e}"));
                }
                let got = parse(&query, 7)?;
                let expected_ok = from >= 1 && to - from < MAX_RANGE && asked_epoch.is_none_or(|e| e == 7);
                match got {
                    Ok(range) => {
                        prop_assert!(expected_ok);
                        prop_assert_eq!(range, (from, to));
                    }
                    Err(e) => {
                        prop_assert!(!expected_ok, "{e:?}");
                        let other_epoch = from >= 1 && to - from < MAX_RANGE;
                        let status = if other_epoch { StatusCode::NOT_FOUND } else { StatusCode::BAD_REQUEST };
                        prop_assert_eq!(e.status, status, "{}", e.message);
                    }
                }
            }
        }
    }
}
