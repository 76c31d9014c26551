"""Provider presets: plain data that fills in an account's defaults.

Every fact carries its source. A preset's URLs may hold `{tenant}` (the account's
`tenant` key, default `default_tenant`). Adding a provider is a record here and a
test against a loopback fake shaped like its documented requests and answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from freshtoken.model import ClientAuth


@dataclass(frozen=True, slots=True)
class Preset:
    token_url: str
    authorize_url: str | None
    client_auth: ClientAuth
    refresh_token_lifetime: int | None  # seconds, when the provider documents one
    revocation_url: str | None = None  # an RFC 7009 endpoint, used by `freshtoken logout`
    device_authorization_url: str | None = None  # RFC 8628 §3.1
    device_login: bool = False  # `login` uses the device flow unless told --no-device
    default_tenant: str | None = None  # fills {tenant} in the URLs; only such presets accept a `tenant` key
    added_scopes: tuple[str, ...] = ()  # always requested (appended to the account's scopes when missing)
    authorize_params: tuple[tuple[str, str], ...] = ()  # extra authorization-request parameters
    device_refused_scopes: tuple[str, ...] = ()  # scopes the provider's device flow cannot grant
    login_note: str | None = None  # said after a login when refresh_token_lifetime is not set


PRESETS: dict[str, Preset] = {
    # Spotify refresh tokens expire 6 months after the login since 2026; refreshing
    # does not extend them (Spotify developer blog, 2026-06-18).
    "spotify": Preset(
        token_url="https://accounts.spotify.com/api/token",
        authorize_url="https://accounts.spotify.com/authorize",
        client_auth=ClientAuth.BASIC,
        refresh_token_lifetime=180 * 86400,
    ),
    # Microsoft identity platform (Entra ID) v2 endpoints.
    # - URLs, {tenant} = common | organizations | consumers | a tenant id or domain; device-code request takes
    #   client_id + scope, the poll grant_type + client_id + device_code; errors authorization_pending,
    #   authorization_declined, bad_verification_code, expired_token; no verification_uri_complete
    #   (MicrosoftDocs/entra-docs docs/identity-platform/v2-oauth2-device-code.md).
    # - A refresh token is issued only when the scope holds offline_access (same page, token response table).
    # - Each refresh returns a new refresh token; the old one is not revoked; 90 days (24 h for SPAs)
    #   (learn.microsoft.com/entra/identity-platform/refresh-tokens). Lifetime left unset: it is not said to slide.
    # - Device flow and secret-less clients are public clients ("Allow public client flows"), so client_auth none
    #   (learn.microsoft.com/entra/msal/java/getting-started/device-code-flow).
    # - No RFC 7009 endpoint for refresh tokens: revocation_url stays unset (sign-in sessions are revoked through Graph).
    "microsoft": Preset(
        token_url="https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        authorize_url="https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
        device_authorization_url="https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode",
        client_auth=ClientAuth.NONE,
        refresh_token_lifetime=None,
        default_tenant="common",
        added_scopes=("offline_access",),
    ),
    # Google OAuth 2.0 (developers.google.com/identity/protocols/oauth2 and its subpages).
    # - Endpoints: native-app page (auth, token, revoke = POST token=... to oauth2.googleapis.com/revoke);
    #   limited-input-device page (device/code; its answer names the page `verification_url`).
    # - access_type=offline gives a refresh token on the first exchange only; prompt=consent asks again so a new
    #   login gets one too (web-server / native-app pages, "offline access" and `prompt`).
    # - client_id and client_secret go in the body for desktop and TV clients (native-app and limited-input pages).
    # - The device flow grants only openid, email, profile, drive.appdata, drive.file, youtube(.readonly):
    #   never https://mail.google.com/ (limited-input-device page, "Allowed scopes").
    # - External apps in "Testing" publishing status get refresh tokens that expire after 7 days
    #   (oauth2 overview, "Refresh token expiration"); freshtoken cannot see the status, so it says so.
    "google": Preset(
        token_url="https://oauth2.googleapis.com/token",
        authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
        device_authorization_url="https://oauth2.googleapis.com/device/code",
        revocation_url="https://oauth2.googleapis.com/revoke",
        client_auth=ClientAuth.POST,
        refresh_token_lifetime=None,
        authorize_params=(("access_type", "offline"), ("prompt", "consent")),
        device_refused_scopes=("https://mail.google.com/",),
        login_note=(
            "if your Google app's publishing status is Testing, Google revokes this refresh token after 7 days:"
            " add `refresh_token_lifetime: 7d` to the account so that freshtoken warns before then"
        ),
    ),
    # GitHub App user access tokens (github/docs content/apps/...).
    # - authorize / access_token endpoints; the token endpoint answers form-encoded unless sent
    #   Accept: application/json (oauth-apps/building-oauth-apps/authorizing-oauth-apps.md).
    # - client_id + client_secret as body parameters (same page; refreshing-user-access-tokens.md); the
    #   secret is not needed for device-flow tokens (same pages): use client_auth none then.
    # - Device flow (enable it in the app's settings): POST /login/device/code; slow_down adds 5 s and the
    #   answer carries the new interval; errors incorrect_device_code, device_flow_disabled (authorizing-oauth-apps.md).
    # - 8-hour access tokens, 6-month refresh tokens; a refresh returns a new pair and the old one stops working
    #   (refreshing-user-access-tokens.md); refresh_token_expires_in comes in the answer, so no lifetime here.
    # - PKCE (S256) accepted since 2025-07-14 (github.blog/changelog/2025-07-14-pkce-support-for-oauth-and-github-app-authentication).
    # - No RFC 7009 endpoint (its DELETE /applications/{client_id}/grant is a REST API call): revocation_url unset.
    "github": Preset(
        token_url="https://github.com/login/oauth/access_token",
        authorize_url="https://github.com/login/oauth/authorize",
        device_authorization_url="https://github.com/login/device/code",
        client_auth=ClientAuth.POST,
        refresh_token_lifetime=None,
    ),
}
