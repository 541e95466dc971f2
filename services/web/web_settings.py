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

# A cookie issued later than this many seconds from now (replica clocks disagree a little at most)
# is refused: a forged or replayed future issue time would otherwise never expire.
SESSION_CLOCK_SKEW_S = 5

# Sign-in throttle per (source address, username) (login_throttle.py): the first failures are
# free, then each one doubles the wait before the next attempt (1 s, 2 s, 4 s … capped), and
# after LOGIN_MAX_FAILURES the pair waits the whole window. A quiet window starts a new run.
LOGIN_FREE_ATTEMPTS = 3
LOGIN_DELAY_BASE_S = 1
LOGIN_DELAY_MAX_S = 60
LOGIN_MAX_FAILURES = 10
LOGIN_FAILURE_WINDOW_S = 15 * 60

# NIST SP 800-63B: at least this long, no composition rules, not a known common password.
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 256

# Request bodies larger than this are refused with 413 before they are read.
MAX_BODY_BYTES = 256 * 1024

# Interactive Locate / Identify: how long the UI waits for the GPU worker before saying "busy".
INTERACTIVE_TIMEOUT_S = 10.0

# Rendered PNGs kept in memory (bytes), and the default longest side sent to the browser.
RENDER_CACHE_BYTES = 96 * 1024 * 1024
RENDER_DEFAULT_MAX_SIDE = 1024
RENDER_MAX_SIDE_LIMIT = 4096
