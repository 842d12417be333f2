"""The real Flask side of the interop tests.

Reads one JSON request per line on stdin and answers one JSON line on
stdout, so a Rust test can ask Flask 3.1 itself to write or read a session
cookie at a given time with given keys:

  {"op": "dumps", "secret": S, "fallbacks": [..], "now": T, "data": D, "permanent": bool}
      -> {"cookie": C}
  {"op": "loads", "secret": S, "fallbacks": [..], "now": T, "max_age": A, "cookie": C}
      -> {"ok": true, "data": D, "permanent": bool} | {"ok": false, "error": NAME}
  {"op": "render", "secret": S, "now": T, "cookie": C, "template": J}
      -> {"html": H}

All go through Flask's own SecureCookieSessionInterface inside a request
context, the code path of a real request; render then renders the Jinja
template J with that session, autoescaped as Flask renders a template
string. Python types travel as typed JSON: {"$tuple": [..]},
{"$bytes": base64}, {"$uuid": hex}, {"$datetime": RFC 3339},
{"$markup": str}; everything else is plain JSON.
"""

import base64
import datetime
import json
import sys
import uuid
from unittest import mock

from flask import Flask, render_template_string, request
from markupsafe import Markup


def to_python(value):
    if isinstance(value, list):
        return [to_python(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            (key, inner), = value.items()
            if key == "$tuple":
                return tuple(to_python(v) for v in inner)
            if key == "$bytes":
                return base64.b64decode(inner)
            if key == "$uuid":
                return uuid.UUID(inner)
            if key == "$datetime":
                return datetime.datetime.fromisoformat(inner.replace("Z", "+00:00"))
            if key == "$markup":
                return Markup(inner)
        return {k: to_python(v) for k, v in value.items()}
    return value


def describe(value):
    if isinstance(value, Markup):
        return {"$markup": str(value)}
    if isinstance(value, tuple):
        return {"$tuple": [describe(v) for v in value]}
    if isinstance(value, list):
        return [describe(v) for v in value]
    if isinstance(value, dict):
        return {k: describe(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, uuid.UUID):
        return {"$uuid": value.hex}
    if isinstance(value, datetime.datetime):
        return {"$datetime": value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    return value


def app_for(req):
    app = Flask("peer")
    app.secret_key = req["secret"]
    app.config["SECRET_KEY_FALLBACKS"] = req.get("fallbacks", [])
    app.config["PERMANENT_SESSION_LIFETIME"] = datetime.timedelta(
        seconds=req.get("max_age", 31 * 24 * 3600)
    )
    return app


def dumps(req):
    app = app_for(req)
    with mock.patch("time.time", return_value=req["now"]):
        with app.test_request_context():
            data = to_python(req["data"])
            if req.get("permanent"):
                data["_permanent"] = True
            cookie = app.session_interface.get_signing_serializer(app).dumps(data)
    return {"cookie": cookie}


def loads(req):
    app = app_for(req)
    cookie = req["cookie"]
    with mock.patch("time.time", return_value=req["now"]):
        with app.test_request_context(headers={"Cookie": f"session={cookie}"}):
            serializer = app.session_interface.get_signing_serializer(app)
            try:
                serializer.loads(cookie, max_age=req.get("max_age", 31 * 24 * 3600))
            except Exception as error:  # what Flask would do with it
                return {"ok": False, "error": type(error).__name__}
            session = app.session_interface.open_session(app, request)
            data = dict(session)
            permanent = bool(data.pop("_permanent", False))
            return {"ok": True, "data": describe(data), "permanent": permanent}


def render(req):
    app = app_for(req)
    cookie = req["cookie"]
    with mock.patch("time.time", return_value=req["now"]):
        # Pushing the request context opens the session from the cookie,
        # as before a view.
        with app.test_request_context(headers={"Cookie": f"session={cookie}"}):
            return {"html": render_template_string(req["template"])}


def main():
    for line in sys.stdin:
        req = json.loads(line)
        answer = {"dumps": dumps, "loads": loads, "render": render}[req["op"]](req)
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
