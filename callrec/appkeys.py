"""Typed application keys: every shared resource of the app, in one place."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from callrec.anchoring import AnchorStore
from callrec.config import Config
from callrec.ingest.batcher import JobBatcher
from callrec.keyring import TenantKeys
from callrec.storage.base import ObjectStore

config_key = web.AppKey("config", Config)
db_key = web.AppKey("db", asyncpg.Pool)
store_key = web.AppKey("store", ObjectStore)
keys_key = web.AppKey("keys", TenantKeys)
batcher_key = web.AppKey("batcher", JobBatcher)
anchors_key = web.AppKey("anchors", AnchorStore)
