//! The talk's starting point, for comparison: the sensor, the worker and an app that talk over
//! plain HTTP ("Example 1: REST" and "REST: second attempt" in the talk). It exists to measure
//! the NSQ suite against it (`bench --modes rest`), not to be run in production.
//!
//! # The three services
//!
//! * `rest-sensor` ([`sensor`]): `GET /reading` takes and returns the next reading. With
//!   `--push-to URL` (repeatable) it POSTs each reading to a worker's `/square` instead, at
//!   `--rate`, the workers taken in turn (the second attempt).
//! * `rest-worker` ([`worker`]): `POST /square` answers the `WorkResult` (the squares, computed
//!   by the NSQ worker's own [`worker::process::compute`]). With `--push-to URL` it POSTs the
//!   result to the app's `/results` and answers 202 instead.
//! * `rest-app` ([`app`]): `--mode pull` (the first version): every `--interval`, GET a
//!   reading from the sensor, POST it to a worker, write the result; `--mode push`: write the
//!   results POSTed to `/results`. Lines are the logger's ([`logger::line::LogLine`]).
//!
//! Several workers need something in front of them: the sensor (push) and the app (pull) take
//! a list of worker URLs and use them in turn ([`client::RoundRobin`]). That list is the
//! coupling the talk is about: every caller knows every worker.
//!
//! Nothing is retried and nothing is queued: a request that fails loses its reading, which is
//! counted (`rest_requests_failed_total`) and logged (at most one line a second).
//!
//! # What is shared with the NSQ services
//!
//! The command line and configuration layering, logs, `/health` `/ready` `/metrics`, shutdown
//! and exit codes come from `suite-common` ([`service`] wires them once for the three
//! binaries); the wire types from `messages` (sent as JSON here).

#![warn(missing_docs)]

pub mod app;
pub mod client;
pub mod metrics;
pub mod paced;
pub mod sensor;
pub mod service;
pub mod worker;

/// Largest request or response body accepted, in bytes. A reading or result with the
/// sensor's largest `--values` is far below it; anything bigger is refused (413 on the
/// server side, an error naming the peer on the client side).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Checks the ids of a reading or result received over HTTP: not empty and at most
/// [`messages::MAX_ID_BYTES`], as the NSQ services require.
pub fn check_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{field} is empty"));
    }
    if id.len() > messages::MAX_ID_BYTES {
        return Err(format!(
            "{field} is {} bytes long; at most {} are accepted",
            id.len(),
            messages::MAX_ID_BYTES
        ));
    }
    Ok(())
}
