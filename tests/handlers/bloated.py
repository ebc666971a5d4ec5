"""A handler whose module holds 64 MiB from the moment it is imported: a
worker serving it is past a smaller `max_worker_rss` from the start, however
often it is replaced. Echoes every event."""

# Bytes built by repetition are written, so they count in the resident set.
BALLAST = b"x" * (64 << 20)


async def handler(context, event):
    return event.body
