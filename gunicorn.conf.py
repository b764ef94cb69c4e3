"""gunicorn settings for CareDesk (`gunicorn wsgi:app` picks this file up from the cwd).

The access log omits query strings: OAuth callbacks carry the authorization code and EHR
launches the launch token in the query, and neither may reach a log.
"""

import os

bind = os.environ.get("CAREDESK_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("CAREDESK_WEB_WORKERS", "4"))
threads = int(os.environ.get("CAREDESK_WEB_THREADS", "4"))
accesslog = "-"
# %(U)s is the path without the query string; X-Request-Id ties the line to app logs.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(D)sus rid=%({x-request-id}o)s'
forwarded_allow_ips = os.environ.get("CAREDESK_FORWARDED_ALLOW_IPS", "127.0.0.1")
