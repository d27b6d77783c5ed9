"""The POSPointe GiftCard Server API, embedded: FastAPI over a SQLite ledger.

``running()`` starts a seeded server for notebooks and tests; ``create_app()`` builds the
ASGI app (for ``httpx.ASGITransport`` or any ASGI server); ``serve()`` runs it for real.
Nothing here imports the client side of the toolkit.
"""

from giftcard_toolkit.server.app import create_app
from giftcard_toolkit.server.auth import Throttle, hash_password
from giftcard_toolkit.server.ledger import Ledger, Limits, Store
from giftcard_toolkit.server.runner import RunningServer, running, serve
from giftcard_toolkit.server.seed import DemoCard, DemoData, open_demo, read_card_stock, seed_demo

__all__ = [
    "DemoCard",
    "DemoData",
    "Ledger",
    "Limits",
    "RunningServer",
    "Store",
    "Throttle",
    "create_app",
    "hash_password",
    "open_demo",
    "read_card_stock",
    "running",
    "seed_demo",
    "serve",
]
