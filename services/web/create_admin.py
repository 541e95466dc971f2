"""`python -m services.web.create_admin --username … --full-name …`: the first admin account.

Same as `services.web.cli create-user --role admin`; see that module for how the password is read.
"""

from __future__ import annotations

from services.web.cli import main
from shared.db.models import UserRole

if __name__ == "__main__":
    raise SystemExit(main(default_role=UserRole.ADMIN))
