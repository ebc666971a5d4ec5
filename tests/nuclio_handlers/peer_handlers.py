"""Handlers for the crate's nuclio tests, in Nuclio's handler style."""

import asyncio
import os

import nuclio_sdk

drained = False
# Set when the wrapper is told to terminate (SIGUSR1, or whatever the
# platform's termination callback stands for).
terminating = asyncio.Event()


def init_context(context):
    def on_drain():
        global drained
        drained = True

    context.platform.set_drain_callback(on_drain)
    context.platform.set_termination_callback(terminating.set)
    context.logger.info_with("initialized", worker=context.worker_id)


async def echo(context, event):
    """The body back, as text or bytes, with what the handler saw in headers."""
    context.logger.debug("echo of %d bytes", len(event.body))
    body = event.body
    if event.get_header("x-as-text"):
        body = body.decode()
    return context.Response(
        body=body,
        content_type=event.content_type,
        headers={
            "x-method": event.method,
            "x-path": event.path,
            "x-trigger": f"{event.trigger.kind}/{event.trigger.name}",
            "x-header": event.get_header("x-test") or "",
            "x-size": event.size,
        },
        status_code=int(event.get_header("x-status") or 200),
    )


async def chatty(context, event):
    """Interleaves logs of every level with the work, then answers."""
    context.logger.debug("first")
    await asyncio.sleep(0.01)
    context.logger.info_with("second", step=2)
    context.logger.warn("third")
    context.logger.error("fourth")
    return "done"


async def raising(context, event):
    raise ValueError("no such thing")


async def streaming(context, event):
    async def chunks():
        for part in ("alpha,", "beta,", "gamma"):
            await asyncio.sleep(0.01)
            yield part

    return nuclio_sdk.Response(body=chunks(), content_type="text/csv", status_code=206)


async def slow(context, event):
    """Sleeps for the body's seconds, then says whether a drain was seen."""
    await asyncio.sleep(float(event.body.decode() or "0.5"))
    return f"slept; drained={drained}"


async def echo_or_await_termination(context, event):
    """The body back; for the body "await termination", the answer comes only
    once the wrapper has been told to terminate."""
    if event.body == b"await termination":
        await terminating.wait()
        return "told to terminate"
    return event.body


async def trivial(context, event):
    return "ok"


async def strings(context, event):
    """What types the event's strings have, and whether a header is found by name."""
    return {
        "method": type(event.method).__name__,
        "path": type(event.path).__name__,
        "header_names": sorted(type(name).__name__ for name in event.headers),
        "x_h5": repr(event.get_header("X-H5")),
    }


async def http_view(context, event):
    """The event as an HTTP trigger's handler sees it."""
    return {
        "method": event.method,
        "path": event.path,
        "url": event.url,
        "fields": event.fields,
        "x_h5": event.get_header("X-H5"),
        "content_type": event.get_header("Content-Type"),
        "traceparent": event.get_header("Traceparent"),
        "tracestate": event.get_header("Tracestate"),
    }


async def environment(context, event):
    """The environment variables the body names (comma-separated) as this
    worker sees them, null where unset, and the namespace it was given."""
    names = event.body.decode().split(",")
    return {
        "env": {name: os.environ.get(name) for name in names},
        "namespace": context.platform.namespace,
    }


async def batch(context, event):
    """A batch response: a list of responses."""
    return [
        nuclio_sdk.Response(
            body="first", status_code=201, content_type="text/plain", headers={}, event_id="e1"
        ),
        "second",
    ]
