"""The Flask half of the shared-login example: an ordinary Flask app.

Run with the pinned Flask (scripts/test.sh creates .venv):

    SESSION_SECRET='one secret for both apps' .venv/bin/python examples/flask_shared/app.py

Nothing in it knows about Rust: the Axum app reads and writes Flask's own
session cookie.
"""

import os

from flask import Flask, request, session

app = Flask(__name__)
app.secret_key = os.environ.get("SESSION_SECRET", "change me: one secret for both apps")
# The demo runs over plain http on localhost; keep Secure on in production.
app.config["SESSION_COOKIE_SECURE"] = False


@app.post("/login")
def login():
    user = request.form["user"]
    session.clear()
    session["user"] = user
    session["logged_in_by"] = "flask"
    session.permanent = True
    return f"logged in as {user} (by Flask)\n"


@app.get("/whoami")
def whoami():
    user = session.get("user", "anonymous")
    by = session.get("logged_in_by", "nobody")
    return f"{user} (logged in by {by}, seen by Flask)\n"


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
