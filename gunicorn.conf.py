"""gunicorn settings for CareDesk (`gunicorn wsgi:app` picks this file up from the cwd).

Every value is a `CAREDESK_*` setting of `plugin.config.SETTINGS` (`caredesk config` lists
them with their defaults): CAREDESK_BIND, CAREDESK_WEB_WORKERS, CAREDESK_WEB_THREADS,
CAREDESK_FORWARDED_ALLOW_IPS.

The access log omits query strings: OAuth callbacks carry the authorization code and EHR
launches the launch token in the query, and neither may reach a log. Paths still can:
a survey link (`/s/<token>`) is a bearer credential, so every record, the access log's
included, goes through `helpdesk.redact` (installed here, before the workers fork, and
again by the app factory).
"""

import gc
import os

from helpdesk import redact
from plugin.config import env_setting

redact.install()

bind = str(env_setting("BIND"))
# One process per core by default: a process runs Python on one core at a time, and more
# processes than cores only take turns on them. Measured on 2 cores (bench section 7,
# 200 simultaneous survey answers, interleaved runs): 2 processes x 4 threads used about
# 10% less CPU per answer than 4 x 4 and half as much per no-op request, with a lower
# p99; 8 threads per process did worse than 4.
# (sched_getaffinity: the cores this process may run on, which a container can narrow;
# macOS has no such call.)
_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
workers = int(env_setting("WEB_WORKERS")) or _cores or 1
threads = int(env_setting("WEB_THREADS"))
accesslog = "-"
# %(U)s is the path without the query string; X-Request-Id ties the line to app logs.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(D)sus rid=%({x-request-id}o)s'
forwarded_allow_ips = str(env_setting("FORWARDED_ALLOW_IPS"))


def post_worker_init(worker: object) -> None:
    """Once the worker has loaded the app: its start-up objects (modules, the app, the
    FHIR models, SQLAlchemy's mappers: ~150,000 tracked objects) leave the collector's
    view. Every full collection otherwise walks them all, ~100 ms with the GIL held, in
    the middle of whichever request allocated last (2 of 9 board pages in one measured
    run). Garbage is collected first, so only live objects are kept for good."""
    gc.collect()
    gc.freeze()
