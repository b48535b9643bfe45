# gunicorn.conf.py: gunicorn -c gunicorn.conf.py app:app
import os
import shutil

# Set before prometheus_client is imported anywhere: it picks multiprocess mode at import.
PROM_DIR = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "/tmp/kitmw-prometheus")

from kitmw.metrics import gunicorn_child_exit as child_exit  # noqa: E402, F401  (drops a dead worker's gauges)
from kitmw.metrics import start_server  # noqa: E402

bind = "0.0.0.0:8000"
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
worker_class = "uvicorn.workers.UvicornWorker"  # or "uvicorn_worker.UvicornWorker"; "gthread" for WSGI
accesslog = None  # kitmw's access log replaces gunicorn's and uvicorn's


def on_starting(server: object) -> None:
    """The whole service (re)starts: begin with an empty directory (not on a worker restart)."""
    shutil.rmtree(PROM_DIR, ignore_errors=True)
    os.makedirs(PROM_DIR)


def when_ready(server: object) -> None:
    """The metrics port, served by the master: it reads every worker's files."""
    start_server(int(os.environ.get("METRICS_PORT", "9464")))
