"""The stall report: what it shows, as pure functions (``data``), the page and JSON API
behind its access rules (``http``, ``page.html``), and the plain-text and JSON forms the CLI
prints (``text``)."""
