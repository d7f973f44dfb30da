"""gunicorn settings for the many-workers test: the hook docs/deployment.md tells users to add.

``gunicorn --config python:tests.apps.gunicorn_conf ...``
"""

from __future__ import annotations

from stallwatch.multiprocess import child_exit

__all__ = ["child_exit"]
