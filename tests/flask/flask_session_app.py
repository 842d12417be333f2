"""The real Flask-Session side of the server-side interop tests.

A Flask 3.1 app with Flask-Session 0.8.0, configured from the environment:

  BACKEND      redis | memcached | sqlalchemy | mongodb
  URL          the server (redis://, host:port, an SQLAlchemy URL, mongodb://)
  PREFIX       SESSION_KEY_PREFIX (default "session:")
  TABLE        SESSION_SQLALCHEMY_TABLE (default "sessions")
  MONGO_DB, MONGO_COLLECTION   SESSION_MONGODB_DB / _COLLECT
  SIGNER       "1" for SESSION_USE_SIGNER (SECRET_KEY is SECRET)
  FORMAT       SESSION_SERIALIZATION_FORMAT (msgpack | json)
  LIFETIME     PERMANENT_SESSION_LIFETIME in seconds

Routes, each through Flask-Session's own code path:

  POST /set     JSON body: typed values to put in the session -> "ok"
  GET  /get     the session's values, typed, "_permanent" included
  POST /logout  session.clear() -> Flask-Session deletes the record

Python types travel as typed JSON: {"$tuple": [..]}, {"$set": [..]},
{"$bytes": base64}, {"$datetime": RFC 3339 with microseconds}; the rest is
plain JSON. The first line printed is "listening on http://HOST:PORT".
"""

import base64
import datetime
import json
import os
import warnings

from flask import Flask, request, session
from flask_session import Session

warnings.simplefilter("ignore", DeprecationWarning)


def to_python(value):
    if isinstance(value, list):
        return [to_python(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            (key, inner), = value.items()
            if key == "$tuple":
                return tuple(to_python(v) for v in inner)
            if key == "$set":
                return set(to_python(v) for v in inner)
            if key == "$bytes":
                return base64.b64decode(inner)
            if key == "$datetime":
                return datetime.datetime.fromisoformat(inner.replace("Z", "+00:00"))
        return {k: to_python(v) for k, v in value.items()}
    return value


def describe(value):
    if isinstance(value, tuple):
        return {"$tuple": [describe(v) for v in value]}
    if isinstance(value, list):
        return [describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            return {"$naive": value.isoformat()}
        utc = value.astimezone(datetime.timezone.utc)
        return {"$datetime": utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
    return value


env = os.environ.get
app = Flask("flask_session_peer")
app.secret_key = env("SECRET", "a Flask secret")
backend = env("BACKEND", "redis")
url = env("URL", "")
app.config.update(
    SESSION_TYPE=backend,
    SESSION_KEY_PREFIX=env("PREFIX", "session:"),
    SESSION_USE_SIGNER=env("SIGNER") == "1",
    SESSION_SERIALIZATION_FORMAT=env("FORMAT", "msgpack"),
    PERMANENT_SESSION_LIFETIME=datetime.timedelta(seconds=int(env("LIFETIME", "3600"))),
)
if backend == "redis":
    if env("CLUSTER") == "1":
        from redis.cluster import RedisCluster

        # Flask-Session checks for a redis.Redis; a cluster client answers
        # the same calls, so it is passed as the interface's client.
        app.config["SESSION_REDIS"] = RedisCluster.from_url(url)
    else:
        from redis import Redis

        app.config["SESSION_REDIS"] = Redis.from_url(url)
elif backend == "memcached":
    from pymemcache.client.base import Client

    host, port = url.rsplit(":", 1)
    # pymemcache sends sets without waiting for the reply by default, so a
    # request to another app right after a Flask response could miss the
    # write; waiting for it gives read-your-writes across the apps.
    app.config["SESSION_MEMCACHED"] = Client((host, int(port)), default_noreply=False)
elif backend == "sqlalchemy":
    from flask_sqlalchemy import SQLAlchemy

    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["SESSION_SQLALCHEMY_TABLE"] = env("TABLE", "sessions")
    app.config["SESSION_SQLALCHEMY"] = SQLAlchemy(app)
elif backend == "mongodb":
    from pymongo import MongoClient

    app.config["SESSION_MONGODB"] = MongoClient(url)
    app.config["SESSION_MONGODB_DB"] = env("MONGO_DB", "flask_session")
    app.config["SESSION_MONGODB_COLLECT"] = env("MONGO_COLLECTION", "sessions")

if backend == "redis" and env("CLUSTER") == "1":
    from flask_session.redis import RedisSessionInterface

    class ClusterInterface(RedisSessionInterface):
        def __init__(self, app, client, **kwargs):
            self.client = client
            super(RedisSessionInterface, self).__init__(app, **kwargs)

    app.session_interface = ClusterInterface(
        app,
        app.config["SESSION_REDIS"],
        key_prefix=app.config["SESSION_KEY_PREFIX"],
        use_signer=app.config["SESSION_USE_SIGNER"],
        serialization_format=app.config["SESSION_SERIALIZATION_FORMAT"],
    )
else:
    Session(app)


@app.post("/set")
def set_values():
    for key, value in request.get_json().items():
        session[key] = to_python(value)
    return "ok"


@app.get("/get")
def get_values():
    return json.dumps({k: describe(v) for k, v in dict(session).items()}, sort_keys=True)


@app.post("/logout")
def logout():
    session.clear()
    return "logged out"


if __name__ == "__main__":
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", int(env("PORT", "0")), app, threaded=True)
    print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()
