//! [`NuclioSpec`]: the part of a Nuclio function configuration that sets up the
//! pool, read from JSON with Nuclio's own field names.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::error::SpecError;
use crate::config::{Mode, PoolConfig};

/// The pool settings of a Nuclio function configuration.
///
/// It reads a JSON document with Nuclio's names (camelCase) and ignores every
/// field it does not use:
///
/// ```json
/// {
///   "spec": {
///     "eventTimeout": "30s",
///     "triggers": {
///       "http": {
///         "kind": "http",
///         "numWorkers": 2,
///         "mode": "async",
///         "async": {
///           "maxConnectionsNumber": 500,
///           "connectionAvailabilityTimeout": "500ms",
///           "establishConnectionTimeout": "10s"
///         }
///       }
///     }
///   }
/// }
/// ```
///
/// Durations are strings such as `"10s"`, `"500ms"` or `"1m 30s"`. The crate
/// parses JSON only, to stay free of a YAML parser; a function's
/// `function.yaml` is read by deserializing this type with a serde YAML crate,
/// as the `nuclio_gateway` binary's `--spec` does with `serde_norway`.
///
/// ```
/// use std::time::Duration;
/// use async_worker_pool::nuclio::NuclioSpec;
///
/// let spec = NuclioSpec::from_json(r#"{"spec": {"triggers": {"http": {
///     "numWorkers": 2, "async": {"maxConnectionsNumber": 50}}}}}"#)?;
/// let config = spec.pool_config("http")?;
/// assert_eq!((config.num_workers, config.max_connections), (2, 50));
/// assert_eq!(config.acquire_timeout, Duration::from_secs(10));
/// # Ok::<(), async_worker_pool::nuclio::SpecError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct NuclioSpec {
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default, deserialize_with = "duration")]
    event_timeout: Option<Duration>,
    #[serde(default)]
    triggers: BTreeMap<String, Trigger>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Trigger {
    #[serde(default)]
    num_workers: Option<usize>,
    #[serde(default)]
    mode: Option<TriggerMode>,
    #[serde(default, rename = "async")]
    async_settings: AsyncSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TriggerMode {
    Sync,
    Async,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AsyncSettings {
    #[serde(default)]
    max_connections_number: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    connection_availability_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    establish_connection_timeout: Option<Duration>,
}

/// A duration written as Nuclio writes them, `"10s"` or `"500ms"`.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as \"10s\" or \"500ms\"")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            humantime::parse_duration(text)
                .map(Some)
                .map_err(|error| E::custom(format!("invalid duration {text:?}: {error}")))
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    deserializer.deserialize_any(Visitor)
}

impl NuclioSpec {
    /// Reads a function configuration from JSON.
    ///
    /// # Errors
    ///
    /// [`SpecError::Invalid`] with the path of the field at fault (such as
    /// `spec.triggers.http.numWorkers`) when the JSON is malformed or a field has
    /// the wrong type.
    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let spec: Self = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            SpecError::Invalid {
                path: error.path().to_string(),
                source: error.into_inner(),
            }
        })?;
        deserializer.end().map_err(|source| SpecError::Invalid {
            path: ".".to_owned(),
            source,
        })?;
        Ok(spec)
    }

    /// The names of the triggers in the spec, sorted.
    pub fn trigger_names(&self) -> impl Iterator<Item = &str> {
        self.spec.triggers.keys().map(String::as_str)
    }

    /// The pool configuration for trigger `trigger`: [`PoolConfig::default`]
    /// with what the spec sets.
    ///
    /// | Nuclio | [`PoolConfig`] |
    /// |---|---|
    /// | `spec.eventTimeout` | `event_timeout` |
    /// | `…numWorkers` | `num_workers` |
    /// | `…mode` | `mode`; `sync` also sets `max_connections` to 1 |
    /// | `…async.maxConnectionsNumber` | `max_connections` |
    /// | `…async.connectionAvailabilityTimeout` | `acquire_timeout` |
    /// | `…async.establishConnectionTimeout` | `establish_connection_timeout` |
    ///
    /// A trigger without `mode` is taken as `async`: this crate drives the async
    /// wrapper (Nuclio itself defaults to its sync wrapper).
    ///
    /// # Errors
    ///
    /// [`SpecError::NoSuchTrigger`], or [`SpecError::Config`] when the values
    /// are out of range (zero workers, say).
    pub fn pool_config(&self, trigger: &str) -> Result<PoolConfig, SpecError> {
        let Some(settings) = self.spec.triggers.get(trigger) else {
            return Err(SpecError::NoSuchTrigger {
                name: trigger.to_owned(),
                available: self.trigger_names().collect::<Vec<_>>().join(", "),
            });
        };
        let mut config = PoolConfig {
            event_timeout: self.spec.event_timeout,
            ..PoolConfig::default()
        };
        if let Some(workers) = settings.num_workers {
            config.num_workers = workers;
        }
        let asynchronous = &settings.async_settings;
        if let Some(connections) = asynchronous.max_connections_number {
            config.max_connections = connections;
        }
        if let Some(timeout) = asynchronous.connection_availability_timeout {
            config.acquire_timeout = timeout;
        }
        if let Some(timeout) = asynchronous.establish_connection_timeout {
            config.establish_connection_timeout = timeout;
        }
        if settings.mode == Some(TriggerMode::Sync) {
            config.mode = Mode::Sync;
            config.max_connections = 1;
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{
        "metadata": {"name": "f"},
        "spec": {
            "runtime": "python",
            "eventTimeout": "1m 30s",
            "triggers": {
                "web": {
                    "kind": "http",
                    "numWorkers": 3,
                    "mode": "async",
                    "attributes": {"port": 8080},
                    "async": {
                        "maxConnectionsNumber": 200,
                        "connectionAvailabilityTimeout": "500ms",
                        "establishConnectionTimeout": "5s"
                    }
                },
                "cron": {"kind": "cron", "mode": "sync", "numWorkers": 2}
            }
        }
    }"#;

    #[test]
    fn nuclio_names_map_onto_the_pool_config() {
        let spec = NuclioSpec::from_json(FULL).unwrap();
        assert_eq!(spec.trigger_names().collect::<Vec<_>>(), ["cron", "web"]);
        let config = spec.pool_config("web").unwrap();
        assert_eq!(config.num_workers, 3);
        assert_eq!(config.max_connections, 200);
        assert_eq!(config.mode, Mode::Async);
        assert_eq!(config.event_timeout, Some(Duration::from_secs(90)));
        assert_eq!(config.acquire_timeout, Duration::from_millis(500));
        assert_eq!(config.establish_connection_timeout, Duration::from_secs(5));
    }

    #[test]
    fn sync_mode_means_one_connection_per_worker() {
        let config = NuclioSpec::from_json(FULL)
            .unwrap()
            .pool_config("cron")
            .unwrap();
        assert_eq!((config.mode, config.max_connections), (Mode::Sync, 1));
        assert_eq!(config.num_workers, 2);
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let error =
            NuclioSpec::from_json(r#"{"spec": {"triggers": {"http": {"numWorkers": "four"}}}}"#)
                .unwrap_err();
        assert!(
            matches!(&error, SpecError::Invalid { path, .. } if path == "spec.triggers.http.numWorkers"),
            "{error:?}"
        );
        let error = NuclioSpec::from_json(
            r#"{"spec": {"triggers": {"h": {"async": {"connectionAvailabilityTimeout": 5}}}}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&error, SpecError::Invalid { path, .. }
                if path == "spec.triggers.h.async.connectionAvailabilityTimeout"),
            "{error:?}"
        );
        let error = NuclioSpec::from_json(r#"{"spec": {"eventTimeout": "soon"}}"#).unwrap_err();
        assert!(
            matches!(&error, SpecError::Invalid { path, .. } if path == "spec.eventTimeout"),
            "{error:?}"
        );
        let error = NuclioSpec::from_json(r#"{"spec": {"triggers": {"h": {"mode": "fast"}}}}"#)
            .unwrap_err();
        assert!(
            matches!(&error, SpecError::Invalid { path, .. } if path == "spec.triggers.h.mode"),
            "{error:?}"
        );
    }

    #[test]
    fn an_unknown_trigger_or_an_invalid_value_is_an_error() {
        let spec = NuclioSpec::from_json(FULL).unwrap();
        assert!(matches!(
            spec.pool_config("kafka"),
            Err(SpecError::NoSuchTrigger { available, .. }) if available == "cron, web"
        ));
        let spec =
            NuclioSpec::from_json(r#"{"spec": {"triggers": {"h": {"numWorkers": 0}}}}"#).unwrap();
        assert!(matches!(
            spec.pool_config("h"),
            Err(SpecError::Config(error)) if error.field() == "num_workers"
        ));
    }
}
