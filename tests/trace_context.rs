//! The event span: it records how long an event waited for a slot and how
//! long it ran. (A `traceparent` reaching the Python handler through the HTTP
//! gateway is tested with the gateway, in gateway/tests/http_gateway.rs.)

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_worker_pool::PoolService;
use support::{Req, harness, settle};
use tokio::time::sleep;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Every field recorded on spans named `event`, one map per span.
#[derive(Clone, Default)]
struct EventSpans(Arc<Mutex<HashMap<u64, HashMap<String, String>>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> Layer<S> for EventSpans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "event" {
            let mut spans = self.0.lock().unwrap();
            attrs.record(&mut Fields(spans.entry(id.into_u64()).or_default()));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(fields) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
}

impl EventSpans {
    fn all(&self) -> Vec<HashMap<String, String>> {
        self.0.lock().unwrap().values().cloned().collect()
    }
}

fn micros(fields: &HashMap<String, String>, name: &str) -> u64 {
    fields
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {fields:?}"))
        .parse()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_event_span_records_the_wait_for_a_slot_apart_from_the_run() {
    let spans = EventSpans::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let h = harness(|b| b.max_connections(1)).await;
    // The only slot is busy for 20 ms; the event then runs for 30 ms.
    let held = h.pool.acquire_owned().await.unwrap();
    let release = tokio::spawn(async move {
        sleep(Duration::from_millis(20)).await;
        drop(held);
    });
    let resp = h
        .pool
        .dispatch(Req::reply(1, Duration::from_millis(30)))
        .await
        .unwrap();
    assert_eq!(resp.id, 1);
    release.await.unwrap();
    // And through the tower service, whose wait starts at poll_ready.
    let held = h.pool.acquire().await.unwrap();
    let mut service = PoolService::new(h.pool.clone());
    let ready = tokio::spawn(async move {
        use tower::{Service, ServiceExt};
        service.ready().await.unwrap();
        service.call(Req::reply(2, Duration::from_millis(40))).await
    });
    settle().await;
    sleep(Duration::from_millis(10)).await;
    drop(held);
    assert_eq!(ready.await.unwrap().unwrap().id, 2);

    let mut events = spans.all();
    events.sort_by_key(|fields| micros(fields, "run_us"));
    assert_eq!(events.len(), 2, "{events:?}");
    for (fields, waited, ran) in [(&events[0], 20_000, 30_000), (&events[1], 10_000, 40_000)] {
        assert_eq!(fields["outcome"], "ok", "{fields:?}");
        assert_eq!(fields["worker"], "0");
        // The paused clock moves only when every task waits, so the figures
        // are the sleeps, give or take the odd auto-advanced millisecond.
        let (w, r) = (micros(fields, "waited_us"), micros(fields, "run_us"));
        assert!(
            (waited..waited + 2_000).contains(&w),
            "waited {w}: {fields:?}"
        );
        assert!((ran..ran + 2_000).contains(&r), "ran {r}: {fields:?}");
    }
}
