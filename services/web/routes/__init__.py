"""One router per resource: auth, worklist, studies (detail, edit, sign), images, interactive
region tools, admin (audit, deliveries, users), feedback export, pages, metrics."""
