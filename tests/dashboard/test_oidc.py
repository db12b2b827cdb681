"""Microsoft Entra ID sign-in, for real: ``streamlit run`` + headless Chromium + an OIDC stand-in.

The dashboard is started the way an operator shares it: ``.streamlit/secrets.toml`` in the
working directory holds ``[auth]`` (Streamlit's OIDC support, here pointing at the Entra-shaped
stand-in of ``oidc_standin.py``) and the ``[foundry_watch]`` allow-lists. Chromium clicks
"Sign in with Microsoft" and follows the real redirects (Streamlit → /authorize → /oauth2callback
→ token exchange → signed cookie → app); Authlib verifies the RS256 ``id_token`` against the
stand-in's JWKS. The tests assert what each person sees: nothing but the sign-in screen before
sign-in, the dashboard for an allowed user (by name, group claim or app role), a refusal with
no data for anyone else, and no sign-in at all from a token that fails verification.
"""

from __future__ import annotations

import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path

import pytest

from models.db import make_engine
from models.migrations import upgrade
from tests.dashboard.live_site import (
    chromium,
    elements,
    free_port,
    start_dashboard,
    stop_dashboard,
)
from tests.dashboard.oidc_standin import OidcStandIn, TestUser
from tests.dashboard.seed import (
    SeedWorld,
    build_world,
    seed,
    seed_budget,
    seed_runs,
    utc_now_minute,
)

SIGN_IN = "Sign in with Microsoft"
REFUSED = "not on this dashboard's allow-list"
ROLES_HINT = "carries no app roles"
DASHBOARD = ["Overview", "Per deployment"]

CLIENT_ID = str(uuid.uuid4())
CLIENT_SECRET = secrets.token_urlsafe(30)
FINOPS_GROUP = str(uuid.uuid4())  # Entra emits group object ids, not names
OTHER_GROUP = str(uuid.uuid4())
FINOPS_ROLE = "FinOps.Reader"  # an app role's value, as defined on the app registration

#: On ``allowed_users`` by email (different case), no groups claim.
ALICE = TestUser("alice@contoso.com", "Alice Oncall", email="Alice@Contoso.com")
#: Not on ``allowed_users`` and no email claim (common in Entra): allowed by her group (whose
#: id the operator pasted in upper case).
CAROL = TestUser(
    "carol@contoso.com",
    "Carol Finops",
    groups=(OTHER_GROUP, FINOPS_GROUP.upper(), *(str(uuid.uuid4()) for _ in range(3))),
)
#: Signed in by the tenant, but neither listed nor in an allowed group.
BOB = TestUser("bob@contoso.com", "Bob Outsider", email="bob@contoso.com", groups=(OTHER_GROUP,))
#: In 150 groups (Entra lists up to 200 in a token), one of them allowed.
ERIN = TestUser(
    "erin@contoso.com",
    "Erin Manygroups",
    email="erin@contoso.com",
    groups=(*(str(uuid.uuid4()) for _ in range(149)), FINOPS_GROUP),
)
#: In an allowed group, but in too many groups for Entra to list them in the token.
DAVE = TestUser("dave@contoso.com", "Dave Manygroups").with_group_overage()
#: No email, not on ``allowed_users``, in 200+ groups (no groups claim): let in by the app role
#: assigned to him (the ``roles`` claim has no overage).
FRANK = TestUser("frank@contoso.com", "Frank Approle", roles=(FINOPS_ROLE,)).with_group_overage()
#: Holds other app roles of the same app, one of them the allowed value in another case.
GRACE = TestUser(
    "grace@contoso.com",
    "Grace Otherrole",
    email="grace@contoso.com",
    groups=(OTHER_GROUP,),
    roles=("Billing.Reader", FINOPS_ROLE.lower()),
)

#: base URL of each started dashboard → its Streamlit log (why a token was refused).
LOGS: dict[str, Path] = {}


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def secrets_toml(
    standin: OidcStandIn,
    port: int,
    *,
    provider_name: str | None = "microsoft",
    metadata_url: str | None = None,
    allowed_users: Sequence[str] = (),
    allowed_groups: Sequence[str] = (),
    allowed_roles: Sequence[str] = (),
) -> str:
    """The secrets.toml an operator writes (README "Sharing the dashboard"), pointed at the
    stand-in instead of ``https://login.microsoftonline.com/<tenant-id>/v2.0``."""
    provider = (
        f'client_id = "{CLIENT_ID}"\n'
        f'client_secret = "{CLIENT_SECRET}"\n'
        f'server_metadata_url = "{metadata_url or standin.metadata_url}"\n'
    )
    text = (
        "[auth]\n"
        f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
        f'cookie_secret = "{secrets.token_urlsafe(32)}"\n'
    )
    text += f"\n[auth.{provider_name}]\n{provider}" if provider_name else provider
    text += (
        "\n[foundry_watch]\n"
        f"allowed_users = {_toml_list(allowed_users)}\n"
        f"allowed_groups = {_toml_list(allowed_groups)}\n"
        f"allowed_roles = {_toml_list(allowed_roles)}\n"
    )
    return text


@pytest.fixture(scope="module")
def standin() -> Iterator[OidcStandIn]:
    with OidcStandIn(CLIENT_ID, CLIENT_SECRET) as provider:
        yield provider


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, SeedWorld]:
    folder = tmp_path_factory.mktemp("oidc-store")
    url = f"sqlite:///{folder / 'store.db'}"
    engine = make_engine(url)
    upgrade(engine)
    now = utc_now_minute()
    world = build_world(now, 3, per_deployment=200, old_days=3)
    seed(engine, world)
    seed_runs(engine, now)
    seed_budget(engine, Decimal("400"))
    engine.dispose()
    return url, world


@pytest.fixture(scope="module")
def dashboard_factory(tmp_path_factory, standin, store):
    """``dashboard(**secrets_toml_options)`` → base URL of a dashboard configured that way."""
    url, _world = store
    started: list[subprocess.Popen] = []

    def start(extra_env: dict[str, str] | None = None, **options) -> str:
        folder = tmp_path_factory.mktemp("oidc-site")
        port = free_port()
        (folder / ".streamlit").mkdir()
        (folder / ".streamlit" / "secrets.toml").write_text(secrets_toml(standin, port, **options))
        base = f"http://127.0.0.1:{port}"
        LOGS[base] = folder / "streamlit.log"
        standin.redirect_uris.append(f"{base}/oauth2callback")  # the app registration
        started.append(start_dashboard(folder, url, port, extra_env))
        return base

    yield start
    for proc in started:
        stop_dashboard(proc)


@pytest.fixture(scope="module")
def site(dashboard_factory) -> str:
    """The shared dashboard: a named ``[auth.microsoft]`` provider and all three allow-lists."""
    return dashboard_factory(
        allowed_users=["alice@contoso.com"],
        allowed_groups=[FINOPS_GROUP],
        allowed_roles=[FINOPS_ROLE],
    )


@pytest.fixture
def browser(standin):
    """A fresh Chromium per test: no cookie from an earlier sign-in carries over."""
    driver = chromium()
    standin.forge = None
    yield driver
    driver.quit()
    standin.next_user = None
    standin.forge = None


def _body(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _wait_for(driver, texts: list[str], timeout: float = 60) -> str:
    """Wait until Streamlit has stopped running and every text is shown; return the text."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    body = ""
    while time.time() < deadline:
        try:
            running = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
            body = _body(driver)
        except WebDriverException:  # mid-navigation through the redirects
            time.sleep(0.3)
            continue
        if not running and all(t in body for t in texts):
            time.sleep(0.5)  # let a rerun triggered by the last message settle
            return _body(driver)
        time.sleep(0.3)
    missing = [t for t in texts if t not in body]
    raise AssertionError(f"never showed {missing} (at {driver.current_url}); body: {body[:800]!r}")


def _assert_no_data(driver, world: SeedWorld) -> None:
    """Nothing from the store is on the page: no navigation, table, chart or name."""
    from selenium.webdriver.common.by import By

    body = _body(driver)
    for selector in (
        '[data-testid="stSidebarNav"]',
        '[data-testid="stDataFrame"]',
        '[data-testid="stMetric"]',
        ".js-plotly-plot",
        '[data-testid="stException"]',
    ):
        assert not driver.find_elements(By.CSS_SELECTOR, selector), (selector, body[:800])
    names = [d["name"] for d in world.deployments] + [r["name"] for r in world.resources]
    leaked = [n for n in names if n in body]
    assert not leaked, leaked
    for text in ("Per deployment", "USD", "$", "Data may be out of date", "Collector health"):
        assert text not in body, (text, body[:800])
    for text in ("Page not found", "Traceback"):
        assert text not in body, (text, body[:800])


def _click(driver, label: str) -> None:
    from selenium.webdriver.common.by import By

    buttons = [
        b for b in driver.find_elements(By.CSS_SELECTOR, "button") if b.text.strip() == label
    ]
    assert buttons, f"no button {label!r}; body: {_body(driver)[:800]!r}"
    buttons[0].click()


def _sign_in(driver, base: str, standin: OidcStandIn, user: TestUser, world: SeedWorld) -> int:
    """Open the dashboard signed out, check it shows nothing but the sign-in screen, click
    "Sign in with Microsoft"; return how many token requests the stand-in had before."""
    standin.next_user = user
    driver.get(base)
    body = _wait_for(driver, [SIGN_IN])
    assert "sign in to continue" in body
    _assert_no_data(driver, world)
    before = len(standin.token_requests)
    _click(driver, SIGN_IN)
    return before


def _wait_back_home(driver, base: str, timeout: float = 30) -> None:
    """Wait until the redirects have landed back on the dashboard's own origin."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        url = driver.current_url
        if url.startswith(base) and "/oauth2callback" not in url and "/auth/" not in url:
            return
        time.sleep(0.2)
    raise AssertionError(f"stuck at {driver.current_url}")


def test_allowed_user_signs_in_and_sees_the_dashboard(browser, site, standin, store) -> None:
    _url, world = store
    before = _sign_in(browser, site, standin, ALICE, world)
    body = _wait_for(browser, ["Signed in as Alice@Contoso.com", *DASHBOARD, "Spend month to date"])
    assert REFUSED not in body
    assert "Spend month to date" in body
    assert elements(browser, '[data-testid="stMetric"]')
    assert elements(browser, '[data-testid="stDataFrame"]')
    # the flow Streamlit ran against the stand-in is the code flow Entra expects
    request = standin.authorize_requests[-1]
    assert request["client_id"] == CLIENT_ID
    assert request["response_type"] == "code"
    assert request["redirect_uri"] == f"{site}/oauth2callback"
    assert set(request["scope"].split()) >= {"openid", "profile", "email"}
    assert request["nonce"] and request["state"]
    assert len(standin.token_requests) == before + 1
    assert standin.token_requests[-1]["grant_type"] == "authorization_code"
    # signed in is sticky (cookie): another page opened directly shows its data
    browser.get(f"{site}/spend")
    body = _wait_for(browser, ["Signed in as Alice@Contoso.com", "Reconciliation gap"])
    assert SIGN_IN not in body


def test_group_claim_lets_a_user_in(browser, site, standin, store) -> None:
    """Carol is not on allowed_users and her token has no email claim: the groups claim
    (Entra group object ids, any case) lets her in, and the sidebar names her by her UPN."""
    _url, world = store
    _sign_in(browser, site, standin, CAROL, world)
    body = _wait_for(browser, ["Signed in as carol@contoso.com", *DASHBOARD])
    assert REFUSED not in body


def test_a_user_in_many_groups_needs_the_longer_header_limit(
    browser, dashboard_factory, standin, store
) -> None:
    """Streamlit keeps every id_token claim and both tokens in cookies; with 150 group ids the
    Cookie header (~15 KB, split in chunks) is longer than the 8 KB header line the websocket
    library accepts by default, and the app page stays blank. README documents the two ways
    out: a groups claim limited to the groups assigned to the application, or
    WEBSOCKETS_MAX_LINE_LENGTH=16384 in the dashboard's environment, tested here."""
    _url, world = store
    base = dashboard_factory(
        extra_env={"WEBSOCKETS_MAX_LINE_LENGTH": "16384"},
        allowed_users=["alice@contoso.com"],
        allowed_groups=[FINOPS_GROUP],
    )
    _sign_in(browser, base, standin, ERIN, world)
    body = _wait_for(browser, ["Signed in as erin@contoso.com", *DASHBOARD])
    assert REFUSED not in body
    cookies = {c["name"]: len(c["value"]) for c in browser.get_cookies()}
    assert "_streamlit_user_2" in cookies, cookies  # Streamlit's chunked user cookie
    assert sum(len(k) + v + 2 for k, v in cookies.items()) > 8192, cookies


def test_group_overage_is_refused_with_the_reason(browser, site, standin, store) -> None:
    """Entra sends no groups claim for a member of 200+ groups: Dave is refused (fail closed),
    and told why instead of being left to guess."""
    _url, world = store
    _sign_in(browser, site, standin, DAVE, world)
    body = _wait_for(browser, [REFUSED, "dave@contoso.com", "too many groups"])
    assert "Signed in as" not in body
    _assert_no_data(browser, world)


def test_user_not_on_the_allow_list_is_refused(browser, site, standin, store) -> None:
    _url, world = store
    before = _sign_in(browser, site, standin, BOB, world)
    body = _wait_for(browser, [REFUSED, "bob@contoso.com", "Sign out"])
    assert len(standin.token_requests) == before + 1  # he did sign in at the tenant
    assert "Signed in as" not in body
    assert ROLES_HINT in body  # his token has no roles claim: told who can assign one
    assert FINOPS_ROLE not in body  # ...but not which role would do
    _assert_no_data(browser, world)
    # every page refuses him, not only the landing one
    browser.get(f"{site}/lookup")
    _wait_for(browser, [REFUSED])
    _assert_no_data(browser, world)
    # signing out goes through Entra's end_session_endpoint and back to the sign-in screen
    _click(browser, "Sign out")
    _wait_back_home(browser, site)
    _wait_for(browser, [SIGN_IN])
    assert standin.logout_requests[-1]["post_logout_redirect_uri"] == f"{site}/oauth2callback"
    _assert_no_data(browser, world)


def test_an_app_role_lets_a_user_in_and_another_role_does_not(
    browser, site, standin, store
) -> None:
    """Frank has no email claim, is not on allowed_users and is in too many groups for a groups
    claim, but his token's ``roles`` claim holds the allowed app role: he sees the dashboard.
    Grace's token holds other roles of the same app (one the allowed value in another case):
    she is refused, without the no-roles hint and without being told which role would do."""
    _url, world = store
    _sign_in(browser, site, standin, FRANK, world)
    body = _wait_for(browser, ["Signed in as frank@contoso.com", *DASHBOARD, "Spend month to date"])
    assert REFUSED not in body
    assert "Spend month to date" in body
    _click(browser, "Sign out")
    _wait_back_home(browser, site)
    _wait_for(browser, [SIGN_IN])

    _sign_in(browser, site, standin, GRACE, world)
    body = _wait_for(browser, [REFUSED, "grace@contoso.com", "Sign out"])
    assert "Signed in as" not in body
    assert ROLES_HINT not in body
    assert FINOPS_ROLE not in body
    _assert_no_data(browser, world)


def test_sign_out_returns_to_the_sign_in_screen(browser, site, standin, store) -> None:
    _url, world = store
    _sign_in(browser, site, standin, ALICE, world)
    _wait_for(browser, ["Signed in as Alice@Contoso.com", *DASHBOARD])
    _click(browser, "Sign out")
    _wait_back_home(browser, site)
    _wait_for(browser, [SIGN_IN])
    _assert_no_data(browser, world)
    assert standin.logout_requests[-1]["client_id"] == CLIENT_ID
    browser.get(f"{site}/spend")  # the cookie is gone: a direct link shows no data either
    _wait_for(browser, [SIGN_IN])
    _assert_no_data(browser, world)


#: forgery → what Authlib (joserfc) says when it refuses the token, in Streamlit's log. A foreign
#: audience surfaces as the missing ``azp`` that OIDC requires when ``aud`` is not the client.
REFUSAL = {
    "foreign-key": "BadSignatureError",
    "audience": "Missing claim: 'azp'",
    "issuer": "Invalid claim: 'iss'",
    "expired": "ExpiredTokenError",
    "nonce": "Invalid claim: 'nonce'",
}


def _log_size(base: str) -> int:
    return len(LOGS[base].read_text())


def _log_says(base: str, text: str, since: int = 0, timeout: float = 10) -> bool:
    """Whether the dashboard's log shows ``text`` after its first ``since`` characters."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in LOGS[base].read_text()[since:]:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("forgery", list(REFUSAL))
def test_a_token_that_fails_verification_signs_nobody_in(
    browser, site, standin, store, forgery
) -> None:
    """An id_token signed by another key, for another app, from another tenant, expired, or
    replayed with another nonce: Streamlit (Authlib) rejects it and Alice stays signed out."""
    _url, world = store
    standin.forge = forgery
    logged = _log_size(site)
    before = _sign_in(browser, site, standin, ALICE, world)
    # the token endpoint is reached, the token refused, and the browser lands signed out
    deadline = time.time() + 30
    while len(standin.token_requests) == before and time.time() < deadline:
        time.sleep(0.2)
    assert len(standin.token_requests) == before + 1, "the code was never exchanged"
    _wait_back_home(browser, site)
    body = _wait_for(browser, [SIGN_IN])
    assert "Signed in as" not in body
    _assert_no_data(browser, world)
    assert _log_says(site, REFUSAL[forgery], logged), LOGS[site].read_text()[logged:][-3000:]


@pytest.mark.parametrize("provider_name", [None, "entra"])
def test_other_secrets_layouts_sign_in_too(
    browser, dashboard_factory, standin, store, provider_name
) -> None:
    """client_id & co. directly under ``[auth]`` (Streamlit's unnamed default provider) or in
    a section named other than ``[auth.microsoft]``, with no allow-list: anyone the tenant
    signs in is let in."""
    _url, world = store
    base = dashboard_factory(provider_name=provider_name)
    _sign_in(browser, base, standin, BOB, world)
    body = _wait_for(browser, ["Signed in as bob@contoso.com", *DASHBOARD])
    assert REFUSED not in body


def test_the_common_endpoint_signs_nobody_in(browser, dashboard_factory, standin, store) -> None:
    """``/common/v2.0`` (any tenant, personal accounts too) publishes the issuer as a
    ``{tenantid}`` template, so Streamlit refuses every token it signs: the README asks for the
    tenant id in the metadata URL, and this pins that a wrong choice fails closed."""
    _url, world = store
    base = dashboard_factory(metadata_url=standin.common_metadata_url)
    before = _sign_in(browser, base, standin, ALICE, world)
    deadline = time.time() + 30
    while len(standin.token_requests) == before and time.time() < deadline:
        time.sleep(0.2)
    assert standin.authorize_requests[-1]["redirect_uri"] == f"{base}/oauth2callback"
    assert len(standin.token_requests) == before + 1, "the code was never exchanged"
    _wait_back_home(browser, base)
    body = _wait_for(browser, [SIGN_IN])
    assert "Signed in as" not in body
    _assert_no_data(browser, world)
    assert _log_says(base, "Invalid claim: 'iss'"), LOGS[base].read_text()[-3000:]


def test_gate_helpers_without_a_browser() -> None:
    """The pieces of ``dashboard.auth`` the browser tests rely on, case by case."""
    from dashboard.auth import allowed, display_name, group_overage, provider

    flat = {"client_id": "x", "client_secret": "y", "server_metadata_url": "z"}
    section = {"client_id": "x", "client_secret": "y", "server_metadata_url": "z"}
    assert provider({"redirect_uri": "r", **flat, "client_kwargs": {"prompt": "login"}}) is None
    assert provider({"redirect_uri": "r", "microsoft": section}) == "microsoft"
    assert provider({"redirect_uri": "r", "entra": section}) == "entra"
    assert provider({"redirect_uri": "r", "google": section, "microsoft": section}) == "microsoft"
    assert provider({"redirect_uri": "r", "a": section, "b": section}) is None
    # a bare string is one name, not a set of characters
    assert allowed({"email": "a@b.com"}, {"allowed_users": "A@B.com"})
    assert not allowed({"email": "a"}, {"allowed_users": "a@b.com"})
    assert allowed({"groups": [FINOPS_GROUP]}, {"allowed_groups": [FINOPS_GROUP.upper()]})
    assert not allowed(dict(DAVE.claims()), {"allowed_groups": [FINOPS_GROUP]})
    assert group_overage(dict(DAVE.claims())) and not group_overage(dict(CAROL.claims()))
    assert display_name(dict(CAROL.claims())) == "carol@contoso.com"  # no email claim
    assert display_name({"email": "Alice@Contoso.com", "name": "Alice"}) == "Alice@Contoso.com"
    assert display_name({}) == "this account"


def test_app_role_allow_list_without_a_browser() -> None:
    """``allowed_roles`` against the ``roles`` claim (app role values), case by case."""
    from dashboard.auth import allowed, group_overage

    roles = {"allowed_roles": [FINOPS_ROLE]}
    assert allowed({"roles": ["Billing.Reader", FINOPS_ROLE]}, roles)
    assert not allowed({"roles": ["Billing.Reader"]}, roles)
    assert not allowed({"roles": [FINOPS_ROLE.lower()]}, roles)  # values match exactly
    assert not allowed({"roles": [FINOPS_ROLE.upper()]}, roles)
    # a bare string is one role value, not a set of characters
    assert allowed({"roles": [FINOPS_ROLE]}, {"allowed_roles": FINOPS_ROLE})
    assert not allowed({"roles": ["F", "i"]}, {"allowed_roles": FINOPS_ROLE})
    # no roles claim at all (no role assigned): refused, even with an empty name claim around
    assert not allowed(dict(BOB.claims()), roles)
    assert not allowed({"preferred_username": "", "roles": []}, roles)
    assert "roles" not in BOB.claims()  # the stand-in emits the claim only when given roles
    assert GRACE.claims()["roles"] == ["Billing.Reader", "finops.reader"]
    # any one list lets a user in: name, group or role
    policy = {
        "allowed_users": ["alice@contoso.com"],
        "allowed_groups": [FINOPS_GROUP],
        "allowed_roles": [FINOPS_ROLE],
    }
    assert allowed(dict(ALICE.claims()), policy)  # by name, no roles claim
    assert allowed(dict(CAROL.claims()), policy)  # by group, no roles claim
    assert not allowed(dict(BOB.claims()), policy)
    assert not allowed(dict(GRACE.claims()), policy)
    # 200+ groups: no groups claim, but the role still lets Frank in (Dave has no role)
    assert group_overage(dict(FRANK.claims())) and "groups" not in FRANK.claims()
    assert allowed(dict(FRANK.claims()), policy)
    assert not allowed(dict(DAVE.claims()), policy)
    # an empty allowed_roles is no list: with no other list, everyone passes
    assert allowed({"roles": ["Billing.Reader"]}, {"allowed_roles": []})
    assert allowed({}, {"allowed_users": [], "allowed_groups": [], "allowed_roles": []})
