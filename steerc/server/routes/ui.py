"""``GET /``: the playground, a page that shows what each question attended to (``--no-ui``: off).

The page is static files of the package (``steerc/server/ui``: HTML, CSS, one script; no build
step, nothing fetched from elsewhere) that use only the public API (``/openapi.json``,
``/v1/models``, ``/v1/contexts``, ``/v1/chat/completions`` with streaming), so it needs no key
to load: it asks for the key and sends it as every client does. Its Content-Security-Policy
allows only this origin and no inline script; the routes are left out of the OpenAPI schema,
which describes the JSON API (a page is not an API operation, and the fuzzer has nothing to
check in it).
"""

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

__all__ = ["ASSETS", "CSP", "build"]

# Only this origin; no inline script or style element, no plugins, not framed, no form posts elsewhere.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
# path -> (file in steerc/server/ui, media type)
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"), "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/ui/app.css": ("app.css", "text/css; charset=utf-8"), "/ui/icon.svg": ("icon.svg", "image/svg+xml")}


def _read(name: str) -> bytes:
    return (resources.files("steerc.server") / "ui" / name).read_bytes()


def build() -> APIRouter:
    """The page's routes, its files read once now (a missing file fails here, not on a request)."""
    router = APIRouter(include_in_schema=False)
    for path, (name, media_type) in ASSETS.items():
        router.add_api_route(path, _asset(_read(name), media_type), methods=["GET"], name=f"ui:{name}")
    return router


def _asset(body: bytes, media_type: str):
    async def asset() -> Response:
        return Response(body, media_type=media_type, headers=HEADERS)

    return asset
