"""stallwatch's demo: a FastAPI service whose 2 ms SQLite cache read blocks the event loop.

``python -m demo_app`` serves it (``app.py``, the reads in ``cache.py``);
``python -m demo_app.load`` puts open-loop load on it and prints what each mode costs.
"""
