"""A Flask app for tests/wsgi.rs, served unchanged by the gateway's --wsgi.

Every route is ordinary Flask; nothing here knows about the pool.
"""

import hashlib
import os
import tempfile
import threading
import time

from flask import Flask, Response, abort, jsonify, request, send_file, session

app = Flask(__name__)
app.secret_key = "tests only"
# Let an unhandled exception reach the server, as under gunicorn with an error
# reporter: the host then answers the client with its own fixed 500.
app.config["PROPAGATE_EXCEPTIONS"] = True

# What the tests ask about afterwards, through /notes.
NOTES = []
# Set by /release: lets /stream produce its last chunk.
RELEASE = threading.Event()
# A file for /report.csv, made at import.
REPORT = os.path.join(tempfile.mkdtemp(prefix="flask-app"), "report.csv")
with open(REPORT, "w") as f:
    f.write("".join("row,%d\n" % n for n in range(10000)))


@app.get("/items/<int:item_id>")
def read_item(item_id):
    return {"item_id": item_id, "q": request.args.get("q"),
            "limit": request.args.get("limit", 10, type=int)}


@app.post("/items")
def create_item():
    item = request.get_json()
    return jsonify(name=item["name"].upper(), price_cents=round(item["price"] * 100),
                   tags=item["tags"][::-1]), 201


@app.post("/upload")
def upload():
    upload = request.files["file"]
    data = upload.read()
    return {"filename": upload.filename, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "note": request.form["note"]}


@app.post("/login")
def login():
    session["user"] = request.form["user"]
    response = jsonify(logged_in=session["user"])
    response.set_cookie("theme", "dark")
    return response


@app.get("/whoami")
def whoami():
    return {"user": session.get("user"), "theme": request.cookies.get("theme")}


@app.get("/environ")
def environ():
    env = request.environ
    return {"remote_addr": request.remote_addr, "scheme": request.scheme,
            "server_protocol": env["SERVER_PROTOCOL"], "multithread": env["wsgi.multithread"],
            "x_repeat": env.get("HTTP_X_REPEAT"), "path": request.path}


@app.get("/stream")
def stream():
    def chunks():
        yield "first\n"
        # The last chunk is produced only once the client has the first one
        # and says so through /release: a buffered response would never end.
        RELEASE.wait(30)
        NOTES.append("last chunk produced")
        yield "last\n"
    RELEASE.clear()
    return Response(chunks(), mimetype="text/plain")


@app.post("/release")
def release():
    RELEASE.set()
    return {"released": True}


@app.get("/missing")
def missing():
    abort(404)


@app.get("/boom")
def boom():
    raise ValueError("the view failed")


@app.get("/report.csv")
def report():
    return send_file(REPORT, mimetype="text/csv")


@app.get("/sleep")
def sleep():
    seconds = request.args.get("s", 0.1, type=float)
    time.sleep(seconds)
    return {"slept": seconds, "pid": os.getpid()}


@app.get("/notes")
def notes():
    return jsonify(NOTES)


@app.get("/")
def index():
    return {"hello": "world", "pid": os.getpid()}
