"""The Flask hello app of the end-to-end bench's WSGI scenarios: the same
module under the gateway's --wsgi, gunicorn (gthread and sync) and granian
(--interface wsgi)."""

from flask import Flask

app = Flask(__name__)


@app.get("/bench")
def bench():
    return "hello, world\n"
