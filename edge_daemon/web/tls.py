"""The device page's HTTPS context, from web.tls. Loaded by the page when it starts and by `emotion-edge check`
(check.py), so that `check` never says ok for certificate files the page then refuses."""

from __future__ import annotations

import ssl

from ..config import Config
from ..errors import UserError


def web_tls_context(config: Config) -> ssl.SSLContext | None:
    """The device page's HTTPS context from web.tls (None: plain HTTP); UserError when the files do not load."""
    tls = config.web.tls
    if not tls.cert_file:
        return None
    cert, key = config.path(tls.cert_file), config.path(tls.key_file or "")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(
            f"web.tls: cannot load the certificate {cert} with key {key} ({getattr(exc, 'strerror', None) or exc}); "
            "both must be PEM files readable by this user"
        ) from None
    return ctx
