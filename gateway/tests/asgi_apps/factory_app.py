"""A FastAPI app made by a factory, for the gateway's --factory (tests/asgi.rs).

Importing this module makes no app: only calling create_app() does.
"""

from fastapi import FastAPI, Request

# How many apps this process made.
MADE = []


def create_app():
    app = FastAPI()
    MADE.append(app)

    @app.get("/made")
    async def made(request: Request):
        return {"made_by": "create_app", "apps_made": len(MADE),
                "root_path": request.scope["root_path"]}

    return app
