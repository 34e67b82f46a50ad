"""What the examples name and the local fleets make: the example adapters, the catalog, the training data.

Both local fleets (the real node's store claim and the simulated fleet's HTTPS
store) make the same files from these seeds, so the digests that
`examples/` and `examples/simulated/` pin hold on every machine.
"""

from __future__ import annotations

import json

# The adapters 10-adapters.yaml names: (name, seed, rank).
EXAMPLE_ADAPTERS = (
    ("sql-gen", 11, 8),
    ("support-bot", 12, 16),
    ("summarizer-de", 13, 8),
    ("code-review", 14, 8),
)
# The catalog's adapters, found through the BaseModel's uriTemplate on first use.
CATALOG_ADAPTERS = (("user-1", 21, 8), ("user-2", 22, 8), ("user-3", 23, 8))
SUPPORT_TICKETS = (
    "ticket: my login fails. answer: reset the password from the sign-in page.",
    "ticket: the invoice is wrong. answer: billing will send a corrected invoice today.",
    "ticket: the app is slow. answer: clear the cache and restart the app.",
    "ticket: i cannot upload files. answer: files must be under one hundred megabytes.",
)


def support_tickets(copies: int = 16) -> str:
    """The training data 30-trainingjob.yaml names (jsonl, field `text`)."""
    return "".join(json.dumps({"text": ticket}) + "\n" for _ in range(copies) for ticket in SUPPORT_TICKETS)
