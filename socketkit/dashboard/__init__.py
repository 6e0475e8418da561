"""The dashboard of `socketkit up`: charts over time, the sockets themselves, what just happened, and
metrics for monitoring (core.py: the sampler; app.py: the page and its API; series.py, sockets.py,
events.py, metrics.py, status_socket.py: the parts).

`events` and `metrics` import nothing from socketkit, so every layer (the socket layer included) may emit
an event or observe a latency without an import cycle; the rest is imported only where a dashboard runs.
"""
