"""A greeting handler: the HTTP gateway's default (``--handler
async_pool_worker.hello:handler``), so that a gateway runs without a handler
of the user's own, as in the README's curl example.

    $ curl http://127.0.0.1:8080/some/path
    hello from worker 0: GET /some/path
"""


async def handler(context, event):
    if event.is_http:
        text = "hello from worker %d: %s %s\n" % (context.worker_id, event.method, event.path)
    else:
        text = "hello from worker %d: (plain event)\n" % context.worker_id
    return 200, {"content-type": "text/plain; charset=utf-8"}, text
