#!/usr/bin/env python3
"""The soak test's driver (see scripts/soak.sh, which builds the gateway and
runs this): starts the HTTP gateway with examples/handlers/mixed.py, offers it
a steady mixed load from keep-alive connections, kills one worker process a
minute, reports once a minute, and judges the run. Standard library only.

Exit status 0 when every request got an answer of the kind it asked for (a
light or slow request 200, a failing one 500, any of them 502 when its worker
was killed under it) and nothing grew more than 10 % after the warm-up;
1 otherwise.
"""

import argparse
import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

CLIENTS = 20
WORKERS = 2
CONNECTIONS = 50
SLOW_SHARE = 0.05
FAIL_SHARE = 0.05
SLOW_SECONDS = 0.5
ANSWER_TIMEOUT = 15.0
GROWTH_LIMIT = 0.10


def parse_duration(text):
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(h|m|min|s)?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError("%r is not a duration like 30m or 120s" % text)
    number = float(match.group(1))
    unit = match.group(2) or "s"
    return number * {"h": 3600, "m": 60, "min": 60, "s": 1}[unit]


class Counts:
    KINDS = ("ok", "failed_as_asked", "worker_killed", "other", "lost")

    def __init__(self):
        for kind in self.KINDS:
            setattr(self, kind, 0)
        self.examples = []

    def snapshot(self):
        return {kind: getattr(self, kind) for kind in self.KINDS}

    def note(self, text):
        if len(self.examples) < 10:
            self.examples.append(text)


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = await reader.readexactly(length)
    return status, body


def request_bytes(body):
    return (b"POST /soak HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


async def client(host, port, interval, counts, stop_at, seed):
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    reader = writer = None
    next_at = loop.time() + rng.random() * interval
    while loop.time() < stop_at:
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        next_at = max(next_at + interval, loop.time() - 1.0)
        draw = rng.random()
        if draw < SLOW_SHARE:
            kind, body = "slow", b"slow:%g" % SLOW_SECONDS
        elif draw < SLOW_SHARE + FAIL_SHARE:
            kind, body = "fail", b"fail"
        else:
            kind, body = "light", b"light %d" % rng.randrange(1 << 30)
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(request_bytes(body))
            status, answer = await asyncio.wait_for(read_response(reader), ANSWER_TIMEOUT)
        except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.TimeoutError) as error:
            counts.lost += 1
            counts.note("%s request lost: %r" % (kind, error))
            if writer is not None:
                writer.close()
            reader = writer = None
            continue
        if status == 502:
            counts.worker_killed += 1
        elif kind == "fail" and status == 500:
            counts.failed_as_asked += 1
        elif kind == "light" and status == 200 and answer == body:
            counts.ok += 1
        elif kind == "slow" and status == 200 and answer == b"slow":
            counts.ok += 1
        else:
            counts.other += 1
            counts.note("%s request answered %d: %r" % (kind, status, answer[:200]))
    if writer is not None:
        writer.close()


def workers_of(pid):
    children = []
    for task in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                children.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return children


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


async def killer(gateway_pid, stop_at, kills):
    """One worker a minute, half a minute off the reports."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(30)
    while loop.time() < stop_at - 5:
        workers = workers_of(gateway_pid)
        if workers:
            victim = workers[kills[0] % len(workers)]
            try:
                os.kill(victim, signal.SIGKILL)
                kills[0] += 1
            except ProcessLookupError:
                pass
        await asyncio.sleep(60)


def start_gateway(binary, log):
    process = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--workers", str(WORKERS),
         "--max-connections", str(CONNECTIONS), "--handler", "mixed:handler",
         "--handler-path", os.path.join(os.getcwd(), "examples/handlers"),
         "--shutdown-grace", "5s"],
        stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, RUST_LOG="warn,http_gateway::responses=error", NO_COLOR="1"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with open(log.name) as f:
            match = re.search(r"listening on http://([\d.]+):(\d+)", f.read())
        if match:
            return process, match.group(1), int(match.group(2))
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    with open(log.name) as f:
        sys.exit("soak: the gateway did not start:\n" + f.read())


async def soak(args, process, host, port, csv):
    loop = asyncio.get_running_loop()
    began = loop.time()
    stop_at = began + args.duration
    counts = Counts()
    kills = [0]
    interval = CLIENTS / args.rate
    tasks = [asyncio.ensure_future(client(host, port, interval, counts, stop_at, seed))
             for seed in range(CLIENTS)]
    tasks.append(asyncio.ensure_future(killer(process.pid, stop_at, kills)))
    rows = []
    last = counts.snapshot()
    minute = 0
    while True:
        await asyncio.sleep(max(0.0, began + 60 * (minute + 1) - loop.time()))
        minute += 1
        now = counts.snapshot()
        delta = {kind: now[kind] - last[kind] for kind in now}
        last = now
        workers = workers_of(process.pid)
        row = {
            "minute": minute,
            "gateway_rss_kb": rss_kb(process.pid),
            "workers_rss_kb": sum(rss_kb(w) for w in workers),
            "workers": len(workers),
            "fds": open_fds(process.pid),
            "req_per_s": sum(delta.values()) / 60.0,
            "kills": kills[0],
        }
        row.update(delta)
        rows.append(row)
        print("minute %(minute)3d: gateway RSS %(gateway_rss_kb)7d kB, workers RSS "
              "%(workers_rss_kb)7d kB (%(workers)d), fds %(fds)4d, %(req_per_s)6.1f req/s; "
              "ok %(ok)d, failed as asked %(failed_as_asked)d, worker killed %(worker_killed)d, "
              "other %(other)d, lost %(lost)d; kills so far %(kills)d" % row, flush=True)
        if csv:
            if minute == 1:
                csv.write(",".join(row) + "\n")
            csv.write(",".join(("%.1f" % v) if isinstance(v, float) else str(v)
                               for v in row.values()) + "\n")
            csv.flush()
        if loop.time() >= stop_at - 1:
            break
    await asyncio.gather(*tasks, return_exceptions=True)
    return rows, counts


def judge(rows, counts, duration):
    failures = []
    if counts.lost:
        failures.append("%d requests got no answer" % counts.lost)
    if counts.other:
        failures.append("%d requests got an answer of the wrong kind" % counts.other)
    warm = int(min(5, max(1, duration // 60 // 2)))
    if len(rows) > warm:
        base, end = rows[warm - 1], rows[-1]
        for key in ("gateway_rss_kb", "workers_rss_kb", "fds"):
            if base[key] and (end[key] - base[key]) / base[key] > GROWTH_LIMIT:
                failures.append("%s grew from %d at minute %d to %d at minute %d (over %d %%)"
                                % (key, base[key], warm, end[key], end["minute"],
                                   GROWTH_LIMIT * 100))
    else:
        failures.append("too short a run to judge growth (%d reports)" % len(rows))
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--duration", type=parse_duration, default=parse_duration("30m"))
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second offered")
    parser.add_argument("--csv", help="write the minute reports to this CSV file")
    args = parser.parse_args()
    if args.duration < 120:
        parser.error("a soak runs at least 2 minutes")
    log = tempfile.NamedTemporaryFile("w+", prefix="soak-gateway-", suffix=".log", delete=False)
    process, host, port = start_gateway(args.gateway, log)
    print("soak: gateway pid %d on %s:%d, %d workers x %d connections, %.0f req/s offered "
          "from %d connections for %.0f s; log %s"
          % (process.pid, host, port, WORKERS, CONNECTIONS, args.rate, CLIENTS,
             args.duration, log.name), flush=True)
    csv = open(args.csv, "w") if args.csv else None
    try:
        rows, counts = asyncio.run(soak(args, process, host, port, csv))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        if csv:
            csv.close()
    total = counts.snapshot()
    print("soak: in all %s" % ", ".join("%s %d" % item for item in total.items()))
    for example in counts.examples:
        print("soak:   e.g. %s" % example)
    failures = judge(rows, counts, args.duration)
    if failures:
        for failure in failures:
            print("soak: FAILED: %s" % failure)
        print("soak: gateway log kept in %s" % log.name)
        return 1
    os.unlink(log.name)
    print("soak: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
