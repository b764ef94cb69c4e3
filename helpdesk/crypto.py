"""Encryption at rest for token sets, client secrets and private keys (Fernet).

Several keys may be configured: the first encrypts, all decrypt, so keys can be rotated
without losing stored data. With no keys configured the key is derived from the secret
key with HKDF, so a deployment has one secret to manage.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import Flask, current_app

EXTENSION = "caredesk.vault"


class Vault:
    def __init__(self, keys: list[bytes]) -> None:
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        return self._fernet.decrypt(token).decode()

    def encrypt_optional(self, plaintext: str | None) -> bytes | None:
        return None if plaintext is None else self.encrypt(plaintext)

    def decrypt_optional(self, token: bytes | None) -> str | None:
        return None if token is None else self.decrypt(token)


def derive_key(secret: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"caredesk-at-rest", info=b"fernet")
    return base64.urlsafe_b64encode(hkdf.derive(secret.encode()))


def init_app(app: Flask) -> None:
    configured = app.config.get("ENCRYPTION_KEYS")
    if configured:
        keys = [k.strip().encode() for k in str(configured).split(",") if k.strip()]
    else:
        keys = [derive_key(app.config["SECRET_KEY"])]
    app.extensions[EXTENSION] = Vault(keys)


def get_vault(app: Flask | None = None) -> Vault:
    vault: Vault = (app or current_app).extensions[EXTENSION]
    return vault
