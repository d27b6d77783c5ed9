"""giftcard_toolkit: the POSPointe GiftCard Server from Python and Jupyter.

``GiftCardClient`` / ``AsyncGiftCardClient`` speak the API; ``giftcard_toolkit.server`` is
the embedded server; errors are in ``giftcard_toolkit.errors``, results in ``models``.
"""

import importlib
import importlib.metadata
from typing import Any

from giftcard_toolkit import errors, models
from giftcard_toolkit.cards import AesGcmCardCipher, Card, CardCipher
from giftcard_toolkit.client import AsyncGiftCardClient, GiftCardClient
from giftcard_toolkit.models import (
    Balance,
    Batch,
    Health,
    Load,
    Redemption,
    StatusChange,
    Store,
    Token,
    Transaction,
    Verification,
)

try:  # one source of truth: the version pyproject.toml gave the installed package
    __version__ = importlib.metadata.version("giftcard_toolkit")
except importlib.metadata.PackageNotFoundError:  # run from a folder, not installed
    __version__ = "0+unknown"

# The wings' modules, importable from the top as before (``from giftcard_toolkit import
# bulk``, ``from giftcard_toolkit import frames``), loaded only when asked for: the client
# alone needs no widgets, polars or matplotlib.
_WINGS = {
    "accounting": "giftcard_toolkit.analysis.accounting",
    "analytics": "giftcard_toolkit.analysis.analytics",
    "explore": "giftcard_toolkit.analysis.explore",
    "frames": "giftcard_toolkit.analysis.frames",
    "plots": "giftcard_toolkit.analysis.plots",
    "audit": "giftcard_toolkit.ops.audit",
    "bulk": "giftcard_toolkit.ops.bulk",
    "forms": "giftcard_toolkit.ops.forms",
    "operations": "giftcard_toolkit.ops.operations",
}


def __getattr__(name: str) -> Any:
    if name in _WINGS:
        return importlib.import_module(_WINGS[name])
    raise AttributeError(f"module 'giftcard_toolkit' has no attribute {name!r}")


__all__ = [
    "AesGcmCardCipher",
    "AsyncGiftCardClient",
    "Balance",
    "Batch",
    "Card",
    "CardCipher",
    "GiftCardClient",
    "Health",
    "Load",
    "Redemption",
    "StatusChange",
    "Store",
    "Token",
    "Transaction",
    "Verification",
    "__version__",
    "errors",
    "models",
]
