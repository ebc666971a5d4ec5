//! The parts both gateways share: the HTTP listener built for load
//! ([`listener`]), the async runtime sized beside the workers ([`runtime`]),
//! gunicorn's operator signals ([`signals`]), the wait for a full pool at
//! start and the answers every gateway gives the same way ([`answers`]), the
//! log set-up ([`logging`]), who a request is from behind a reverse proxy
//! ([`proxy_headers`]), and the access log ([`access_log`]).
//!
//! The programs themselves are the binaries `http_gateway` (the main job:
//! the reference Python worker, handlers or ASGI apps) and `nuclio_gateway`
//! (Nuclio's own async wrapper). This library is their shared code, not an
//! API with stability promises: a host that embeds the pool uses the
//! `async-worker-pool` crate.

pub mod access_log;
pub mod answers;
pub mod listener;
pub mod logging;
pub mod proxy_headers;
pub mod runtime;
pub mod signals;
