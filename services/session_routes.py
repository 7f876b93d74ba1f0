"""The UI server's own HTTP route for the sign-in cookie (added to Streamlit's server by ``ui_app.py``).

A page script cannot set an HttpOnly cookie: only an HTTP response can. After sign-in the page posts a
one-time claim code (:func:`services.sessions.claim_code`) here; the answer sets the session cookie HttpOnly,
so no script on the page can read the token. An empty body deletes the cookie (sign-out).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services import sessions

MAX_CODE_BYTES = 256


async def session_cookie(request: Request) -> Response:
    """Set the session cookie for a claim code (403 when unknown, spent or expired); empty: delete it."""
    code = (await request.body())[:MAX_CODE_BYTES].decode("ascii", errors="replace").strip()
    response = Response(status_code=204, headers={"Cache-Control": "no-store"})
    secure = request.url.scheme == "https"
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
