"""The stall report: what it shows, as pure functions (``data``), the page and JSON API
behind its access rules (``http``: who may read and which answer; ``api``: the JSON
endpoints; ``answers``: every answer's shape; ``page.html``), and the plain-text and JSON
forms the CLI prints (``text``)."""
