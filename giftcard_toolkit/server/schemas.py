"""The contract's request and response shapes, for ``/openapi.json`` only.

The server reads requests itself (field names case-insensitively, as the production
binder does, see ``fields``) and writes responses from the ledger's dicts, so these models
never run on a request: they document the API, and fuzzers build requests from them and
check every response against them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from giftcard_toolkit.rules import GUID

Money = Annotated[
    Decimal,
    WithJsonSchema({"type": "number", "description": "Money in USD, at most 2 decimals"}),
]
Time = Annotated[str, Field(description="ISO 8601 with UTC offset")]
Guid = Annotated[
    str,
    Field(
        pattern=GUID.pattern,
        description="Store id (GUID)",
    ),
]
StatusCode = Annotated[str, Field(pattern=r"^[0-9]{6}$")]
Masked = Annotated[str, Field(description="Card number masked to its last four digits")]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# ------------------------------------------------------------------ requests


class TokenRequest(BaseModel):
    cardnumber: str = Field(
        pattern=r"^(?:[0-9][ -]?){15}[0-9]$",
        description="16-digit Luhn-valid card number (spaces and dashes ignored)",
    )
    securitycode: str = Field(
        pattern=r"^[0-9]{4}$", description="4-digit security code printed on the card"
    )


class CardRequest(BaseModel):
    """Names the card by exactly one of ``cardtoken`` or ``encrypted``."""

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["cardtoken"]}, {"required": ["encrypted"]}]}
    )

    cardtoken: str = Field(
        None,  # type: ignore[assignment]
        pattern=r"^([0-9]{16})?$",
        description="Token from POST /v1/Token (empty or null: absent)",
    )
    encrypted: str = Field(
        None,  # type: ignore[assignment]
        description="base64(nonce[12] || AES-256-GCM(card number) || tag[16]); a value that "
        "does not decrypt to a card is declined with 100009 (empty or null: absent)",
    )


class LoadRequest(CardRequest):
    amount: Money
    FranchiseeID: Guid
    PosRef: str | None = Field(
        None, max_length=100, description="POS reference; not an idempotency key"
    )


class RedeemRequest(LoadRequest):
    acceptpartialamount: bool | None = False


class ChangeStatusRequest(CardRequest):
    status: bool = Field(description="false blocks the card, true unblocks it")
    reason: str = Field(min_length=1, max_length=200)


class CloseBatchRequest(BaseModel):
    expectedcount: int | None = Field(None, ge=0)
    expectedamount: Money | None = None


# ----------------------------------------------------------------- responses


class Decline(_Open):
    """Any declined outcome (HTTP 200, ``status: false``); some carry extra figures."""

    statuscode: StatusCode
    description: str
    status: Literal[False]
    balance: Money | None = None
    transactioncount: int | None = None
    netamount: Money | None = None


class Health(_Open):
    status: Literal["Healthy", "Unhealthy"]
    version: str
    time: Time


class StoreInfo(_Open):
    franchiseeid: Guid
    storename: str
    storeaddress: str
    jurisdiction: str = Field(
        "",
        description="Where the store trades, an ISO 3166 code such as US-NY (for "
        "unclaimed-property rules); empty when not set. An added field: clients must cope "
        "with a server that sends none",
    )


class Verification(_Open):
    statuscode: StatusCode
    description: str
    username: str
    role: Literal["clerk", "analyst"] = Field(
        description="clerk: every endpoint; analyst: read only (other calls: 100017)"
    )
    maxamount: Money | None = Field(
        description="The user's own limit per sale, reload or redemption (null: none)"
    )
    stores: list[StoreInfo]


class TokenApproved(_Open):
    statuscode: StatusCode
    description: str
    token: str = Field(pattern=r"^[0-9]{16}$")
    exp: Time


class BalanceApproved(_Open):
    statuscode: StatusCode
    description: str
    cardending: str
    balance: Money
    status: bool
    activated: Time | None
    lastused: Time | None
    expire: Time | None
    cardref: str = Field(
        pattern=r"^[0-9a-f]{16}$",
        description="The card's stable pseudonym, as batch rows carry it",
    )


class LoadApproved(_Open):
    statuscode: StatusCode
    description: str
    hostRef: str
    cardno: Masked
    balance: Money
    status: Literal[True]
    franchiseeid: Guid
    storename: str
    storeaddress: str
    datetimereloaded: Time


class RedeemApproved(_Open):
    statuscode: StatusCode
    description: str
    hostRef: str
    cardno: Masked
    approvedbalance: Money
    previousbalance: Money
    newbalance: Money
    status: Literal[True]
    franchiseeid: Guid
    storename: str
    storeaddress: str
    datetimeradeemed: Time


class StatusApproved(_Open):
    statuscode: StatusCode
    description: str
    card: Masked
    balance: Money
    status: bool


class Transaction(_Open):
    hostRef: str
    type: Literal["sale", "reload", "redeem"]
    cardno: Masked
    cardref: str | None = None
    amount: Money
    previousbalance: Money
    newbalance: Money
    posref: str | None
    datetime: Time
    username: str


class Batch(_Open):
    batchid: str
    status: Literal["open", "closed"]
    opened: Time
    closed: Time | None
    transactioncount: int
    soldamount: Money
    reloadedamount: Money
    redeemedamount: Money
    netamount: Money
    transactions: list[Transaction] | None = None


class BatchEnvelope(_Open):
    statuscode: StatusCode
    description: str
    franchiseeid: str
    storename: str | None = None
    batches: list[Batch]
    status: bool | None = None


class Problem(_Open):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str | None = None
    errors: dict[str, list[str]] | None = None


def request_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` that documents a JSON request body the endpoint reads itself."""
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
