"""The loop: how busy stretches are timed (``probes``, ``libuv``), who held the loop in each
(``timeline``), the last minutes of lag and route time (``history``), and which monitor
watches which loop (``registry``). Everything here runs on the loop thread, except the
registry's look-ups and the history's snapshot, which any thread may call."""
