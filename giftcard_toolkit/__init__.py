"""giftcard_toolkit: the POSPointe GiftCard Server from Python and Jupyter.

``GiftCardClient`` / ``AsyncGiftCardClient`` speak the API; ``giftcard_toolkit.server`` is
the embedded server; errors are in ``giftcard_toolkit.errors``, results in ``models``.
"""

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

__version__ = "0.1.0"

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
