"""The Flask half of the shared-login example: a Flask app with
Flask-Session keeping its sessions in Redis.

Run with the pinned Flask and Flask-Session (scripts/test.sh creates .venv):

    .venv/bin/python examples/flask_session_shared/app.py

Nothing in it knows about Rust: the Axum app reads and writes
Flask-Session's own records in the same Redis, under the same cookie.
"""

import os

from flask import Flask, request, session
from flask_session import Session
from redis import Redis

app = Flask(__name__)
app.config.update(
    SESSION_TYPE="redis",
    SESSION_REDIS=Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")),
    # Flask-Session's defaults, spelled out: the Axum side must agree.
    SESSION_KEY_PREFIX="session:",
    SESSION_USE_SIGNER=False,
    SESSION_PERMANENT=True,
    # The demo runs over plain http on localhost; keep Secure on in production.
    SESSION_COOKIE_SECURE=False,
)
Session(app)


@app.post("/login")
def login():
    user = request.form["user"]
    # Flask-Session's regenerate(): a new id at login (session fixation).
    app.session_interface.regenerate(session)
    session.clear()
    session["user"] = user
    session["logged_in_by"] = "flask"
    return f"logged in as {user} (by Flask)\n"


@app.get("/whoami")
def whoami():
    user = session.get("user", "anonymous")
    by = session.get("logged_in_by", "nobody")
    visits = session.get("visits", 0) + 1
    session["visits"] = visits
    return f"{user} (logged in by {by}, seen by Flask, visit {visits})\n"


@app.post("/logout")
def logout():
    session.clear()
    return "logged out (by Flask)\n"


if __name__ == "__main__":
    from werkzeug.serving import make_server

    # PORT=0 picks a free port; the first line says which.
    server = make_server("127.0.0.1", int(os.environ.get("PORT", "5000")), app)
    print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()
