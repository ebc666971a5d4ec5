//! [`TraceContext`]: a W3C trace context (`traceparent` and `tracestate`),
//! carried with an event to its worker. Checked, not interpreted: the crate
//! needs no OpenTelemetry to pass one on.

use std::fmt;

/// The longest `tracestate` passed on, in bytes: the W3C recommendation's
/// 512, which every vendor must accept.
pub const MAX_TRACESTATE_LEN: usize = 512;

/// A W3C trace context (<https://www.w3.org/TR/trace-context/>): the
/// `traceparent` of the caller's span, and the vendors' `tracestate`, as they
/// came in on a request. An event that carries one lets the worker's handler
/// continue the caller's trace.
///
/// # Examples
///
/// ```
/// use async_worker_pool::TraceContext;
///
/// let trace = TraceContext::parse(
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
///     Some("congo=t61rcWkgMzE"),
/// )?;
/// assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(trace.tracestate(), Some("congo=t61rcWkgMzE"));
/// assert!(TraceContext::parse("00-not-a-trace-01", None).is_err());
/// # Ok::<(), async_worker_pool::InvalidTraceContext>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

/// Why a `traceparent` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidTraceContext {
    /// Not `version-traceid-parentid-flags` in lowercase hex, of the lengths
    /// the W3C format gives them.
    #[error("traceparent is not in the W3C format (version-traceid-parentid-flags)")]
    Format,
    /// Version `ff`, which the format forbids.
    #[error("traceparent has the forbidden version ff")]
    Version,
    /// A trace id or parent id of all zeros, which the format forbids.
    #[error("traceparent has an all-zero trace id or parent id")]
    ZeroId,
}

impl TraceContext {
    /// Checks a `traceparent` (and keeps a `tracestate` beside it).
    ///
    /// As the W3C format asks of a receiver: a `traceparent` it cannot parse
    /// is an error (and its `tracestate` goes with it), while a `tracestate`
    /// that is empty, longer than [`MAX_TRACESTATE_LEN`] or not printable
    /// ASCII is dropped and the `traceparent` kept. A version above `00` is
    /// accepted if it starts like version `00`, as the format allows for
    /// versions to come.
    ///
    /// # Errors
    ///
    /// [`InvalidTraceContext`] when `traceparent` is not a valid one.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Result<Self, InvalidTraceContext> {
        let traceparent = traceparent.trim_matches([' ', '\t']);
        check_traceparent(traceparent)?;
        let tracestate = tracestate
            .map(|state| state.trim_matches([' ', '\t']))
            .filter(|state| {
                !state.is_empty()
                    && state.len() <= MAX_TRACESTATE_LEN
                    && state.bytes().all(|byte| (b' '..=b'~').contains(&byte))
            })
            .map(str::to_owned);
        Ok(Self {
            traceparent: traceparent.to_owned(),
            tracestate,
        })
    }

    /// The `traceparent`, as it came in.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate`, if one came in (and was fit to pass on).
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The trace id: 32 lowercase hex digits.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The caller's span id (the `traceparent`'s parent id): 16 lowercase hex
    /// digits.
    pub fn parent_id(&self) -> &str {
        &self.traceparent[36..52]
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.traceparent)
            .field("tracestate", &self.tracestate)
            .finish()
    }
}

/// `version "-" trace-id "-" parent-id "-" trace-flags`, lowercase hex of 2,
/// 32, 16 and 2 digits; a later version may append `"-" ...`.
fn check_traceparent(value: &str) -> Result<(), InvalidTraceContext> {
    const LEN: usize = 55;
    let bytes = value.as_bytes();
    let shaped = bytes.len() >= LEN
        && [2, 35, 52].iter().all(|&at| bytes[at] == b'-')
        && [0..2, 3..35, 36..52, 53..55].into_iter().all(|field| {
            bytes[field]
                .iter()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
    if !shaped {
        return Err(InvalidTraceContext::Format);
    }
    let version = &value[0..2];
    if version == "ff" {
        return Err(InvalidTraceContext::Version);
    }
    // Version 00 has exactly four fields; a later one may have more after a dash.
    if (version == "00" && bytes.len() != LEN) || (bytes.len() > LEN && bytes[LEN] != b'-') {
        return Err(InvalidTraceContext::Format);
    }
    let all_zero = |field: &str| field.bytes().all(|b| b == b'0');
    if all_zero(&value[3..35]) || all_zero(&value[36..52]) {
        return Err(InvalidTraceContext::ZeroId);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_kept_with_its_tracestate() {
        let trace =
            TraceContext::parse(VALID, Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")).unwrap();
        assert_eq!(trace.traceparent(), VALID);
        assert_eq!(trace.parent_id(), "00f067aa0ba902b7");
        assert_eq!(
            trace.tracestate(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
    }

    #[test]
    fn a_malformed_traceparent_is_refused_with_its_reason() {
        let cases = [
            ("", InvalidTraceContext::Format),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                InvalidTraceContext::Format,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                InvalidTraceContext::Format,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                InvalidTraceContext::Format,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                InvalidTraceContext::Format,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                InvalidTraceContext::Version,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                InvalidTraceContext::ZeroId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                InvalidTraceContext::ZeroId,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                InvalidTraceContext::Format,
            ),
        ];
        for (value, reason) in cases {
            assert_eq!(
                TraceContext::parse(value, Some("a=b")),
                Err(reason),
                "{value:?}"
            );
        }
    }

    #[test]
    fn a_later_version_may_carry_more_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future";
        assert_eq!(
            TraceContext::parse(later, None).unwrap().traceparent(),
            later
        );
    }

    #[test]
    fn an_unfit_tracestate_is_dropped_and_the_traceparent_kept() {
        let long = "a=".to_owned() + &"x".repeat(MAX_TRACESTATE_LEN);
        for state in ["", "  ", "a=\u{e9}", "a=\nb", long.as_str()] {
            let trace = TraceContext::parse(VALID, Some(state)).unwrap();
            assert_eq!(trace.tracestate(), None, "{state:?}");
        }
    }
}
