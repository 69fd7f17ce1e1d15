"""The website of kiln's Python example: one page, served by Flask."""
import os
import signal
import sys

from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    return "Hello from Flask, built by kiln\n"


def stop(_signum, _frame):
    # As PID 1 of its PID namespace, the server would ignore SIGTERM without
    # a handler, and `kiln run` forwards SIGTERM to stop it.
    sys.exit(0)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop)
    app.run(host="0.0.0.0", port=int(os.environ.get("PORT", "8000")))
