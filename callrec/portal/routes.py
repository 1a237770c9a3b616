"""The portal's routes, templates (jinja2 with autoescape) and static files."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from callrec.portal import admin_views, rights_views, sso, views, work_views


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
    sso.add_routes(app)
    app.router.add_get("/portal/", views.recordings_page)
    app.router.add_post("/portal/search", views.recordings_search)
    app.router.add_get("/portal", _to_portal)
    app.router.add_get("/portal/recordings/{id}", views.recording_page)
    app.router.add_post("/portal/recordings/{id}/reason", views.give_reason)
    app.router.add_get("/portal/recordings/{id}/audio", views.recording_audio)
    app.router.add_get("/portal/holds", work_views.holds_page)
    app.router.add_post("/portal/holds", work_views.holds_post)
    app.router.add_post("/portal/holds/{id}/release", work_views.hold_release)
    app.router.add_get("/portal/deletions", work_views.deletions_page)
    app.router.add_post("/portal/deletions", work_views.deletions_post)
    app.router.add_get("/portal/deletions/{id}", work_views.deletion_page)
    app.router.add_get("/portal/quarantine", work_views.quarantine_page)
    app.router.add_post("/portal/quarantine/{id}", work_views.quarantine_decide)
    app.router.add_get("/portal/audit", work_views.audit_page)
    app.router.add_get("/portal/audit.csv", work_views.audit_csv)
    app.router.add_get("/portal/jobs", work_views.jobs_page)
    app.router.add_post("/portal/jobs/{id}/retry", work_views.job_retry)
    app.router.add_get("/portal/access", rights_views.access_page)
    app.router.add_post("/portal/access", rights_views.access_post)
    app.router.add_post("/portal/recordings/{id}/restriction", rights_views.restriction_post)
    app.router.add_get("/portal/admin", admin_views.admin_page)
    app.router.add_post("/portal/admin/users", admin_views.user_add)
    app.router.add_post("/portal/admin/users/{id}/disable", admin_views.user_disable)
    app.router.add_post("/portal/admin/users/{id}/enable", admin_views.user_enable)
    app.router.add_post("/portal/admin/users/{id}/unlock", admin_views.user_unlock)
    app.router.add_post("/portal/admin/users/{id}/reset-mfa", admin_views.user_reset_mfa)
    app.router.add_post("/portal/admin/users/{id}/unlink-sso", admin_views.user_unlink_sso)
    app.router.add_post("/portal/admin/tokens", admin_views.token_create)
    app.router.add_post("/portal/admin/tokens/{id}/revoke", admin_views.token_revoke)
