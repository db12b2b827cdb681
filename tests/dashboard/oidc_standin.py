"""A local stand-in for Microsoft Entra ID's v2.0 OpenID Connect endpoints, for tests.

Streamlit's ``st.login`` talks to an identity provider over real HTTP (discovery document,
authorization redirect, code-for-token exchange, JWKS) and verifies the ``id_token`` it gets
back. To test the dashboard's sign-in end to end without a tenant, this serves the same paths
and document shape as ``https://login.microsoftonline.com/<tenant>/v2.0`` on 127.0.0.1 and
plays the authorization-code flow the way Entra does:

- ``/authorize`` refuses an unknown ``client_id`` or an unregistered ``redirect_uri`` (Entra's
  AADSTS700016 / AADSTS50011), otherwise signs in whichever ``TestUser`` the test chose
  (``next_user``) without a login page, and redirects back with ``code`` and ``state``;
- ``/token`` accepts the client secret as HTTP Basic or in the form (both are in Entra's
  ``token_endpoint_auth_methods_supported``), checks the code is fresh, single use and bound to
  the same ``redirect_uri`` (and PKCE verifier when a challenge was sent), then returns an
  RS256 ``id_token`` with Entra v2.0 claims (``ver``, ``tid``, ``oid``, ``preferred_username``,
  ``groups``, ``roles``...) and the ``nonce`` from the authorization request;
- ``/discovery/v2.0/keys`` publishes the public key (with ``kid``), ``/logout`` honours
  ``post_logout_redirect_uri``.

Tokens are signed with ``cryptography`` directly (not with the library that verifies them), so
the test checks Streamlit/Authlib's verification against an independent implementation.
``forge`` switches on one deliberate defect per flow (foreign signing key, wrong audience,
wrong issuer, expired, wrong nonce) so tests can show that such a token signs nobody in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

Forgery = Literal["foreign-key", "audience", "issuer", "expired", "nonce"]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass(frozen=True)
class TestUser:
    """Who the stand-in signs in; the claims Entra puts in a v2.0 id_token for a work account.

    ``email`` is optional in Entra (only when the account has a mailbox and the optional claim
    is configured); ``preferred_username`` (the UPN) is always there. ``groups`` holds group
    object ids and is only emitted when the app registration asks for the groups claim.
    ``roles`` holds the *values* of the app roles the user is assigned on the app registration
    (directly or through a group), e.g. ``"FinOps.Reader"``; Entra leaves the claim out when
    there are none.
    """

    __test__ = False  # not a pytest test class

    preferred_username: str
    name: str
    email: str | None = None
    groups: tuple[str, ...] | None = None
    roles: tuple[str, ...] | None = None
    oid: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: Anything else to put in the token, e.g. Entra's group overage claims.
    extra: tuple[tuple[str, Any], ...] = ()

    def claims(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "preferred_username": self.preferred_username,
            "name": self.name,
            "oid": self.oid,
        }
        if self.email is not None:
            out["email"] = self.email
        if self.groups is not None:
            out["groups"] = list(self.groups)
        if self.roles is not None:
            out["roles"] = list(self.roles)
        out.update(self.extra)
        return out

    def with_group_overage(self) -> TestUser:
        """The same user as Entra sends them when they are in more than 200 groups: no
        ``groups`` claim, a pointer to Microsoft Graph instead (app roles are still sent)."""
        graph = f"https://graph.microsoft.com/v1.0/users/{self.oid}/getMemberObjects"
        overage = (
            ("_claim_names", {"groups": "src1"}),
            ("_claim_sources", {"src1": {"endpoint": graph}}),
        )
        return replace(self, groups=None, extra=self.extra + overage)


class _RsaKey:
    """An RSA signing key published as a JWK."""

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = _b64url(secrets.token_bytes(12))

    def jwk(self) -> dict[str, str]:
        numbers = self.private.public_key().public_numbers()
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "alg": "RS256",
            "n": _uint(numbers.n),
            "e": _uint(numbers.e),
        }

    def sign_jwt(self, claims: dict[str, Any], kid: str | None = None) -> str:
        header = {"typ": "JWT", "alg": "RS256", "kid": kid or self.kid}
        head = _b64url(json.dumps(header, separators=(",", ":")).encode())
        body = _b64url(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{head}.{body}".encode("ascii")
        signature = self.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{head}.{body}.{_b64url(signature)}"


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    nonce: str | None
    user: TestUser
    scope: str
    code_challenge: str | None
    issued: float


class OidcStandIn:
    """Entra-shaped OIDC provider on ``http://127.0.0.1:<port>/<tenant_id>/v2.0``.

    Use as a context manager (or ``start()`` / ``stop()``). Set ``next_user`` before a sign-in;
    ``authorize_requests`` and ``token_requests`` record what the relying party sent (the
    client secret is never recorded).
    """

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        redirect_uris: list[str] | None = None,
        tenant_id: str | None = None,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris: list[str] = list(redirect_uris or [])
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.next_user: TestUser | None = None
        self.forge: Forgery | None = None
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self.logout_requests: list[dict[str, str]] = []
        self._key = _RsaKey()
        self._foreign_key = _RsaKey()
        self._grants: dict[str, _Grant] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> OidcStandIn:
        handler = type("_Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="oidc-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> OidcStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        if self._server is None:
            raise RuntimeError("stand-in not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def authority(self) -> str:
        """``https://login.microsoftonline.com/<tenant>`` in Entra."""
        return f"{self.origin}/{self.tenant_id}"

    @property
    def issuer(self) -> str:
        return f"{self.authority}/v2.0"

    @property
    def metadata_url(self) -> str:
        """What goes in ``server_metadata_url`` (same path shape as Entra's)."""
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def common_metadata_url(self) -> str:
        """The multi-tenant ``/common`` document, whose issuer is a ``{tenantid}`` template."""
        return f"{self.origin}/common/v2.0/.well-known/openid-configuration"

    def metadata(self, tenant: str | None = None) -> dict[str, Any]:
        """Entra's v2.0 discovery document, pointing at this server (no PKCE advertised,
        exactly like Entra's, so Streamlit runs the plain code flow it runs against Entra).

        For ``tenant="common"`` the issuer is the literal template
        ``.../{tenantid}/v2.0``, as Entra publishes it: a client that checks ``iss`` against
        the document (Authlib does) refuses every token, so ``/common`` cannot be used.
        """
        a = f"{self.origin}/{tenant}" if tenant else self.authority
        issuer = f"{self.origin}/{{tenantid}}/v2.0" if tenant == "common" else self.issuer
        return {
            "token_endpoint": f"{a}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{a}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": issuer,
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self.origin}/oidc/userinfo",
            "authorization_endpoint": f"{a}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{a}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{a}/oauth2/v2.0/logout",
            "claims_supported": [
                "sub",
                "iss",
                "cloud_instance_name",
                "cloud_instance_host_name",
                "cloud_graph_host_name",
                "msgraph_host",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "acr",
                "nonce",
                "preferred_username",
                "name",
                "tid",
                "ver",
                "at_hash",
                "c_hash",
                "email",
            ],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }

    # -- protocol ----------------------------------------------------------------------------

    def authorize(self, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """Auto-approve ``next_user``: (status, headers, body)."""
        self.authorize_requests.append(dict(params))
        redirect_uri = params.get("redirect_uri", "")
        if params.get("client_id") != self.client_id:
            return _page(400, "AADSTS700016: application not found in the directory")
        if redirect_uri not in self.redirect_uris:
            return _page(400, "AADSTS50011: the redirect URI does not match the registered")

        def back(**query: str) -> tuple[int, dict[str, str], bytes]:
            if "state" in params:
                query["state"] = params["state"]
            sep = "&" if urlsplit(redirect_uri).query else "?"
            return 302, {"Location": f"{redirect_uri}{sep}{urlencode(query)}"}, b""

        if params.get("response_type") != "code":
            return back(error="unsupported_response_type", error_description="code only")
        if "openid" not in params.get("scope", "").split():
            return back(error="invalid_scope", error_description="openid scope required")
        user = self.next_user
        if user is None:
            return back(error="access_denied", error_description="no test user chosen")
        code = secrets.token_urlsafe(32)
        with self._lock:
            self._grants[code] = _Grant(
                client_id=self.client_id,
                redirect_uri=redirect_uri,
                nonce=params.get("nonce"),
                user=user,
                scope=params.get("scope", ""),
                code_challenge=params.get("code_challenge"),
                issued=time.time(),
            )
        return back(code=code, session_state=str(uuid.uuid4()))

    def token(
        self, form: dict[str, str], authorization: str | None
    ) -> tuple[int, dict[str, str], bytes]:
        """Exchange an authorization code for tokens."""
        self.token_requests.append({k: v for k, v in form.items() if k != "client_secret"})
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):
            raw = base64.b64decode(authorization[6:]).decode()
            client_id, _, client_secret = raw.partition(":")
            client_id, client_secret = unquote_plus(client_id), unquote_plus(client_secret)
        if client_id != self.client_id or not secrets.compare_digest(
            client_secret or "", self.client_secret
        ):
            return _json(401, {"error": "invalid_client", "error_description": "AADSTS7000215"})
        if form.get("grant_type") != "authorization_code":
            return _json(400, {"error": "unsupported_grant_type"})
        with self._lock:
            grant = self._grants.pop(form.get("code", ""), None)
        if grant is None or time.time() - grant.issued > 600:
            return _json(400, {"error": "invalid_grant", "error_description": "AADSTS70008"})
        if form.get("redirect_uri") != grant.redirect_uri:
            return _json(400, {"error": "invalid_grant", "error_description": "AADSTS50148"})
        if grant.code_challenge is not None:
            verifier = form.get("code_verifier", "")
            digest = _b64url(hashlib.sha256(verifier.encode()).digest())
            if digest != grant.code_challenge:
                return _json(400, {"error": "invalid_grant", "error_description": "PKCE"})
        return _json(
            200,
            {
                "token_type": "Bearer",
                "scope": grant.scope,
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": self.access_token(grant),
                "id_token": self.id_token(grant),
            },
        )

    def id_token(self, grant: _Grant) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": grant.client_id,
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "sub": _b64url(hashlib.sha256(f"{grant.user.oid}:{grant.client_id}".encode()).digest()),
            "tid": self.tenant_id,
            "uti": _b64url(secrets.token_bytes(16)),
            "ver": "2.0",
            **grant.user.claims(),
        }
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        key, kid = self._key, None
        match self.forge:
            case "foreign-key":
                key, kid = self._foreign_key, self._key.kid  # right kid, wrong signature
            case "audience":
                claims["aud"] = str(uuid.uuid4())
            case "issuer":
                claims["iss"] = f"https://login.microsoftonline.com/{uuid.uuid4()}/v2.0"
            case "expired":
                claims.update(iat=now - 7200, nbf=now - 7200, exp=now - 3600)
            case "nonce":
                claims["nonce"] = secrets.token_urlsafe(16)
        return key.sign_jwt(claims, kid=kid)

    def access_token(self, grant: _Grant) -> str:
        """A Microsoft Graph access token of the size Entra issues for ``openid email profile``
        (about 2 KB: Streamlit keeps it in a cookie, so its size counts against header limits).
        Its content is opaque to the relying party, which must not validate it."""
        now = int(time.time())
        user = grant.user
        claims: dict[str, Any] = {
            "aud": "00000003-0000-0000-c000-000000000000",
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "acct": 0,
            "acr": "1",
            "aio": _b64url(secrets.token_bytes(90)),
            "amr": ["pwd", "mfa"],
            "app_displayname": "foundry-watch dashboard",
            "appid": grant.client_id,
            "appidacr": "1",
            "idtyp": "user",
            "ipaddr": "127.0.0.1",
            "name": user.name,
            "oid": user.oid,
            "platf": "3",
            "puid": secrets.token_hex(8).upper(),
            "rh": _b64url(secrets.token_bytes(40)),
            "scp": "email openid profile User.Read",
            "sid": str(uuid.uuid4()),
            "signin_state": ["kmsi"],
            "sub": _b64url(secrets.token_bytes(32)),
            "tenant_region_scope": "EU",
            "tid": self.tenant_id,
            "unique_name": user.preferred_username,
            "upn": user.preferred_username,
            "uti": _b64url(secrets.token_bytes(16)),
            "ver": "1.0",
            "wids": ["b79fbf4d-3ef9-4689-8143-76b194e85509"],
            "xms_ftd": _b64url(secrets.token_bytes(48)),
            "xms_idrel": "1 20",
            "xms_st": {"sub": _b64url(secrets.token_bytes(32))},
            "xms_tcdt": now - 86400 * 900,
        }
        return self._key.sign_jwt(claims)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self._key.jwk()]}

    def logout(self, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        self.logout_requests.append({k: v for k, v in params.items() if k != "id_token_hint"})
        target = params.get("post_logout_redirect_uri")
        if target and target in self.redirect_uris:
            return 302, {"Location": target}, b""
        return _page(200, "You signed out of your account.")


def _json(status: int, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store"}
    return status, headers, json.dumps(body).encode()


def _page(status: int, text: str) -> tuple[int, dict[str, str], bytes]:
    body = f"<!doctype html><title>Sign in</title><p>{text}</p>".encode()
    return status, {"Content-Type": "text/html; charset=utf-8"}, body


class _Handler(BaseHTTPRequestHandler):
    standin: OidcStandIn

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the query strings hold codes and states."""

    def _send(self, result: tuple[int, dict[str, str], bytes]) -> None:
        status, headers, body = result
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self) -> tuple[str | None, str, dict[str, str]]:
        """(tenant segment: the tenant id, "common" or None if neither; rest; query)."""
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        tenant, _, rest = parts.path.partition("/")[2].partition("/")
        if tenant not in (self.standin.tenant_id, "common"):
            return None, parts.path, query
        return tenant, "/" + rest, query

    def do_GET(self) -> None:
        s = self.standin
        tenant, path, query = self._route()
        if tenant is None:
            self._send(_json(404, {"error": "not_found"}))
        elif path == "/v2.0/.well-known/openid-configuration":
            self._send(_json(200, s.metadata("common" if tenant == "common" else None)))
        elif path == "/oauth2/v2.0/authorize":
            self._send(s.authorize(query))
        elif path == "/discovery/v2.0/keys":
            self._send(_json(200, s.jwks()))
        elif path == "/oauth2/v2.0/logout":
            self._send(s.logout(query))
        else:
            self._send(_json(404, {"error": "not_found"}))

    def do_POST(self) -> None:
        _tenant, path, _query = self._route()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode()
        form = {k: v[0] for k, v in parse_qs(raw).items()}
        if path == "/oauth2/v2.0/token":
            self._send(self.standin.token(form, self.headers.get("Authorization")))
        else:
            self._send(_json(404, {"error": "not_found"}))
