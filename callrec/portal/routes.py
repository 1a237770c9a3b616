"""The portal's routes, templates (jinja2 with autoescape) and static files."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from callrec.portal import views


async def _to_portal(request: web.Request) -> web.Response:
    return web.Response(status=303, headers={"Location": "/portal/"})


def setup_portal(app: web.Application) -> None:
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("callrec.portal", "templates"),
        autoescape=jinja2.select_autoescape(["html"], default=True),
    )
    static = Path(str(resources.files("callrec.portal").joinpath("static")))
    app.router.add_static("/portal/static/", static, append_version=False)
    app.router.add_get("/portal/login", views.login_form)
    app.router.add_post("/portal/login", views.login)
    app.router.add_get("/portal/mfa", views.mfa_form)
    app.router.add_post("/portal/mfa", views.mfa)
    app.router.add_post("/portal/logout", views.logout)
    app.router.add_get("/portal/", views.recordings_page)
    app.router.add_get("/portal", _to_portal)
    app.router.add_get("/portal/recordings/{id}", views.recording_page)
    app.router.add_post("/portal/recordings/{id}/reason", views.give_reason)
    app.router.add_get("/portal/recordings/{id}/audio", views.recording_audio)
