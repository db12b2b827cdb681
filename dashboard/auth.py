"""Sign-in gate: off on localhost, Microsoft Entra ID (OIDC via ``st.login``) when shared.

Spend and request data are sensitive. The dashboard binds to 127.0.0.1 by default; whoever
exposes it configures ``[auth]`` in ``.streamlit/secrets.toml`` (Streamlit's OIDC support,
pointing at the Entra tenant's metadata URL), and optionally an allow-list:

    [foundry_watch]
    allowed_users = ["alice@contoso.com"]          # email / preferred_username, any case
    allowed_groups = ["<Entra group object id>"]   # needs the "groups" claim on the app
    allowed_roles = ["FinOps.Reader"]              # app role values, exact case

With ``[auth]`` present, nothing but the sign-in button is drawn until the user is signed in
and allowed: on any one list (users OR groups OR roles). Without allow-lists, any user the
tenant signs in is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st


def auth_config() -> Mapping[str, Any] | None:
    """The ``[auth]`` secrets section, or None when sign-in is not configured."""
    if not st.secrets.load_if_toml_exists():
        return None
    return st.secrets.get("auth")


def provider(config: Mapping[str, Any]) -> str | None:
    """``st.login`` provider: ``[auth.microsoft]`` if present, else the one named provider
    section (``[auth.entra]``...), else None for the unnamed default (keys under ``[auth]``).

    Calling ``st.login()`` with no name while the credentials sit in a section named anything
    but "microsoft" made Streamlit look for a default provider and fail at the click.
    """
    named = [
        name
        for name, section in config.items()
        if isinstance(section, Mapping) and "client_id" in section
    ]
    if "microsoft" in named:
        return "microsoft"
    if len(named) == 1 and "client_id" not in config:
        return named[0]
    return None


def _names(value: Any) -> list[str]:
    """A TOML list, or one bare string (``allowed_users = "a@b.com"``), as a list of strings.

    A bare string used to be iterated character by character, refusing everybody.
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def group_overage(user: Mapping[str, Any]) -> bool:
    """Entra left the groups out of the token: the user is in more groups than a token holds
    (200), and ``_claim_names`` points at Microsoft Graph instead."""
    claim_names = user.get("_claim_names")
    return isinstance(claim_names, Mapping) and "groups" in claim_names


def display_name(user: Mapping[str, Any]) -> str:
    """The sign-in name the allow-list matches: email, else the UPN (Entra often sends no
    ``email`` claim: accounts without a mailbox), else the display name."""
    for key in ("email", "preferred_username", "upn", "name"):
        if user.get(key):
            return str(user[key])
    return "this account"


def allowed(user: Mapping[str, Any], policy: Mapping[str, Any]) -> bool:
    """Whether a signed-in user passes the allow-lists: on any one of them (none configured =
    everyone).

    Names and group object ids compare case-insensitively (both are case-insensitive in Entra).
    App roles compare exactly: see ``_role_values``.
    """
    users = {u.lower() for u in _names(policy.get("allowed_users"))}
    groups = {g.lower() for g in _names(policy.get("allowed_groups"))}
    roles = set(_names(policy.get("allowed_roles")))
    if not users and not groups and not roles:
        return True
    names = {str(user.get(k, "")).lower() for k in ("email", "preferred_username", "upn")}
    if users & (names - {""}):
        return True
    if roles & _role_values(user):
        return True
    return bool(groups & {g.lower() for g in _names(user.get("groups"))})


def _role_values(user: Mapping[str, Any]) -> set[str]:
    """The app role *values* in the token's ``roles`` claim, as Entra wrote them.

    Microsoft identity platform, "Add app roles to your application and receive them in the
    token": when a user signs in, Entra emits a ``roles`` claim with each app role of the app
    registration that the user was granted, directly or through a group they are a direct
    member of; the Graph ``appRole.value`` reference describes that value as the string
    included in the ``roles`` claim of ID tokens and access tokens (up to 120 characters, no
    spaces). Unlike the groups claim, the claim has no 200-entry overage.

    The docs define the value as an exact string and never call it case-insensitive, so it is
    matched exactly: a mis-cased ``allowed_roles`` entry refuses (visible, fixed in a minute)
    rather than admitting anyone on a role the owner did not define.
    """
    return {r for r in _names(user.get("roles")) if r}


def gate() -> bool:
    """Draw the sign-in / refusal screen and return False, or return True to go on."""
    config = auth_config()
    if config is None:
        return True
    if not st.user.get("is_logged_in", False):
        st.title("foundry-watch")
        st.write("This dashboard shows spend and request data; sign in to continue.")
        st.button(
            "Sign in with Microsoft",
            on_click=st.login,
            args=(provider(config),) if provider(config) else (),
            type="primary",
        )
        return False
    policy = st.secrets.get("foundry_watch", {})
    user = {k: st.user[k] for k in st.user if k != "is_logged_in"}
    if not allowed(user, policy):
        who = display_name(user)
        st.error(f"{who} is signed in but not on this dashboard's allow-list. Ask its owner.")
        if policy.get("allowed_groups") and group_overage(user):
            st.info(
                "Your account is in too many groups for Entra ID to list them in the sign-in "
                "token, so group membership could not be checked. The dashboard's owner can "
                "set the app registration's groups claim to \"Groups assigned to the "
                'application" or add you to allowed_users.'
            )
        if _names(policy.get("allowed_roles")) and "roles" not in user:
            # no role names here: the allow-list is the owner's configuration, not the user's
            st.info(
                "Your sign-in token carries no app roles for this dashboard. Its owner can "
                "assign you one in the Microsoft Entra admin center (Enterprise applications > "
                "this dashboard's application > Users and groups)."
            )
        st.button("Sign out", on_click=st.logout)
        return False
    with st.sidebar:
        st.caption(f"Signed in as {display_name(user)}")
        st.button("Sign out", on_click=st.logout, key="fw_logout")
    return True
