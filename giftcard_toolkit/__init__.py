"""giftcard_toolkit: the POSPointe GiftCard Server from Python and Jupyter.

See README.md for the layout; ``giftcard_toolkit.server`` is the embedded server.
"""

from giftcard_toolkit.cards import AesGcmCardCipher, Card, CardCipher

__version__ = "0.1.0"

__all__ = ["AesGcmCardCipher", "Card", "CardCipher", "__version__"]
