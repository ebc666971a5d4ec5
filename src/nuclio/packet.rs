//! The wrapper's packets: one line each, its first byte the packet type.

use serde::Deserialize;

use super::error::NuclioError;
use super::logs::{self, LogRecord, Via};
use crate::worker::WorkerId;

/// One line from the wrapper, its type byte stripped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Packet<'a> {
    /// `s`: the connection's task has started.
    Start,
    /// `l{json}`: a log record of the handler.
    Log(&'a str),
    /// `m{json}`: a metric, `{"duration": seconds}`.
    Metric(&'a str),
    /// `r{json}`: the response.
    Response(&'a str),
    /// `c{json}`: the head and first chunk of a streamed response.
    StreamStart(&'a str),
    /// `b<base64>`: a further chunk of a streamed response.
    Chunk(&'a str),
    /// `e`: the end of a streamed response.
    End,
}

impl<'a> Packet<'a> {
    /// Splits `line` (without its newline) into type and payload.
    pub(crate) fn parse(line: &'a str) -> Result<Self, NuclioError> {
        let Some(kind) = line.chars().next() else {
            return Err(NuclioError::EmptyLine);
        };
        let rest = &line[kind.len_utf8()..];
        Ok(match kind {
            's' => Self::Start,
            'l' => Self::Log(rest),
            'm' => Self::Metric(rest),
            'r' => Self::Response(rest),
            'c' => Self::StreamStart(rest),
            'b' => Self::Chunk(rest),
            'e' => Self::End,
            other => return Err(NuclioError::UnknownPacket { kind: other }),
        })
    }

    /// The packet type, for errors.
    pub(crate) fn kind(&self) -> char {
        match self {
            Self::Start => 's',
            Self::Log(_) => 'l',
            Self::Metric(_) => 'm',
            Self::Response(_) => 'r',
            Self::StreamStart(_) => 'c',
            Self::Chunk(_) => 'b',
            Self::End => 'e',
        }
    }
}

/// Parses the JSON of packet `kind`.
pub(crate) fn json<'a, T: Deserialize<'a>>(kind: char, text: &'a str) -> Result<T, NuclioError> {
    serde_json::from_str(text).map_err(|source| NuclioError::InvalidJson { kind, source })
}

/// Forwards an `l` packet to `tracing`; see [`logs::forward`].
pub(crate) fn forward_log(worker: WorkerId, text: &str) -> Result<(), NuclioError> {
    let record: LogRecord = json('l', text)?;
    logs::forward(worker, Via::EventSocket, record);
    Ok(())
}

/// The handler's duration from an `m` packet, if it carries a valid one.
pub(crate) fn metric_duration(text: &str) -> Result<Option<std::time::Duration>, NuclioError> {
    #[derive(Deserialize)]
    struct Metric {
        #[serde(default)]
        duration: Option<f64>,
    }
    let metric: Metric = json('m', text)?;
    Ok(metric
        .duration
        .and_then(|seconds| std::time::Duration::try_from_secs_f64(seconds).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_packet_type_is_recognised_by_its_first_byte() {
        assert_eq!(Packet::parse("s").unwrap(), Packet::Start);
        assert_eq!(Packet::parse("r{}").unwrap(), Packet::Response("{}"));
        assert_eq!(Packet::parse("bAAA=").unwrap(), Packet::Chunk("AAA="));
        assert_eq!(Packet::parse("e").unwrap(), Packet::End);
        assert!(matches!(Packet::parse(""), Err(NuclioError::EmptyLine)));
        assert!(matches!(
            Packet::parse("q{}"),
            Err(NuclioError::UnknownPacket { kind: 'q' })
        ));
        assert!(matches!(
            Packet::parse("é"),
            Err(NuclioError::UnknownPacket { kind: 'é' })
        ));
    }

    #[test]
    fn a_metric_gives_its_duration_and_ignores_nonsense_values() {
        assert_eq!(
            metric_duration(r#"{"duration": 0.25}"#).unwrap(),
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(metric_duration(r#"{"duration": -1}"#).unwrap(), None);
        assert_eq!(metric_duration(r#"{"other": 1}"#).unwrap(), None);
        assert!(matches!(
            metric_duration("{"),
            Err(NuclioError::InvalidJson { kind: 'm', .. })
        ));
    }

    #[test]
    fn a_log_record_with_a_wrong_type_is_an_error() {
        assert!(forward_log(WorkerId::new(0), r#"{"level": "info", "message": "hi"}"#).is_ok());
        assert!(matches!(
            forward_log(WorkerId::new(0), r#"{"message": 3}"#),
            Err(NuclioError::InvalidJson { kind: 'l', .. })
        ));
    }
}
