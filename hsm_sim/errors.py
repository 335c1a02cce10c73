"""HSM error codes (contract "Error codes") and the exception a command raises to answer with one."""

from __future__ import annotations

OK = "00"
VERIFICATION_FAILURE = "01"
INVALID_KEY_TYPE = "04"
INVALID_KEY_LENGTH_FLAG = "05"
SOURCE_KEY_PARITY = "10"
DESTINATION_KEY_PARITY = "11"
NO_USER_STORAGE = "12"
INVALID_INPUT = "15"
PIN_BLOCK_INVALID = "20"
PIN_BLOCK_FORMAT = "23"
PIN_LENGTH = "24"
INVALID_KEY_SCHEME = "26"
INCOMPATIBLE_KEY_LENGTH = "27"
KEY_FUNCTION_NOT_PERMITTED = "29"
UNKNOWN_COMMAND = "68"
DATA_LENGTH = "80"

MEANINGS: dict[str, str] = {
    OK: "no error",
    VERIFICATION_FAILURE: "verification failure",
    INVALID_KEY_TYPE: "invalid key type code",
    INVALID_KEY_LENGTH_FLAG: "invalid key length flag",
    SOURCE_KEY_PARITY: "source key parity error",
    DESTINATION_KEY_PARITY: "destination key parity error",
    NO_USER_STORAGE: "no keys loaded in user storage",
    INVALID_INPUT: "invalid input data",
    PIN_BLOCK_INVALID: "PIN block does not contain valid values",
    PIN_BLOCK_FORMAT: "invalid PIN block format code",
    PIN_LENGTH: "PIN is fewer than 4 or more than 12 digits",
    INVALID_KEY_SCHEME: "invalid key scheme",
    INCOMPATIBLE_KEY_LENGTH: "incompatible key length",
    KEY_FUNCTION_NOT_PERMITTED: "key function not permitted",
    UNKNOWN_COMMAND: "command disabled or unknown",
    DATA_LENGTH: "data length error",
}


class HsmFault(Exception):
    """Raised inside a command handler: the command is answered with this error code and no fields."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code

    def __str__(self) -> str:
        return f"{self.code} {MEANINGS.get(self.code, 'error')}"
