"""A stall, from the watchdog thread's side: noticing a held loop while it is held
(``watchdog``), reading the loop thread's stack (``sampling``; which files are the app's,
``in_app``; which frames are the loop's callback, ``callback``), its CPU and run-queue time
(``threadstats``) and the collector's pauses (``gcwatch``), and the rate-limited log line
(``log``). The judgements themselves are pure functions in ``stallwatch.decisions``."""
