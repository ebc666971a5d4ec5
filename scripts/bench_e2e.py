"""The end-to-end bench: the HTTP gateway with the reference worker against
uvicorn (uvloop + httptools) on the same handlers, and the gateway's --asgi
against uvicorn and granian (ASGI interface, uvloop) on the same ASGI apps (a
FastAPI app and a bare one), and the gateway's --wsgi against gunicorn (gthread
with as many threads, and sync) and granian (WSGI interface) on the same Flask
app, run alternately, with wrk as the load. Run it
through ``sh scripts/bench_e2e.sh``, which makes the virtualenv, installs wrk
and builds the gateway first.

For each scenario every server is started, warmed up, and then measured in
turn, ``ROUNDS`` times each (the order rotates from round to round). Reported per side: requests per second,
wrk's p50 and p99 latency, and the server's CPU per request: the utime + stime
of every server-side process (the gateway and its workers; uvicorn and its
workers), from /proc/PID/stat before and after each measured run, divided by
the requests wrk completed. The figures are medians over the rounds; the
ratios are of medians, with the range of the per-round ratios beside them.

Environment: E2E_SECONDS (per run, default 10), E2E_ROUNDS (default 3),
E2E_ONLY (a comma-separated list of scenario names), E2E_OUT (where the
Markdown table is written, default target/bench_e2e.md), E2E_SIDES (the
servers compared, default ``gateway,uvicorn``; also ``gateway-mux``, the
gateway in its multiplexed mode with E2E_MULTIPLEX physical connections per
worker (default 1), ``gateway-conn``, one connection per slot, ``granian-asgi``
and ``granian-rsgi``, one granian process each on the same interpreter, and
``hyper-floor``, gateway/benches/hyper_floor.rs: bare hyper answering a
constant on one runtime thread, the floor under the gateway process's own
CPU per request; E2E_HYPER_FLOOR names a built one). With more than the two default sides
a second table lists every side, with ratios to uvicorn's figures.
E2E_WSGI_THREADS (default 8, the gateway's default) is the threads per worker
of every threaded WSGI side: the gateway's --wsgi-threads, gunicorn's
--threads, granian's --blocking-threads.

The mixed scenarios (flask-mixed, asgi-mixed, fastapi-mixed) are open loop:
instead of wrk, the bench target benches/mixed_load.rs (built here once, or
E2E_MIXED_LOAD, the path of a built one) sends light requests at a fixed rate
over a fixed pool of keep-alive connections and a request to a view that burns
50 ms of CPU at a fixed interval on a connection of its own, and times each
light request from its scheduled send. Reported per side: the light requests'
p50, p99, p99.9 and max, how many were sent, answered and failed, the heavy
ones answered, and the gateway's p99 and p99.9 over each other side's.
E2E_MIXED_RATE (light requests per second, default 1000),
E2E_MIXED_CONNECTIONS (default 64) and E2E_MIXED_HEAVY_INTERVAL (seconds,
default 0.2) set the load.
"""

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANDLERS = os.path.join(ROOT, "benches", "e2e")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
GATEWAY = os.environ.get("E2E_GATEWAY", os.path.join(TARGET, "release", "http_gateway"))
PYTHON = sys.executable  # the virtualenv's: uvicorn, uvloop, httptools
TICKS = os.sysconf("SC_CLK_TCK")

SECONDS = float(os.environ.get("E2E_SECONDS", "10"))
ROUNDS = int(os.environ.get("E2E_ROUNDS", "3"))
WARMUP = 2

# E2E_SIDES picks the sides of the handler scenarios: gateway-mux, gateway-conn,
# granian-asgi and granian-rsgi beside the two defaults.
HANDLER_SIDES = tuple(os.environ.get("E2E_SIDES", "gateway,uvicorn").split(","))
ASGI_SIDES = ("gateway-asgi", "uvicorn", "granian")
WSGI_SIDES = ("gateway-wsgi", "gunicorn-gthread", "gunicorn-sync", "granian-wsgi")
WSGI_THREADS = int(os.environ.get("E2E_WSGI_THREADS", "8"))

# name, handler (or module:app for the ASGI sides), concurrent connections,
# workers, request body, sides
SCENARIOS = [
    ("trivial", "trivial", 64, 1, None, HANDLER_SIDES),
    ("echo-1k", "echo", 64, 1, 1024, HANDLER_SIDES),
    ("sleep-1000", "sleep", 1000, 1, None, HANDLER_SIDES),
    ("trivial-2w", "trivial", 64, 2, None, HANDLER_SIDES),
    ("echo-1k-2w", "echo", 64, 2, 1024, HANDLER_SIDES),
    ("sleep-1000-2w", "sleep", 1000, 2, None, HANDLER_SIDES),
    ("fastapi-trivial", "fastapi_bench:trivial", 64, 1, None, ASGI_SIDES),
    ("fastapi-sleep-1000", "fastapi_bench:sleep", 1000, 1, None, ASGI_SIDES),
    ("fastapi-trivial-2w", "fastapi_bench:trivial", 64, 2, None, ASGI_SIDES),
    ("fastapi-sleep-1000-2w", "fastapi_bench:sleep", 1000, 2, None, ASGI_SIDES),
    ("asgi-trivial", "asgi:trivial", 64, 1, None, ASGI_SIDES),
    ("asgi-sleep-1000", "asgi:sleep", 1000, 1, None, ASGI_SIDES),
    ("asgi-trivial-2w", "asgi:trivial", 64, 2, None, ASGI_SIDES),
    ("asgi-sleep-1000-2w", "asgi:sleep", 1000, 2, None, ASGI_SIDES),
    ("flask-hello", "flask_bench:app", 64, 1, None, WSGI_SIDES),
    ("flask-hello-2w", "flask_bench:app", 64, 2, None, WSGI_SIDES),
]

# The open-loop scenarios, light and heavy requests at once (benches/mixed_load.rs):
# name, module:app, workers, sides (the gateway first). gunicorn's sync worker
# is left out: one request at a time per process, it is no server for a proxy
# that keeps 64 connections open.
MIXED_WSGI_SIDES = ("gateway-wsgi", "gunicorn-gthread", "granian-wsgi")
MIXED_SCENARIOS = [
    ("flask-mixed", "flask_bench:app", 2, MIXED_WSGI_SIDES),
    ("asgi-mixed", "asgi:mixed", 2, ASGI_SIDES),
    ("fastapi-mixed", "fastapi_bench:mixed", 2, ASGI_SIDES),
]
MIXED_RATE = float(os.environ.get("E2E_MIXED_RATE", "1000"))
MIXED_CONNECTIONS = int(os.environ.get("E2E_MIXED_CONNECTIONS", "64"))
MIXED_HEAVY_INTERVAL = float(os.environ.get("E2E_MIXED_HEAVY_INTERVAL", "0.2"))
# The client's own bound on one request's answer (and on the unsent ones'
# wait after the schedule ends).
MIXED_TIMEOUT = 5.0


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port, proc, limit=60.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited with status %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not listen on port %d" % port)


def process_tree(root):
    """The pid of `root` and of all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def cpu_seconds(pids):
    """utime + stime of each pid, by pid (a pid that is gone is left out)."""
    out = {}
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command: state is fields[0], utime fields[11], stime fields[12].
        out[pid] = (int(fields[11]) + int(fields[12])) / TICKS
    return out


class Server:
    def __init__(self, side, handler, workers):
        self.side = side
        self.port = free_port()
        self.slots = 1000
        if side.startswith("gateway"):
            if side == "gateway-asgi":
                serve = ["--asgi", handler, "--lifespan", "off", "--max-connections", "1000"]
            elif side == "gateway-wsgi":
                # Its connections are its threads.
                serve = ["--wsgi", handler, "--wsgi-threads", str(WSGI_THREADS)]
                self.slots = WSGI_THREADS
            else:
                serve = ["--handler", "handlers:%s" % handler, "--max-connections", "1000"]
            cmd = [GATEWAY, "--listen", "127.0.0.1:%d" % self.port, *serve,
                   "--handler-path", HANDLERS,
                   "--python", PYTHON, "--workers", str(workers)]
            if side == "gateway-mux":
                cmd += ["--multiplex", os.environ.get("E2E_MULTIPLEX", "1")]
            elif side == "gateway-conn":
                cmd += ["--multiplex", "0"]
            env = {**os.environ, "RUST_LOG": "warn"}
        elif side == "hyper-floor":
            # The floor: bare hyper answering a constant, one runtime thread.
            cmd = [bench_binary("hyper_floor", "E2E_HYPER_FLOOR", "async-worker-pool-gateway"),
                   str(self.port), "1"]
            env = dict(os.environ)
        elif side.startswith("granian"):
            interface = side.split("-")[1] if "-" in side else "asgi"
            app = handler if ":" in handler else "%s:%s" % (interface, handler)
            cmd = [PYTHON, "-m", "granian", "--interface", interface,
                   "--working-dir", HANDLERS, "--host", "127.0.0.1", "--port", str(self.port),
                   "--loop", "uvloop", "--workers", str(workers), "--backlog", "2048",
                   "--no-ws", "--log-level", "warning", "--no-access-log", app]
            if interface == "wsgi":
                cmd[-1:-1] = ["--blocking-threads", str(WSGI_THREADS)]
            env = dict(os.environ)
        elif side.startswith("gunicorn"):
            worker_class = side.split("-")[1]
            cmd = [PYTHON, "-m", "gunicorn", "--chdir", HANDLERS,
                   "--bind", "127.0.0.1:%d" % self.port, "--workers", str(workers),
                   "--worker-class", worker_class, "--backlog", "2048",
                   "--log-level", "warning", handler]
            if worker_class == "gthread":
                cmd[-1:-1] = ["--threads", str(WSGI_THREADS)]
            env = dict(os.environ)
        else:
            app = handler if ":" in handler else "asgi:%s" % handler
            cmd = [PYTHON, "-m", "uvicorn", app, "--app-dir", HANDLERS,
                   "--host", "127.0.0.1", "--port", str(self.port),
                   "--loop", "uvloop", "--http", "httptools", "--lifespan", "off",
                   "--no-access-log", "--log-level", "warning", "--backlog", "2048",
                   "--workers", str(workers)]
            env = dict(os.environ)
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_port(self.port, self.proc)
        if side.startswith("gateway"):
            # Listening comes before the pool is full; wait for every connection.
            self._wait_healthy(workers)
        else:
            time.sleep(1.0 if workers > 1 else 0.3)  # uvicorn's workers start after the bind

    def _wait_healthy(self, workers, limit=60.0):
        deadline = time.monotonic() + limit
        want = "%d of %d connections idle" % (self.slots * workers, self.slots * workers)
        while time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", self.port)) as sock:
                sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                text = b""
                while chunk := sock.recv(4096):
                    text += chunk
            if want.encode() in text:
                return
            time.sleep(0.2)
        raise RuntimeError("gateway did not open its connections")

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def to_ms(text):
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * UNITS[unit]


def run_wrk(port, connections, seconds, script):
    cmd = ["wrk", "-t1", "-c%d" % connections, "-d%ds" % seconds, "--latency",
           "--timeout", "5s"]
    if script:
        cmd += ["-s", script]
    cmd.append("http://127.0.0.1:%d/bench" % port)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors: (.*)", out)
    # wrk pads some figures with a trailing space ("1.64s ").
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    if "50" not in latency or "99" not in latency:
        # No latency distribution: no request completed. Say so, and go on.
        print("  wrk gave no latency distribution:\n" + out, file=sys.stderr, flush=True)
        latency = {"50": "0ms", "99": "0ms"}
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": to_ms(latency["50"]),
        "p99": to_ms(latency["99"]),
        "errors": errors,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def measure(server, connections, seconds, script):
    pids = process_tree(server.proc.pid)
    before = cpu_seconds(pids)
    run = run_wrk(server.port, connections, seconds, script)
    after = cpu_seconds(pids)
    used = sum(after[pid] - before[pid] for pid in after if pid in before)
    root = server.proc.pid
    run["cpu_us"] = used / max(run["requests"], 1) * 1e6
    # The first process alone: the gateway without its workers, uvicorn's
    # supervisor (or its only process).
    run["root_cpu_us"] = (after.get(root, 0) - before.get(root, 0)) / max(run["requests"], 1) * 1e6
    run["processes"] = len(after)
    return run


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def scenario(name, handler, connections, workers, body, sides, script_dir):
    script = None
    if body:
        script = os.path.join(script_dir, "post-%d.lua" % body)
        with open(script, "w") as f:
            f.write('wrk.method = "POST"\nwrk.body = string.rep("x", %d)\n'
                    'wrk.headers["Content-Type"] = "application/octet-stream"\n' % body)

    def describe(run):
        return ("%.0f req/s, p50 %.2f ms, p99 %.2f ms, %.1f us CPU/req "
                "(first process %.1f us), %d non-2xx %s"
                % (run["rps"], run["p50"], run["p99"], run["cpu_us"], run["root_cpu_us"],
                   run["errors"], run["socket_errors"]))

    return alternate(name, handler, workers, sides,
                     lambda server: run_wrk(server.port, connections, WARMUP, script),
                     lambda server: measure(server, connections, SECONDS, script),
                     describe)


def alternate(name, handler, workers, sides, warm_up, measure_one, describe):
    """Starts every side, warms each up, then measures them in turn ROUNDS
    times; the per-side lists of runs, and the load average before → after."""
    load = loadavg()
    servers = {}
    runs = {side: [] for side in sides}
    try:
        for side in sides:
            servers[side] = Server(side, handler, workers)
        for side, server in servers.items():
            warm_up(server)
        for round_ in range(ROUNDS):
            # Rotate which side goes first, so that none always follows another.
            order = list(sides[round_ % len(sides):]) + list(sides[:round_ % len(sides)])
            for side in order:
                run = measure_one(servers[side])
                runs[side].append(run)
                print("  %s round %d %s: %s" % (name, round_ + 1, side, describe(run)),
                      file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return load + " → " + loadavg(), runs


def bench_binary(name, env, package=None):
    """A bench target's executable: the path in `env`, else the target built
    now (with the bench profile, as cargo bench would)."""
    if os.environ.get(env):
        return os.environ[env]
    cmd = ["cargo", "bench", "--bench", name, "--no-run",
           "--message-format=json-render-diagnostics"]
    if package:
        cmd += ["-p", package]
    out = subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
    for line in out.splitlines():
        message = json.loads(line)
        if (message.get("reason") == "compiler-artifact"
                and message["target"]["name"] == name and message.get("executable")):
            return message["executable"]
    raise RuntimeError("cargo built no %s executable" % name)


def mixed_load_binary():
    """The open-loop client (E2E_MIXED_LOAD names a built one)."""
    return bench_binary("mixed_load", "E2E_MIXED_LOAD")


def run_mixed(client, port, seconds):
    """One open-loop run against the server on `port`: the client's figures,
    flattened (latencies in ms, NaN when nothing was answered)."""
    cmd = [client, "--addr", "127.0.0.1:%d" % port, "--light-path", "/bench",
           "--heavy-path", "/cpu", "--rate", "%g" % MIXED_RATE,
           "--connections", str(MIXED_CONNECTIONS), "--duration", "%gs" % seconds,
           "--heavy-interval", "%gms" % (MIXED_HEAVY_INTERVAL * 1e3),
           "--timeout", "%gs" % MIXED_TIMEOUT]
    # The client bounds itself to duration + 2 x timeout; this is a backstop.
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True,
                         timeout=seconds + 2 * MIXED_TIMEOUT + 30).stdout
    report = json.loads(out.strip().splitlines()[-1])
    light, heavy = report["light"], report["heavy"]

    def ms(value):
        return float("nan") if value is None else value

    return {
        "p50": ms(light["p50_ms"]), "p99": ms(light["p99_ms"]),
        "p999": ms(light["p999_ms"]), "max": ms(light["max_ms"]),
        "sent": light["sent"], "answered": light["answered"], "failed": light["failed"],
        "unsent": light["unsent"],
        "heavy_answered": heavy["answered"], "heavy_scheduled": heavy["scheduled"],
        "heavy_p50": ms(heavy["p50_ms"]), "heavy_max": ms(heavy["max_ms"]),
        "clock_lag_p99": ms(light["clock_lag_p99_ms"]),
    }


def mixed_scenario(name, app, workers, sides, client):
    def describe(run):
        return ("light %d sent, %d answered, %d failed, %d unsent; p50 %.2f, p99 %.2f, "
                "p99.9 %.2f, max %.2f ms; heavy %d/%d answered, p50 %.1f ms; "
                "client clock lag p99 %.2f ms"
                % (run["sent"], run["answered"], run["failed"], run["unsent"], run["p50"],
                   run["p99"], run["p999"], run["max"], run["heavy_answered"],
                   run["heavy_scheduled"], run["heavy_p50"], run["clock_lag_p99"]))

    return alternate(name, app, workers, sides,
                     lambda server: run_mixed(client, server.port, WARMUP),
                     lambda server: run_mixed(client, server.port, SECONDS),
                     describe)


def median(runs, key):
    return statistics.median(run[key] for run in runs)


def ratio_range(gateway, uvicorn, key, invert=False):
    ratios = [(u[key] / g[key]) if invert else (g[key] / u[key]) for g, u in zip(gateway, uvicorn)]
    return "%.2f–%.2f" % (min(ratios), max(ratios))


def sides_table(rows):
    """Every side of every scenario, with ratios to uvicorn's medians."""
    lines = [
        "",
        "| scenario | side | req/s | req/s ÷ uvicorn | p50 / p99 | p99 ÷ uvicorn "
        "| CPU/req | req per CPU-s ÷ uvicorn | first process CPU/req | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, _connections, _workers, _load, runs in rows:
        base = runs.get("uvicorn")
        for side in HANDLER_SIDES:
            r = runs[side]
            rps, p99, cpu = median(r, "rps"), median(r, "p99"), median(r, "cpu_us")
            lines.append("| %s | %s | %.0f | %s | %.2f / %.2f ms | %s | %.1f µs | %s | %.1f µs | %d |" % (
                name, side, rps,
                "%.2fx" % (rps / median(base, "rps")) if base else "–",
                median(r, "p50"), p99,
                "%.2fx" % (p99 / median(base, "p99")) if base else "–",
                cpu,
                "%.2fx" % (median(base, "cpu_us") / cpu) if base else "–",
                median(r, "root_cpu_us"), sum(run["errors"] for run in r)))
    return lines


def asgi_table(rows):
    """The ASGI scenarios: each side's figures, and the gateway's ratios to
    uvicorn and to granian (req/s, requests per CPU-second, p99)."""
    lines = [
        "",
        "ASGI apps: the gateway's --asgi (lifespan off, as the others) against uvicorn "
        "(uvloop + httptools) and granian (--interface asgi --loop uvloop); CPU = every "
        "server process per request; ratios are the gateway's over the other's "
        "(for p99, the gateway's p99 over the other's: below 1 is better)",
        "",
        "| scenario | conns | workers | side | req/s | p50 / p99 | CPU/req | errors "
        "| req/s ratio (range) | req per CPU-s ratio (range) | p99 ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    return framework_table(rows, "gateway-asgi", ASGI_SIDES, lines)


def wsgi_table(rows):
    """The WSGI scenarios: each side's figures, and the gateway's ratios to
    gunicorn (gthread and sync) and granian."""
    lines = [
        "",
        "WSGI app (Flask): the gateway's --wsgi (%d threads per worker) against gunicorn "
        "gthread (as many threads), gunicorn sync, and granian (--interface wsgi, as many "
        "blocking threads); CPU = every server process per request; ratios are the "
        "gateway's over the other's (for p99, below 1 is better)" % WSGI_THREADS,
        "",
        "| scenario | conns | workers | side | req/s | p50 / p99 | CPU/req | errors "
        "| req/s ratio (range) | req per CPU-s ratio (range) | p99 ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    return framework_table(rows, "gateway-wsgi", WSGI_SIDES, lines)


def mixed_table(rows):
    """The open-loop scenarios: each side's light-request latencies, and the
    gateway's p99 and p99.9 over each other side's."""
    lines = [
        "",
        "Mixed load, open loop (benches/mixed_load.rs): GET /bench at %g/s over %d keep-alive "
        "connections, and GET /cpu (50 ms of CPU in pure Python) every %g s on a connection "
        "of its own; latency of the light requests from their scheduled send, so a stall "
        "counts for every request due during it; WSGI sides with %d threads per worker; "
        "%d x %gs per side, alternating; medians, counts summed over the rounds; ratios are "
        "the gateway's over the other's (below 1 is better)"
        % (MIXED_RATE, MIXED_CONNECTIONS, MIXED_HEAVY_INTERVAL, WSGI_THREADS, ROUNDS, SECONDS),
        "",
        "| scenario | workers | side | light sent / answered / failed (unsent) "
        "| p50 / p99 / p99.9 / max | p99 ratio (range) | p99.9 ratio (range) "
        "| heavy answered, p50 / max | client clock lag p99 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, workers, load, runs, sides in rows:
        g = runs[sides[0]]
        for side in sides:
            r = runs[side]
            if side == sides[0]:
                ratios = "| | "
            else:
                ratios = "| %.2fx (%s) | %.2fx (%s) " % (
                    median(g, "p99") / median(r, "p99"), ratio_range(g, r, "p99"),
                    median(g, "p999") / median(r, "p999"), ratio_range(g, r, "p999"))
            lines.append(
                "| %s | %d | %s | %d / %d / %d (%d) | %.2f / %.2f / %.2f / %.2f ms %s"
                "| %d of %d, %.0f / %.0f ms | %.2f ms |" % (
                    name, workers, side, sum(x["sent"] for x in r),
                    sum(x["answered"] for x in r), sum(x["failed"] for x in r),
                    sum(x["unsent"] for x in r), median(r, "p50"), median(r, "p99"),
                    median(r, "p999"), median(r, "max"), ratios,
                    sum(x["heavy_answered"] for x in r), sum(x["heavy_scheduled"] for x in r),
                    median(r, "heavy_p50"), median(r, "heavy_max"),
                    median(r, "clock_lag_p99")))
        lines.append("| %s | | load avg (before → after) | %s | | | | | |" % (name, load))
    return lines


def framework_table(rows, gateway, sides, lines):
    for name, connections, workers, load, runs in rows:
        g = runs[gateway]
        for side in sides:
            r = runs[side]
            if side == gateway:
                ratios = "| | |"
            else:
                ratios = "| %.2fx (%s) | %.2fx (%s) | %.2fx |" % (
                    median(g, "rps") / median(r, "rps"), ratio_range(g, r, "rps"),
                    median(r, "cpu_us") / median(g, "cpu_us"),
                    ratio_range(g, r, "cpu_us", invert=True),
                    median(g, "p99") / median(r, "p99"))
            lines.append("| %s | %d | %d | %s | %.0f | %.2f / %.2f ms | %.1f µs | %d %s" % (
                name, connections, workers, side, median(r, "rps"), median(r, "p50"),
                median(r, "p99"), median(r, "cpu_us"), sum(x["errors"] for x in r), ratios))
        lines.append("| %s | | | load avg (before → after) | %s | | | | | | |" % (name, load))
    return lines


def main():
    only = set(filter(None, os.environ.get("E2E_ONLY", "").split(",")))
    rows, asgi_rows, wsgi_rows, mixed_rows = [], [], [], []
    mixed = [m for m in MIXED_SCENARIOS if not only or m[0] in only]
    # Built first, so that a failed build costs no measured run.
    client = mixed_load_binary() if mixed else None
    with tempfile.TemporaryDirectory() as script_dir:
        for name, handler, connections, workers, body, sides in SCENARIOS:
            if only and name not in only:
                continue
            print("scenario %s (%d connections, %d worker(s))" % (name, connections, workers),
                  file=sys.stderr, flush=True)
            load, runs = scenario(name, handler, connections, workers, body, sides, script_dir)
            row = (name, connections, workers, load, runs)
            if sides == ASGI_SIDES:
                asgi_rows.append(row)
            elif sides == WSGI_SIDES:
                wsgi_rows.append(row)
            else:
                rows.append(row)
    for name, app, workers, sides in mixed:
        print("scenario %s (open loop, %g light req/s over %d connections, %d worker(s))"
              % (name, MIXED_RATE, MIXED_CONNECTIONS, workers), file=sys.stderr, flush=True)
        load, runs = mixed_scenario(name, app, workers, sides, client)
        mixed_rows.append((name, workers, load, runs, sides))
    lines = [
        "wrk -t1, %d x %gs per side and scenario, alternating; medians; "
        "CPU = utime + stime of every server process per request" % (ROUNDS, SECONDS),
        "",
        "| scenario | conns | workers | gateway req/s | uvicorn req/s | req/s ratio (range) "
        "| gateway p50 / p99 | uvicorn p50 / p99 | gateway CPU/req | uvicorn CPU/req "
        "| req per CPU-s ratio (range) | gateway process alone CPU/req | errors g/u "
        "| load avg (before → after) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, connections, workers, load, runs in rows:
        if "gateway" not in runs or "uvicorn" not in runs:
            continue
        g, u = runs["gateway"], runs["uvicorn"]
        lines.append(
            "| %s | %d | %d | %.0f | %.0f | %.2fx (%s) | %.2f / %.2f ms | %.2f / %.2f ms "
            "| %.1f µs | %.1f µs | %.2fx (%s) | %.1f µs | %d / %d | %s |" % (
                name, connections, workers, median(g, "rps"), median(u, "rps"),
                median(g, "rps") / median(u, "rps"), ratio_range(g, u, "rps"),
                median(g, "p50"), median(g, "p99"), median(u, "p50"), median(u, "p99"),
                median(g, "cpu_us"), median(u, "cpu_us"),
                median(u, "cpu_us") / median(g, "cpu_us"),
                ratio_range(g, u, "cpu_us", invert=True), median(g, "root_cpu_us"),
                sum(r["errors"] for r in g), sum(r["errors"] for r in u), load))
    if "gateway" not in HANDLER_SIDES or "uvicorn" not in HANDLER_SIDES or not rows:
        lines = lines[:1]
    if rows and HANDLER_SIDES != ("gateway", "uvicorn"):
        lines += sides_table(rows)
    if asgi_rows:
        lines += asgi_table(asgi_rows)
    if wsgi_rows:
        lines += wsgi_table(wsgi_rows)
    if not (rows or asgi_rows or wsgi_rows):
        lines = []  # wrk's caption: none of its scenarios ran
    if mixed_rows:
        lines += mixed_table(mixed_rows)
    text = "\n".join(lines).lstrip("\n") + "\n"
    print(text)
    out = os.environ.get("E2E_OUT", os.path.join(TARGET, "bench_e2e.md"))
    with open(out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
