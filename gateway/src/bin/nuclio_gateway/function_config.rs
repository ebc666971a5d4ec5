//! `--spec`: what the Nuclio front end takes from a Nuclio function
//! configuration, the `function.yaml` that `nuctl deploy --file` takes (JSON
//! is YAML too): the pool settings of one trigger, the handler, the workers'
//! environment, and a remark on every other key, so that none is dropped
//! unsaid.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use async_worker_pool::PoolConfig;
use async_worker_pool::nuclio::{NuclioSpec, SpecError};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_norway::{Mapping, Value};

/// What a function configuration sets for the gateway.
#[derive(Debug)]
pub(crate) struct FunctionConfig {
    /// The pool settings of the trigger served, read by the library's
    /// [`NuclioSpec`].
    pub(crate) pool: PoolConfig,
    /// `spec.handler`; `--handler` wins over it.
    pub(crate) handler: Option<String>,
    /// `metadata.namespace`, which Nuclio passes the wrapper as `--namespace`.
    pub(crate) namespace: Option<String>,
    /// The workers' environment, in the order to set it: what Nuclio's
    /// runtime derives from the function (`NUCLIO_FUNCTION_NAME`,
    /// `NUCLIO_FUNCTION_DESCRIPTION`), then `spec.env`, which wins.
    pub(crate) env: Vec<(String, String)>,
    /// Every key not taken, in the document's order.
    pub(crate) remarks: Vec<Remark>,
}

/// A key of the function configuration that the gateway does not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Remark {
    /// Where it is, as a dotted path: `spec.build.image`, `spec.env[2].valueFrom`.
    pub(crate) key: String,
    /// Why it is not taken.
    pub(crate) verdict: Verdict,
}

/// Why a key is not taken, which decides how loudly it is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not a key of Nuclio's that the gateway knows: a typo, or a newer
    /// Nuclio's. Warned.
    Unknown,
    /// A setting of the function that the gateway cannot honour: the function
    /// runs otherwise than under Nuclio. Warned, with the reason.
    NotHonoured(&'static str),
    /// About building, deploying, scaling or scheduling on a platform, which a
    /// local gateway does not do: the function runs the same without it. A
    /// debug line, with the reason.
    NotApplicable(&'static str),
}

/// Why `--spec` cannot be used, with the file it names.
#[derive(Debug)]
pub(crate) struct SpecFileError {
    file: PathBuf,
    problem: Problem,
}

/// What is wrong with a function configuration.
#[derive(Debug)]
pub(crate) enum Problem {
    /// The file cannot be read.
    Read(io::Error),
    /// Not YAML, or a value of the wrong type; the parser's message names the
    /// key and the line.
    Yaml(serde_norway::Error),
    /// A YAML merge key (`<<`): the settings it merges would be missed, so it
    /// is refused rather than half read.
    MergeKey {
        /// Where it is, as a dotted path.
        key: String,
    },
    /// No such trigger, or settings the pool cannot run with.
    Pool(SpecError),
}

impl fmt::Display for SpecFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match &self.problem {
            Problem::Read(error) => write!(f, "cannot read {file}: {error}"),
            problem => write!(f, "{file}: {problem}"),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(error) => error.fmt(f),
            Self::Yaml(error) => error.fmt(f),
            Self::MergeKey { key } => write!(
                f,
                "{key}: YAML merge keys are not supported; write the merged keys out \
                 (`yq 'explode(.)'` does)"
            ),
            Self::Pool(error) => {
                error.fmt(f)?;
                let mut cause = std::error::Error::source(error);
                while let Some(error) = cause {
                    write!(f, ": {error}")?;
                    cause = error.source();
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for SpecFileError {}

/// The part of the document the gateway reads itself; the pool settings are
/// [`NuclioSpec`]'s.
#[derive(Debug, Default, Deserialize)]
struct Document {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Spec {
    #[serde(default)]
    handler: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
}

/// An entry of `spec.env`, Kubernetes' `EnvVar`. A value left unquoted
/// (`8080`) is taken as written, where Kubernetes would want it quoted.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvVar {
    name: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    value_from: Option<IgnoredAny>,
}

impl FunctionConfig {
    /// Reads `file` and takes the settings of trigger `trigger`.
    pub(crate) fn read(file: &Path, trigger: &str) -> Result<Self, SpecFileError> {
        let error = |problem| SpecFileError {
            file: file.to_owned(),
            problem,
        };
        let text = std::fs::read_to_string(file).map_err(|e| error(Problem::Read(e)))?;
        Self::parse(&text, trigger).map_err(error)
    }

    /// Takes the settings of trigger `trigger` from the text of a function
    /// configuration.
    pub(crate) fn parse(text: &str, trigger: &str) -> Result<Self, Problem> {
        let document: Value = serde_norway::from_str(text).map_err(Problem::Yaml)?;
        let mut remarks = Vec::new();
        walk(&document, "", "", trigger, &mut remarks)?;
        // Typed from the text rather than from `document`: the parser's errors
        // then carry the line as well as the key.
        let ours: Document = serde_norway::from_str(text).map_err(Problem::Yaml)?;
        let mut spec: NuclioSpec = serde_norway::from_str(text).map_err(Problem::Yaml)?;
        if spec.trigger_names().next().is_none() {
            // Nuclio gives a function without triggers a default HTTP trigger;
            // here it has the pool's defaults.
            spec =
                serde_norway::from_value(with_trigger(document, trigger)).map_err(Problem::Yaml)?;
        }
        let pool = spec.pool_config(trigger).map_err(Problem::Pool)?;

        // As Nuclio's runtime, which exports these to every runtime process.
        let mut env = Vec::new();
        if let Some(name) = &ours.metadata.name {
            env.push(("NUCLIO_FUNCTION_NAME".to_owned(), name.clone()));
        }
        if let Some(description) = &ours.spec.description {
            env.push((
                "NUCLIO_FUNCTION_DESCRIPTION".to_owned(),
                description.clone(),
            ));
        }
        for var in ours.spec.env {
            match (var.value, var.value_from) {
                (Some(value), _) => env.push((var.name, value)),
                // Resolved by the platform; `walk` has warned of it.
                (None, Some(_)) => {}
                // Kubernetes' default for an entry with neither.
                (None, None) => env.push((var.name, String::new())),
            }
        }
        Ok(Self {
            pool,
            handler: ours.spec.handler,
            namespace: ours.metadata.namespace,
            env,
            remarks,
        })
    }

    /// Logs every remark: a warning for what is unknown or not honoured, a
    /// debug line for what does not apply.
    pub(crate) fn log_remarks(&self, file: &Path) {
        let file = file.display();
        for Remark { key, verdict } in &self.remarks {
            match verdict {
                Verdict::Unknown => {
                    tracing::warn!(%file, "{key}: unknown key, ignored");
                }
                Verdict::NotHonoured(why) => {
                    tracing::warn!(%file, "{key}: not honoured: {why}");
                }
                Verdict::NotApplicable(why) => {
                    tracing::debug!(%file, "{key}: ignored as not applicable: {why}");
                }
            }
        }
    }
}

/// How the gateway treats a key, by its pattern: its dotted path with the
/// served trigger's name as `*` and list indices as `[]`.
enum Key {
    /// A mapping whose keys are judged one by one.
    Section,
    /// A list of sections.
    List,
    /// Read by the gateway or by [`NuclioSpec`].
    Taken,
    /// Not taken, for this reason.
    Remark(Verdict),
}

/// What the gateway does with the key at `pattern`, whose value is `value`.
fn judge(pattern: &str, value: &Value) -> Key {
    use Verdict::{NotApplicable, NotHonoured};
    const BUILD: &str = "the image build; the gateway runs the handler from --handler-path \
                         with --python";
    const PLATFORM: &str = "deploying, scaling or scheduling on a platform";
    const SECRETS: &str = "the platform resolves secrets and config maps; the variables are \
                           not set";
    match pattern {
        "metadata"
        | "spec"
        | "spec.triggers"
        | "spec.triggers.*"
        | "spec.triggers.*.async"
        | "spec.triggers.*.attributes"
        | "spec.env[]" => Key::Section,
        "spec.env" => Key::List,

        // What Nuclio's processor hands a Python function.
        "metadata.name"
        | "metadata.namespace"
        | "spec.handler"
        | "spec.description"
        | "spec.env[].name"
        | "spec.env[].value"
        | "spec.eventTimeout"
        | "spec.triggers.*.numWorkers"
        | "spec.triggers.*.mode"
        | "spec.triggers.*.async.maxConnectionsNumber"
        | "spec.triggers.*.async.connectionAvailabilityTimeout"
        | "spec.triggers.*.async.establishConnectionTimeout" => Key::Taken,
        "spec.triggers.*.kind" if value.as_str() == Some("http") => Key::Taken,
        // Static is what the pool does: every connection opened up front.
        "spec.triggers.*.async.connectionCreationMode" if value.as_str() == Some("static") => {
            Key::Taken
        }

        // Settings that change how the function runs, which the gateway
        // cannot follow: warned, so that nobody is surprised.
        "spec.triggers.*.kind" => Key::Remark(NotHonoured(
            "the gateway serves the trigger over HTTP whatever its kind",
        )),
        "spec.triggers.*.async.connectionCreationMode"
        | "spec.triggers.*.async.minConnectionsNumber" => Key::Remark(NotHonoured(
            "the pool opens maxConnectionsNumber connections to every worker up front \
                 (Nuclio's static mode)",
        )),
        "spec.triggers.*.maxWorkers" => Key::Remark(NotHonoured(
            "deprecated by Nuclio; numWorkers sets the workers",
        )),
        "spec.triggers.*.workerAvailabilityTimeoutMilliseconds" => Key::Remark(NotHonoured(
            "async.connectionAvailabilityTimeout bounds the wait for a connection",
        )),
        "spec.triggers.*.batch" => Key::Remark(NotHonoured("events are sent one at a time")),
        "spec.env[].valueFrom" | "spec.envFrom" => Key::Remark(NotHonoured(SECRETS)),
        "spec.volumes" => Key::Remark(NotHonoured(
            "nothing is mounted; the handler sees this machine's files",
        )),
        "spec.streamChunkTimeout" => Key::Remark(NotHonoured(
            "a streamed response is read whole, within spec.eventTimeout",
        )),
        "spec.dataBindings" => Key::Remark(NotHonoured("data bindings are not set up")),
        "spec.runtimeAttributes" => Key::Remark(NotHonoured(
            "the wrapper runs with the launcher's arguments only",
        )),

        // The platform's business: the function runs the same without them.
        "apiVersion" | "kind" | "status" => {
            Key::Remark(NotApplicable("the platform's record of the function"))
        }
        "metadata.labels" | "metadata.annotations" | "spec.triggers.*.annotations" => Key::Remark(
            NotApplicable("the platform's labels and notes on the function"),
        ),
        "spec.runtime" => Key::Remark(NotApplicable("--python sets the interpreter")),
        "spec.build" | "spec.image" | "spec.imagePullSecrets" | "spec.runRegistry" => {
            Key::Remark(NotApplicable(BUILD))
        }
        "spec.triggers.*.attributes.port" => Key::Remark(NotApplicable(
            "the platform's external port; --listen sets the gateway's address",
        )),
        "spec.triggers.*.attributes.ingresses" | "spec.triggers.*.attributes.serviceType" => {
            Key::Remark(NotApplicable("Kubernetes' routing to the function"))
        }
        "spec.triggers.*.url" => Key::Remark(NotApplicable("not used by HTTP triggers")),
        "spec.triggers.*.workerTerminationTimeout" => {
            Key::Remark(NotApplicable("used by Kafka triggers only"))
        }
        "spec.loggerSinks" => Key::Remark(NotApplicable("RUST_LOG filters the gateway's log")),
        "spec.version"
        | "spec.alias"
        | "spec.replicas"
        | "spec.minReplicas"
        | "spec.maxReplicas"
        | "spec.targetCPU"
        | "spec.customScalingMetricSpecs"
        | "spec.scaleToZero"
        | "spec.resources"
        | "spec.platform"
        | "spec.securityContext"
        | "spec.serviceType"
        | "spec.serviceAccount"
        | "spec.affinity"
        | "spec.nodeSelector"
        | "spec.nodeName"
        | "spec.tolerations"
        | "spec.priorityClassName"
        | "spec.preemptionPolicy"
        | "spec.runtimeClassName"
        | "spec.initContainers"
        | "spec.sidecars"
        | "spec.devices"
        | "spec.readinessProbe"
        | "spec.livenessProbe"
        | "spec.readinessTimeoutSeconds"
        | "spec.waitReadinessTimeoutBeforeFailure"
        | "spec.disableDefaultHttpTrigger"
        | "spec.disableSensitiveFieldsMasking"
        | "spec.avatar" => Key::Remark(NotApplicable(PLATFORM)),

        _ => Key::Remark(Verdict::Unknown),
    }
}

/// Judges every key of the mapping `value`, found at `path` (whose pattern is
/// `pattern`), and of the sections under it.
fn walk(
    value: &Value,
    path: &str,
    pattern: &str,
    trigger: &str,
    remarks: &mut Vec<Remark>,
) -> Result<(), Problem> {
    // A section that is not a mapping is the typed reading's to report.
    let Some(mapping) = untagged(value).as_mapping() else {
        return Ok(());
    };
    for (key, child) in mapping {
        let name = key_text(key);
        let child_path = join(path, &name);
        if name == "<<" {
            return Err(Problem::MergeKey { key: child_path });
        }
        let child_pattern = match pattern {
            "spec.triggers" if name == trigger => "spec.triggers.*".to_owned(),
            "spec.triggers" => {
                remarks.push(Remark {
                    key: child_path,
                    verdict: Verdict::NotApplicable("only the trigger --trigger names is served"),
                });
                continue;
            }
            _ => join(pattern, &name),
        };
        match judge(&child_pattern, untagged(child)) {
            Key::Section => walk(child, &child_path, &child_pattern, trigger, remarks)?,
            Key::List => {
                let items = untagged(child).as_sequence().map_or(&[][..], Vec::as_slice);
                for (index, item) in items.iter().enumerate() {
                    let item_path = format!("{child_path}[{index}]");
                    let item_pattern = format!("{child_pattern}[]");
                    walk(item, &item_path, &item_pattern, trigger, remarks)?;
                }
            }
            Key::Taken => {}
            Key::Remark(verdict) => remarks.push(Remark {
                key: child_path,
                verdict,
            }),
        }
    }
    Ok(())
}

/// `document` with trigger `trigger` added, as an empty mapping: the pool's
/// defaults. Left as it is where it is not a mapping, which the typed
/// reading has already ruled out.
fn with_trigger(mut document: Value, trigger: &str) -> Value {
    let triggers = section(&mut document, "spec")
        .and_then(|spec| section(spec, "triggers"))
        .and_then(Value::as_mapping_mut);
    if let Some(triggers) = triggers {
        triggers.insert(trigger.into(), Value::Mapping(Mapping::new()));
    }
    document
}

/// The value under `key` of the mapping `value`, an empty mapping if it is
/// missing or null; a null `value` becomes a mapping first.
fn section<'a>(value: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    if value.is_null() {
        *value = Value::Mapping(Mapping::new());
    }
    let child = value
        .as_mapping_mut()?
        .entry(key.into())
        .or_insert(Value::Null);
    if child.is_null() {
        *child = Value::Mapping(Mapping::new());
    }
    Some(child)
}

/// A value with its YAML tags (`!something`) taken off.
fn untagged(value: &Value) -> &Value {
    match value {
        Value::Tagged(tagged) => untagged(&tagged.value),
        other => other,
    }
}

/// A mapping key as it reads in a dotted path.
fn key_text(key: &Value) -> String {
    match untagged(key) {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Null => "~".to_owned(),
        other => format!("{other:?}"),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_worker_pool::Mode;

    use super::*;

    /// A Python function as Nuclio's examples write one, with the settings
    /// the gateway takes and some it does not.
    const GREETER: &str = r#"
apiVersion: "nuclio.io/v1beta1"
kind: "NuclioFunction"
metadata:
  name: greeter
  namespace: staging
  labels:
    team: web
spec:
  description: >
    Greets whoever the body names, in the language
    the environment asks for.
  runtime: "python:3.11"
  handler: greet:handler
  minReplicas: 1
  maxReplicas: 4
  eventTimeout: 20s
  env:
  - name: GREETING
    value: "Grüß Gott"
  - name: EMPTY
  - name: API_KEY
    valueFrom:
      secretKeyRef:
        name: greeter-secrets
        key: api-key
  triggers:
    web:
      kind: http
      numWorkers: 3
      mode: async
      async:
        maxConnectionsNumber: 40
        connectionAvailabilityTimeout: 250ms
        establishConnectionTimeout: 20s
      attributes:
        port: 32001
    nightly:
      kind: cron
      attributes:
        interval: 24h
  build:
    baseImage: python:3.11-slim
    commands:
    - pip install babel
  resources:
    limits:
      memory: 256M
"#;

    fn remark(key: &str, verdict: Verdict) -> Remark {
        Remark {
            key: key.to_owned(),
            verdict,
        }
    }

    #[test]
    fn a_function_yaml_gives_its_handler_environment_and_trigger_settings() {
        let function = FunctionConfig::parse(GREETER, "web").unwrap();
        let pool = &function.pool;
        assert_eq!((pool.num_workers, pool.max_connections), (3, 40));
        assert_eq!(pool.mode, Mode::Async);
        assert_eq!(pool.event_timeout, Some(Duration::from_secs(20)));
        assert_eq!(pool.acquire_timeout, Duration::from_millis(250));
        assert_eq!(pool.establish_connection_timeout, Duration::from_secs(20));
        assert_eq!(function.handler.as_deref(), Some("greet:handler"));
        assert_eq!(function.namespace.as_deref(), Some("staging"));
        let env: Vec<(&str, &str)> = function
            .env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("NUCLIO_FUNCTION_NAME", "greeter"),
                (
                    "NUCLIO_FUNCTION_DESCRIPTION",
                    "Greets whoever the body names, in the language the environment asks for.\n"
                ),
                ("GREETING", "Grüß Gott"),
                ("EMPTY", ""),
            ]
        );
    }

    #[test]
    fn keys_not_taken_are_remarked_by_path_loudly_only_where_the_function_runs_otherwise() {
        let function = FunctionConfig::parse(GREETER, "web").unwrap();
        let verdicts: Vec<(&str, &str)> = function
            .remarks
            .iter()
            .map(|Remark { key, verdict }| {
                let loudness = match verdict {
                    Verdict::Unknown | Verdict::NotHonoured(_) => "warn",
                    Verdict::NotApplicable(_) => "debug",
                };
                (key.as_str(), loudness)
            })
            .collect();
        assert_eq!(
            verdicts,
            [
                ("apiVersion", "debug"),
                ("kind", "debug"),
                ("metadata.labels", "debug"),
                ("spec.runtime", "debug"),
                ("spec.minReplicas", "debug"),
                ("spec.maxReplicas", "debug"),
                ("spec.env[2].valueFrom", "warn"),
                ("spec.triggers.web.attributes.port", "debug"),
                ("spec.triggers.nightly", "debug"),
                ("spec.build", "debug"),
                ("spec.resources", "debug"),
            ]
        );
    }

    #[test]
    fn an_unknown_key_is_warned_with_its_dotted_path() {
        let text = r#"
metadata:
  name: f
  owner: someone
spec:
  handler: main:handler
  bulid:
    image: f:latest
  triggers:
    http:
      numWorker: 4
      async:
        maxConnections: 10
  env:
  - name: A
    value: "1"
    vaule: "2"
specs: {}
7: seven
"#;
        let function = FunctionConfig::parse(text, "http").unwrap();
        assert_eq!(
            function.remarks,
            [
                remark("metadata.owner", Verdict::Unknown),
                remark("spec.bulid", Verdict::Unknown),
                remark("spec.triggers.http.numWorker", Verdict::Unknown),
                remark("spec.triggers.http.async.maxConnections", Verdict::Unknown),
                remark("spec.env[0].vaule", Verdict::Unknown),
                remark("specs", Verdict::Unknown),
                remark("7", Verdict::Unknown),
            ]
        );
        // Unknown, so not taken: the pool keeps its defaults.
        assert_eq!(function.pool.num_workers, 1);
    }

    #[test]
    fn settings_that_cannot_be_honoured_are_warned_with_the_reason() {
        let text = r#"
spec:
  envFrom:
  - configMapRef: {name: settings}
  volumes:
  - volume: {hostPath: {path: /data}}
  triggers:
    queue:
      kind: kafka-cluster
      maxWorkers: 8
      batch: {mode: enable}
      async:
        connectionCreationMode: dynamic
        minConnectionsNumber: 10
"#;
        let function = FunctionConfig::parse(text, "queue").unwrap();
        let keys: Vec<&str> = function
            .remarks
            .iter()
            .map(|remark| {
                assert!(
                    matches!(remark.verdict, Verdict::NotHonoured(why) if !why.is_empty()),
                    "{remark:?}"
                );
                remark.key.as_str()
            })
            .collect();
        assert_eq!(
            keys,
            [
                "spec.envFrom",
                "spec.volumes",
                "spec.triggers.queue.kind",
                "spec.triggers.queue.maxWorkers",
                "spec.triggers.queue.batch",
                "spec.triggers.queue.async.connectionCreationMode",
                "spec.triggers.queue.async.minConnectionsNumber",
            ]
        );
        // What the pool does anyway is not remarked on.
        let text =
            "spec: {triggers: {http: {kind: http, async: {connectionCreationMode: static}}}}";
        assert_eq!(FunctionConfig::parse(text, "http").unwrap().remarks, []);
    }

    #[test]
    fn json_reads_as_it_did_before_yaml() {
        let text = r#"{
            "metadata": {"name": "f"},
            "spec": {
                "handler": "main:handler",
                "eventTimeout": "1m 30s",
                "env": [{"name": "A", "value": "1"}],
                "triggers": {
                    "web": {"kind": "http", "numWorkers": 2, "mode": "sync"}
                }
            }
        }"#;
        let function = FunctionConfig::parse(text, "web").unwrap();
        assert_eq!(function.pool.event_timeout, Some(Duration::from_secs(90)));
        assert_eq!(
            (function.pool.num_workers, function.pool.mode),
            (2, Mode::Sync)
        );
        assert_eq!(function.pool.max_connections, 1);
        assert_eq!(function.handler.as_deref(), Some("main:handler"));
        assert!(function.env.contains(&("A".to_owned(), "1".to_owned())));
        assert_eq!(function.remarks, []);
    }

    #[test]
    fn a_function_without_triggers_gets_a_default_http_trigger_with_the_pools_defaults() {
        let text = "spec:\n  runtime: python\n  handler: hello:handler\n  eventTimeout: 5s\n";
        let function = FunctionConfig::parse(text, "http").unwrap();
        let defaults = PoolConfig::default();
        assert_eq!(function.pool.num_workers, defaults.num_workers);
        assert_eq!(function.pool.max_connections, defaults.max_connections);
        assert_eq!(function.pool.event_timeout, Some(Duration::from_secs(5)));
        assert_eq!(function.handler.as_deref(), Some("hello:handler"));
    }

    #[test]
    fn empty_sections_and_an_empty_file_set_nothing() {
        for text in ["", "metadata:\nspec:\n", "spec:\n  env:\n  triggers:\n"] {
            let function = FunctionConfig::parse(text, "http").unwrap();
            assert_eq!(function.pool, PoolConfig::default(), "{text:?}");
            assert_eq!((function.handler, function.env), (None, vec![]), "{text:?}");
            assert_eq!(function.remarks, [], "{text:?}");
        }
    }

    #[test]
    fn an_absent_trigger_is_an_error_naming_those_there_are() {
        let error = FunctionConfig::parse(GREETER, "http").unwrap_err();
        assert!(
            matches!(&error, Problem::Pool(SpecError::NoSuchTrigger { available, .. })
                if available == "nightly, web"),
            "{error:?}"
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_an_error_naming_its_key_and_line() {
        let text = "spec:\n  triggers:\n    http:\n      numWorkers: four\n";
        let message = FunctionConfig::parse(text, "http").unwrap_err().to_string();
        assert!(
            message.contains("spec.triggers.http.numWorkers"),
            "{message}"
        );
        assert!(message.contains("line 4"), "{message}");
    }

    #[test]
    fn an_unquoted_env_value_is_taken_as_written() {
        let text = "spec:\n  env:\n  - {name: PORT, value: 8080}\n  - {name: RATIO, value: 1.50}\n  - {name: ON, value: yes}\n";
        let env = FunctionConfig::parse(text, "http").unwrap().env;
        let expected = [("PORT", "8080"), ("RATIO", "1.50"), ("ON", "yes")];
        assert_eq!(
            env,
            expected.map(|(name, value)| (name.to_owned(), value.to_owned()))
        );
        let text = "spec:\n  env:\n  - name: LIST\n    value: [1, 2]\n";
        let message = FunctionConfig::parse(text, "http").unwrap_err().to_string();
        assert!(message.contains("spec.env[0].value"), "{message}");
        assert!(message.contains("line 4"), "{message}");
    }

    #[test]
    fn a_merge_key_is_refused_rather_than_half_read() {
        let text = r#"
x-defaults: &defaults
  numWorkers: 4
spec:
  triggers:
    http:
      <<: *defaults
      kind: http
"#;
        let error = FunctionConfig::parse(text, "http").unwrap_err();
        assert!(
            matches!(&error, Problem::MergeKey { key } if key == "spec.triggers.http.<<"),
            "{error:?}"
        );
    }

    #[test]
    fn malformed_yaml_is_an_error_naming_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("function.yaml");
        std::fs::write(
            &file,
            "spec:\n  handler: main:handler\n  triggers:\n    http: {numWorkers: 2\n  env: []\n",
        )
        .unwrap();
        let message = FunctionConfig::read(&file, "http").unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{}: ", file.display())),
            "{message}"
        );
        assert!(message.contains("line 5"), "{message}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let message = FunctionConfig::read(Path::new("/nonexistent/function.yaml"), "http")
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("cannot read /nonexistent/function.yaml: "),
            "{message}"
        );
    }
}
