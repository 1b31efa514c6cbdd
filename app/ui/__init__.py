"""The chat UI: Chainlit, served by the API process at `/` while the API stays at `/v1`, so
`cadre up` (and a deployment) has one URL.

Chainlit is one process-wide application: its config is read from `CHAINLIT_APP_ROOT` when it
is first imported, its callbacks and sessions live in module state. So the environment is set
before that import, the callbacks are registered by importing `handlers` once, and the same
Chainlit app is mounted on whichever app asks (`create_app(ui=True)`); the handlers use the
services of the app mounted last. Tests that build many apps in one process leave `ui` off.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.errors import ConfigError
from app.problems import problem_response
from app.settings import Settings
from app.stack.secrets import local_secrets

__all__ = ["mount_ui", "prepare_chainlit"]


def mount_ui(app: FastAPI, settings: Settings) -> None:
    """Serve the chat UI from `app` at `/`. Call it after every other route is added: the UI
    answers every path nothing else claimed (unknown `/v1` paths still get a problem+json 404)."""
    prepare_chainlit(settings)
    import chainlit as cl
    from chainlit.auth import ensure_jwt_secret
    from chainlit.server import app as chainlit_app

    from app.ui import handlers
    from app.ui.artifacts import router as artifacts_router
    from app.ui.runtime import bind

    ensure_jwt_secret()
    if settings.ui_auth_header:
        cl.header_auth_callback(handlers.header_login)
    bind(app, settings)
    app.include_router(artifacts_router)
    app.add_api_route("/v1/{rest:path}", _no_such_endpoint, include_in_schema=False,
                      methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
    app.mount("/", chainlit_app)


async def _no_such_endpoint(request: Request) -> JSONResponse:
    return problem_response("not-found", 404, f"no endpoint {request.method} {request.url.path}",
                            instance=request.url.path)


def prepare_chainlit(settings: Settings) -> None:
    """Chainlit's working directory under CADRE_HOME (config, public files, the readme, its
    upload scratch space) and its environment, before Chainlit is first imported."""
    assets = _assets()
    root = (settings.home / "ui").resolve()
    (root / ".chainlit").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(assets / ".chainlit" / "config.toml", root / ".chainlit" / "config.toml")
    shutil.copytree(assets / "public", root / "public", dirs_exist_ok=True)
    from app.ui.render import model_notice

    readme = ("# Cadre\n\nWrite a task in plain words, attach CSV, text or PDF files if it "
              "needs them, and watch the agent plan and act. Steps that change something "
              "outside (an email, for instance) wait for your Approve. Share makes a read-only "
              f"link with secrets and personal data redacted.\n\n{model_notice(settings)}\n")
    # The "Readme" button; Chainlit looks for the browser's language first, then the default.
    for name in ("chainlit.md", "chainlit_en-US.md"):
        (root / name).write_text(readme)
    secret = (settings.ui_secret.get_secret_value() if settings.ui_secret
              else local_secrets(settings.home)["ui_secret"])
    os.environ["CHAINLIT_AUTH_SECRET"] = secret
    if "chainlit" not in sys.modules:
        os.environ["CHAINLIT_APP_ROOT"] = str(root)
        # Chainlit would otherwise load a `.env` from the working directory into os.environ.
        os.environ["CHAINLIT_ENV_FILE"] = "/nonexistent"


def _assets() -> Path:
    """The checkout (or image) holding `.chainlit/` and `public/`."""
    for base in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (base / ".chainlit" / "config.toml").is_file() and (base / "public").is_dir():
            return base
    raise ConfigError("the chat UI's files (.chainlit/config.toml, public/) are missing; run "
                      "Cadre from its checkout, or set CADRE_UI=false to serve the API alone")
