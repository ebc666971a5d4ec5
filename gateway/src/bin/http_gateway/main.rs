//! The main job: an HTTP gateway in front of a pool of Python asyncio workers.
//!
//! ```sh
//! cargo run --release -p async-worker-pool-gateway
//! curl http://127.0.0.1:8080/some/path
//! ```
//!
//! Every request becomes one event on a free connection to a worker; the worker's
//! handler (the worker package's `hello`, unless `--handler` says otherwise)
//! answers it. With `--asgi module:app` the workers run an ASGI app (FastAPI,
//! Starlette, ...) instead, and its streamed responses reach the client as the
//! app sends them (`streaming`); with `--wsgi module:app` a WSGI app (Flask,
//! Django, ...) in `--wsgi-threads` threads per worker, one slot per thread. `/metrics` serves the pool's numbers in Prometheus format and `/healthz`
//! says whether any worker serves. Ctrl-C or SIGTERM shut it down
//! gracefully, leaving no worker process behind; workers also die with the
//! gateway if it is killed outright (their lifeline, see `process`). As
//! gunicorn does, SIGHUP reloads every worker (new before old, no request
//! fails), SIGTTIN adds a worker and SIGTTOU removes one. `--help` lists every
//! setting.

mod args;
mod responses;
mod streaming;
mod websocket;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::request::Parts;
use axum::http::{Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use clap::Parser;

use async_worker_pool::net::SocketTransport;
use async_worker_pool::{EndpointKind, Pool, ProcessLauncher, RestartPolicy, prometheus};
use async_worker_pool_gateway::access_log::{self, ServedBy};
use async_worker_pool_gateway::proxy_headers::{Remote, TrustedProxies};
use async_worker_pool_gateway::{answers, listener, logging, runtime, signals};

use args::Args;

type GatewayPool = Pool<SocketTransport>;

/// The allocator of the whole gateway process: see the `mimalloc` entry in
/// Cargo.toml for why not the system's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    let always_logged: &[&str] = if args.access_log {
        &[access_log::TARGET]
    } else {
        &[]
    };
    logging::init_with(always_logged);
    match runtime::block_on(args.runtime.threads, args.workers, run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("http_gateway: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let (listener, backlog, server) = listen(&args)?;
    // One descriptor per connection, plus room for HTTP clients and the rest.
    let connections = args.connections_per_worker();
    let reserved = listener::reserved_fds(args.workers * connections, connections);
    let wanted = listener::wanted_fds(&args.listener, reserved);
    match async_worker_pool::process::raise_fd_limit(wanted) {
        Ok(limit) if limit < wanted => tracing::warn!(
            limit,
            wanted,
            "the open-file limit is below what the connections need; raise it with ulimit -n"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read or raise the open-file limit"),
    }
    let max_clients = listener::client_cap(&args.listener, reserved);
    tracing::info!(backlog, max_clients, "HTTP listener");
    let pool = start_pool(&args).await?;
    // Listening for signals from before the address is printed on.
    let signalled = signals::stop_signal();
    let _operator = signals::serve_operator_signals(pool.clone(), args.workers)?;
    let serves = match (&args.asgi, &args.wsgi) {
        (Some(app), _) => format!("ASGI app {app}"),
        (_, Some(app)) => format!("WSGI app {app}, a thread per connection"),
        _ => format!("handler {}", args.handler),
    };
    println!(
        "http_gateway: listening on {} ({} {} x {} connections, {serves})",
        listening_on(&args, server),
        args.workers,
        answers::plural(args.workers, "worker", "workers"),
        connections
    );

    let proxies = args
        .proxy_headers
        .then(|| Arc::new(args.forwarded_allow_ips.clone()));
    let stop = tokio_util::sync::CancellationToken::new();
    let websockets = websocket::Settings::new(
        &args.websocket,
        args.max_frame_bytes,
        args.shutdown_grace,
        stop.clone(),
    );
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(forward)
        .layer(DefaultBodyLimit::max(args.max_frame_bytes))
        .layer(Extension(FrontEnd {
            asgi: args.asgi.is_some(),
            framework: args.asgi.is_some() || args.wsgi.is_some(),
            server,
            proxies: proxies.clone(),
        }))
        .layer(Extension(Arc::new(websockets)));
    if args.access_log {
        // Outermost, so that its line times the whole request.
        let log = Arc::new(access_log::AccessLog { proxies });
        app = app.layer(axum::middleware::from_fn_with_state(
            log,
            access_log::record,
        ));
    }
    let app = app.with_state(Arc::new(pool.clone()));

    listener::serve_until_stopped(
        listener,
        app,
        &args.listener,
        max_clients,
        signalled,
        stop,
        args.shutdown_grace,
    )
    .await;
    pool.shutdown(args.shutdown_grace).await;
    println!("http_gateway: stopped");
    Ok(())
}

/// Binds what the gateway listens on: `--uds`, else `--listen`. Returns the
/// listener, its backlog, and its TCP address (none for a Unix socket).
fn listen(args: &Args) -> Result<(listener::Listener, u32, Option<SocketAddr>), String> {
    if let Some(path) = &args.uds {
        let (socket, backlog) = listener::bind_unix(path, args.listener.backlog)
            .map_err(|error| format!("cannot listen on unix:{}: {error}", path.display()))?;
        return Ok((socket.into(), backlog, None));
    }
    let (listener, backlog) =
        listener::bind(args.listen, args.listener.backlog).map_err(|error| {
            format!(
                "cannot listen on {}: {error}; choose another address with --listen or GATEWAY_LISTEN",
                args.listen
            )
        })?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    Ok((listener.into(), backlog, Some(address)))
}

/// Where the start line says the gateway listens: `http://ADDRESS` or
/// `unix:PATH`.
fn listening_on(args: &Args, server: Option<SocketAddr>) -> String {
    match (server, &args.uds) {
        (Some(address), _) => format!("http://{address}"),
        (None, Some(path)) => format!("unix:{}", path.display()),
        (None, None) => "nowhere".to_owned(),
    }
}

/// Builds the pool and waits until every worker serves all its connections, so
/// that a handler that does not import or a missing interpreter is reported at
/// start, not on the first request.
async fn start_pool(args: &Args) -> Result<GatewayPool, String> {
    let connections = args.connections_per_worker();
    let mut launcher = match (&args.asgi, &args.wsgi) {
        (Some(app), _) => ProcessLauncher::asgi_app(app).lifespan(args.lifespan),
        // Its connections follow its threads.
        (_, Some(app)) => ProcessLauncher::wsgi_app(app).wsgi_threads(args.wsgi_threads),
        _ => ProcessLauncher::python_worker(&args.handler),
    };
    if args.wsgi.is_none() {
        launcher = launcher.connections(connections);
    }
    if let Some(root_path) = &args.root_path {
        // One argument, so that no path is taken for a flag of the worker's.
        launcher = launcher.arg(format!("--root-path={root_path}"));
    }
    if args.factory {
        launcher = launcher.arg("--factory");
    }
    if let Some(dir) = &args.socket_dir {
        launcher = launcher.socket_dir_parent(dir);
    }
    let launcher = launcher
        .python(&args.python)
        .handler_path(&args.handler_path)
        .endpoint_kind(if args.tcp {
            EndpointKind::Tcp
        } else {
            EndpointKind::Unix
        })
        .arg("--max-frame-bytes")
        .arg(args.max_frame_bytes.to_string())
        .build()
        .map_err(|error| format!("cannot prepare the workers: {}", error.chain()))?;
    let mut builder = Pool::builder(
        SocketTransport::new()
            .max_frame_bytes(args.max_frame_bytes)
            .multiplex(args.multiplex),
        launcher,
    )
    .num_workers(args.workers)
    .max_connections(connections)
    // A WSGI view past the event timeout holds its thread until it returns.
    .recycle_after_event_timeout(args.wsgi.is_some())
    .connection_availability_timeout(args.connection_availability_timeout)
    .establish_connection_timeout(args.establish_connection_timeout)
    .probe_timeout(args.probe_timeout.0)
    .probe_interval(args.probe_interval.0)
    .stall_after(args.stall_after.0)
    .restart_policy(restart_policy(args));
    if let Some(timeout) = args.event_timeout {
        builder = builder.event_timeout(timeout);
    }
    if let Some(max_waiters) = args.max_waiters {
        builder = builder.max_waiters(max_waiters);
    }
    builder = builder
        .max_events_per_worker(args.max_events_per_worker)
        .max_worker_rss(args.max_worker_rss)
        .min_worker_uptime(args.min_worker_uptime);
    let pool = builder.build().map_err(|error| error.to_string())?;

    // One launch plus one full round of connects, each bounded by the same timeout.
    answers::wait_until_full(&pool, 2 * args.establish_connection_timeout).await?;
    Ok(pool)
}

/// The pool's restart policy: a reload's or recycle's drain gives requests,
/// and WebSockets, the same grace as a shutdown's.
fn restart_policy(args: &Args) -> RestartPolicy {
    let mut policy = RestartPolicy::default();
    policy.terminate_grace = args.shutdown_grace;
    policy
}

/// What the request handler needs to know about the front end itself.
#[derive(Debug, Clone)]
struct FrontEnd {
    /// The workers run an ASGI app, which may take WebSockets.
    asgi: bool,
    /// The workers run an ASGI or a WSGI app: events carry what its scope
    /// or environ needs, and ask for streamed responses.
    framework: bool,
    /// The TCP address the gateway listens on (the scope's `server`); none
    /// on a Unix socket, as uvicorn's scope has none there.
    server: Option<SocketAddr>,
    /// With `--proxy-headers`: whose forwarding headers to believe.
    proxies: Option<Arc<TrustedProxies>>,
}

impl FrontEnd {
    /// Who the request is from: its connection's peer, or the client a
    /// trusted proxy names.
    fn remote(&self, parts: &Parts) -> Remote {
        // There when the server was made with connect info.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| *peer);
        match &self.proxies {
            Some(proxies) => proxies.remote(peer, &parts.headers),
            None => Remote::direct(peer),
        }
    }
}

/// Every other request: one event to a worker.
async fn forward(
    State(pool): State<Arc<GatewayPool>>,
    Extension(front): Extension<FrontEnd>,
    Extension(websockets): Extension<Arc<websocket::Settings>>,
    parts: Parts,
    body: Bytes,
) -> Response {
    if front.asgi && websocket::is_upgrade(&parts.headers) {
        let remote = front.remote(&parts);
        let origin = websocket::Origin {
            client: remote.client,
            server: front.server,
            scheme: if remote.scheme == "https" {
                "wss"
            } else {
                "ws"
            },
            http_version: asgi_http_version(parts.version),
        };
        return websocket::upgrade(pool, websockets, origin, parts).await;
    }
    let event =
        async_worker_pool::http::event_from_parts(&parts.method, &parts.uri, &parts.headers, body);
    // There while the access log is on.
    let served_by = parts.extensions.get::<ServedBy>().cloned();
    if front.framework {
        let remote = front.remote(&parts);
        let mut event = event
            .with_scheme(remote.scheme)
            .with_http_version(asgi_http_version(parts.version));
        if let Some(server) = front.server {
            event = event.with_server(server.ip().to_string(), server.port());
        }
        if let Some((host, port)) = remote.client {
            event = event.with_client(host, port);
        }
        return streaming::forward(pool, event, served_by).await;
    }
    match access_log::dispatch(&pool, event, served_by.as_ref()).await {
        Ok(reply) => responses::from_reply(reply),
        Err(error) => answers::from_pool_error(error),
    }
}

/// The HTTP version as an ASGI scope spells it.
fn asgi_http_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

async fn metrics(State(pool): State<Arc<GatewayPool>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus::render(&pool.stats()),
    )
        .into_response()
}

/// 200 while at least one worker serves, else 503.
async fn healthz(State(pool): State<Arc<GatewayPool>>) -> Response {
    answers::health(&pool.stats())
}
