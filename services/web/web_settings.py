"""Knobs of the web service that are policy, not deployment configuration.

Deployment settings (host, port, secret key, database) come from `shared.config`; these are the
hospital-policy values a security review asks about, kept in one place.
"""

from __future__ import annotations

SESSION_COOKIE = "medrega_session"
LOGIN_CSRF_COOKIE = "medrega_login_csrf"
LANGUAGE_COOKIE = "medrega_lang"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FORM_FIELD = "csrf_token"

# A workstation left alone is signed out after this long; a shift never outlasts the maximum.
SESSION_IDLE_S = 30 * 60
SESSION_MAX_S = 12 * 3600
# Re-issue the cookie (sliding idle window) at most this often, not on every request.
SESSION_REFRESH_S = 60

# Failed sign-ins per username within the window before further tries are refused (429).
LOGIN_MAX_FAILURES = 10
LOGIN_FAILURE_WINDOW_S = 15 * 60

# Request bodies larger than this are refused with 413 before they are read.
MAX_BODY_BYTES = 256 * 1024

# Interactive Locate / Identify: how long the UI waits for the GPU worker before saying "busy".
INTERACTIVE_TIMEOUT_S = 10.0

# Rendered PNGs kept in memory (bytes), and the default longest side sent to the browser.
RENDER_CACHE_BYTES = 96 * 1024 * 1024
RENDER_DEFAULT_MAX_SIDE = 1024
RENDER_MAX_SIDE_LIMIT = 4096
