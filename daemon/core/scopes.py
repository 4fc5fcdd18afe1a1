"""The scopes a token (or, later, an identity) can hold: read, write, admin."""

SCOPES = ("read", "write", "admin")
