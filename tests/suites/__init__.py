"""Other projects' own test suites, run bare and with stallwatch in every request (``run.py``).

Nothing here is collected by this project's pytest: no file matches ``test_*.py``, and the
plugins (``wrap_plugin.py``, ``journal_plugin.py``) load only where ``run.py`` asks for them
with ``-p``, inside the other projects' venvs.
"""
