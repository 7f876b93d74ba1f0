"""The UI server's own HTTP route for the sign-in cookie (added to Streamlit's server by ``ui_app.py``).

A page script cannot set an HttpOnly cookie: only an HTTP response can. After sign-in the page posts a
one-time claim code (:func:`services.ui.sessions.claim_code`) here; the answer sets the session cookie HttpOnly,
so no script on the page can read the token. An empty body deletes the cookie (sign-out).
"""

from __future__ import annotations

from urllib.parse import urlparse

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.ui import sessions
from services.ui.guard import read_at_most, refusal

MAX_CODE_BYTES = 256  # a claim code is 43 characters; a longer body is refused unread


def same_origin(request: Request) -> bool:
    """Whether the page that sent the request is the UI's own (a cross-site form must not sign anyone out).

    Browsers say so in ``Sec-Fetch-Site``; an older one sends ``Origin``, compared with the address asked.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("origin")
    return origin is not None and urlparse(origin).netloc == request.headers.get("host")


def over_https(request: Request) -> bool:
    """Whether the browser reached the UI over HTTPS (its ``Origin``; a TLS proxy in front hides the scheme)."""
    origin = request.headers.get("origin") or ""
    return request.url.scheme == "https" or origin.startswith("https://")


async def session_cookie(request: Request) -> Response:
    """Set the session cookie for a claim code (403 when unknown, spent or expired); empty: delete it."""
    if not same_origin(request):
        return refusal(403, "only the UI's own pages may set its cookie")
    body = await read_at_most(request, MAX_CODE_BYTES)
    if body is None:
        return refusal(413, f"a claim code is at most {MAX_CODE_BYTES} bytes")
    code = body.decode("ascii", errors="replace").strip()
    response = Response(status_code=204, headers={"Cache-Control": "no-store"})
    secure = over_https(request)
    if not code:
        response.delete_cookie(sessions.COOKIE, path="/", secure=secure, httponly=True, samesite="strict")
        return response
    token = sessions.redeem(code)
    if token is None:
        return Response("unknown or expired claim code", status_code=403, headers={"Cache-Control": "no-store"})
    response.set_cookie(sessions.COOKIE, token, max_age=sessions.ABSOLUTE_SECONDS, path="/", secure=secure,
                        httponly=True, samesite="strict")
    return response


ROUTES = [Route(sessions.COOKIE_ROUTE, session_cookie, methods=["POST"])]
