"""A request's time on the loop: its record and the timing of its own coroutine (``spans``),
the tasks it starts (``tasks``), the ``Server-Timing`` header (``server_timing``) and the
per-route tallies handed to prometheus-client (``tally``). Loop thread only."""
