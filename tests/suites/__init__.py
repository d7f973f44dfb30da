"""Other projects' own test suites, run bare and with stallwatch in every request (``run.py``).

Nothing here is collected by this project's pytest: no file matches ``test_*.py``, and the
plugin in ``wrap_plugin.py`` loads only where ``run.py`` asks for it with ``-p``.
"""
