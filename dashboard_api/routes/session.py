"""The browser's login: exchange a token once for an HttpOnly session cookie (see dashboard_api/auth.py).

* ``POST /auth/login`` with ``{"token": "..."}`` -> 204 and the cookie (401 on a wrong token);
* ``GET /auth/me`` -> ``{"role": ...}`` (401 without a valid token or cookie);
* ``POST /auth/logout`` -> 204, the cookie cleared;
* ``GET /?token=T`` (the link ``iotp up`` prints) -> 303 to ``/`` with the cookie: the token leaves the
  address bar and the browser history at once (and the access log redacts it).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Request, Response, status
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from dashboard_api.auth import COOKIE, TokenEntry, role_of
from dashboard_api.deps import RoleDep, TokensDep

router = APIRouter(prefix="/auth", tags=["auth"])


class Login(BaseModel):
    token: Annotated[str, Field(min_length=1, max_length=512)]


class Me(BaseModel):
    role: str


def set_session_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,  # page scripts cannot read it
        samesite="strict",  # other sites' pages cannot send it
        secure=request.url.scheme == "https",
        path="/",
    )


@router.post("/login", status_code=204, summary="Exchange an API token for an HttpOnly session cookie")
async def login(request: Request, tokens: TokensDep, body: Annotated[Login, Body()]) -> Response:
    if role_of(tokens, body.token) is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong API token")
    response = Response(status_code=204)
    set_session_cookie(response, request, body.token)
    return response


@router.post("/logout", status_code=204, summary="Clear the session cookie")
async def logout() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/me", response_model=Me, summary="The role of the caller's token or session")
async def me(role: RoleDep) -> Me:
    return Me(role=role)


def token_link_redirect(request: Request, tokens: list[TokenEntry], token: str) -> RedirectResponse:
    """``/?token=T``: a valid token becomes the cookie; either way the browser goes to the clean ``/``."""
    response = RedirectResponse("/", status_code=303)
    if role_of(tokens, token) is not None:
        set_session_cookie(response, request, token)
    return response
