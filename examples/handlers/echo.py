"""Echo handler: answers every event with its own body.

    ASYNC_WORKER_POOL_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))') \
    PYTHONPATH=python python3 -m async_pool_worker --handler echo:handler \
        --handler-path examples/handlers --unix /tmp/w0.sock --worker-id 0
"""


async def handler(context, event):
    # The header lets a caller see which worker of the pool answered.
    return 200, {"x-worker-id": str(context.worker_id)}, event.body
