"""The web fixtures (app on a clean database, signed-in radiologist, a drafted phantom study)."""

from tests.web.conftest import client, drafted, rad_client, radiologist, web_env

__all__ = ["client", "drafted", "rad_client", "radiologist", "web_env"]
