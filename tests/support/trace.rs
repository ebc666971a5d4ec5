//! What `tracing` saw on the test's thread while a [`Capture`] lived: every
//! event, and every field recorded on a span.

use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::{DefaultGuard, NoSubscriber};
use tracing::{Dispatch, Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// One event as it was logged.
#[derive(Debug, Clone)]
pub struct SeenEvent {
    pub level: Level,
    pub target: String,
    pub message: String,
    /// The other fields, as `name=value`, values as `Debug` shows them
    /// (strings quoted), as tracing-subscriber's `fmt` prints them.
    pub fields: Vec<String>,
}

impl SeenEvent {
    /// The event on one line, as `fmt` prints it without time or spans:
    /// `" INFO target: message name=value"`.
    pub fn line(&self) -> String {
        let mut line = format!("{:>5} {}: {}", self.level, self.target, self.message);
        for field in &self.fields {
            line.push(' ');
            line.push_str(field);
        }
        line
    }
}

#[derive(Default)]
struct Seen {
    events: Vec<SeenEvent>,
    span_fields: Vec<String>,
}

/// Everything `tracing` reports on this thread goes to the capture until it is
/// dropped. Events and spans of other threads are not seen: run the code under
/// test on a current-thread runtime.
pub struct Capture {
    seen: Arc<Mutex<Seen>>,
    // Dropped in this order: the previous default comes back before the
    // second dispatcher goes.
    _default: DefaultGuard,
    _second: Dispatch,
}

impl Capture {
    /// Starts capturing what `tracing` reports on this thread.
    pub fn start() -> Self {
        // tracing-core caches each callsite's interest for the whole process, and
        // while a single dispatcher is registered it asks the default of whichever
        // thread first reaches the callsite, not that dispatcher
        // (tokio-rs/tracing#3611): another test's thread, with no subscriber,
        // reaching a callsite first would cache "never" for this capture too. With
        // a second, inert dispatcher alive as long as the capture, tracing-core
        // asks every registered dispatcher, and each thread's default decides.
        let second = Dispatch::new(NoSubscriber::new());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let layer = Recorder(seen.clone());
        let default = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
        Self {
            seen,
            _default: default,
            _second: second,
        }
    }

    /// The events so far, oldest first.
    pub fn events(&self) -> Vec<SeenEvent> {
        self.seen.lock().unwrap().events.clone()
    }

    /// The events so far, each as [`SeenEvent::line`].
    pub fn lines(&self) -> Vec<String> {
        self.events().iter().map(SeenEvent::line).collect()
    }

    /// Every field given a value on any span so far, at its creation or with
    /// `Span::record`, as `name=value` (strings unquoted).
    pub fn span_fields(&self) -> Vec<String> {
        self.seen.lock().unwrap().span_fields.clone()
    }
}

struct Recorder(Arc<Mutex<Seen>>);

impl<S: Subscriber> Layer<S> for Recorder {
    fn on_new_span(&self, attributes: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        let mut fields = SpanFields(Vec::new());
        attributes.record(&mut fields);
        self.0.lock().unwrap().span_fields.extend(fields.0);
    }

    fn on_record(&self, _: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut fields = SpanFields(Vec::new());
        values.record(&mut fields);
        self.0.lock().unwrap().span_fields.extend(fields.0);
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let metadata = event.metadata();
        self.0.lock().unwrap().events.push(SeenEvent {
            level: *metadata.level(),
            target: metadata.target().to_owned(),
            message: fields.message,
            fields: fields.others,
        });
    }
}

struct SpanFields(Vec<String>);

impl Visit for SpanFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.push(format!("{}={value:?}", field.name()));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push(format!("{}={value}", field.name()));
    }
}

#[derive(Default)]
struct EventFields {
    message: String,
    others: Vec<String>,
}

impl Visit for EventFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.others.push(format!("{}={value:?}", field.name()));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.record_debug(field, &value);
        }
    }
}
