#!/usr/bin/env bash
# Backup and restore of what medrega-pacs alone holds: the PostgreSQL database (studies, reports,
# findings, deliveries, users, audit log) and the received-image storage. The PACS keeps its own
# images and is backed up as the PACS; Orthanc's work dir is included when MEDREGA_ORTHANC_DIR
# names it (the bundled stand-in PACS).
#
#   ops/backup.sh backup DIR            → DIR/medrega-<UTC time>/{database.dump,storage.tar,
#                                          [orthanc.tar,] SHA256SUMS}; prints that directory
#   ops/backup.sh restore BACKUP_DIR    checks SHA256SUMS, restores the database into
#                                          MEDREGA_DATABASE_URL's (empty or not: --clean) and the
#                                          storage into MEDREGA_STORAGE_DIR (must be empty)
#
# Settings as the services read them (MEDREGA_DATABASE_URL, MEDREGA_SECRETS_DIR, …). The database
# is dumped first and the storage after, so every instance row in the dump has its file in the
# tar (files that arrive in between are extra, never missing). The password goes to pg_dump in
# its environment, never on a command line.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${MEDREGA_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3

log() { printf '[backup] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE and the storage directory from the settings.
load_settings() {
  local lines
  lines=$(cd "$ROOT" && "$PY" - <<'PYEOF'
import shlex
from sqlalchemy.engine import make_url
from shared.config import get_settings
s = get_settings()
u = make_url(s.database_url)
for key, value in (("PGHOST", u.host or "127.0.0.1"), ("PGPORT", u.port or 5432),
                   ("PGUSER", u.username or "postgres"), ("PGPASSWORD", u.password or ""),
                   ("PGDATABASE", u.database or ""), ("STORAGE", s.storage_dir)):
    print(f"{key}={shlex.quote(str(value))}")
PYEOF
  )
  eval "$lines"
  export PGHOST PGPORT PGUSER PGDATABASE
  if [ -n "$PGPASSWORD" ]; then export PGPASSWORD; else unset PGPASSWORD; fi
  [ -n "$PGDATABASE" ] || die "no database name in MEDREGA_DATABASE_URL"
}

# archive DIR TAR: a tar of a directory the services keep writing. The listener links each image
# in complete (never rewritten), so GNU tar's "changed as we read it" (a directory gaining a file)
# and "removed before we read it" (retention purging) are the storage moving on after the dump,
# not damage: tar's status 1 is taken, its status 2 (unreadable, disk full) is not. Half-written
# `.part` files (the listener's fallback without O_TMPFILE) are never anyone's image yet.
archive() {
  local rc=0
  tar -C "$1" --exclude='*.part' --warning=no-file-changed --warning=no-file-removed \
    -cf "$2" . || rc=$?
  [ "$rc" -le 1 ] || die "archiving $1 failed (tar exit $rc)"
}

backup() {
  local dest_root=${1:?usage: $0 backup DIR}
  load_settings
  [ -d "$STORAGE" ] || die "storage directory missing: $STORAGE"
  local dest; dest="$dest_root/medrega-$(date -u +%Y%m%dT%H%M%SZ)"
  mkdir -p "$dest"
  chmod 700 "$dest"  # patient data
  log "dumping database $PGDATABASE@$PGHOST:$PGPORT"
  pg_dump --format=custom --no-owner --file="$dest/database.dump"
  log "archiving storage $STORAGE"
  archive "$STORAGE" "$dest/storage.tar"
  if [ -n "${MEDREGA_ORTHANC_DIR:-}" ]; then
    log "archiving Orthanc's work dir $MEDREGA_ORTHANC_DIR"
    archive "$MEDREGA_ORTHANC_DIR" "$dest/orthanc.tar"
  fi
  (cd "$dest" && sha256sum -- *.dump *.tar >SHA256SUMS)
  echo "$dest"
}

restore() {
  local src=${1:?usage: $0 restore BACKUP_DIR}
  [ -f "$src/SHA256SUMS" ] || die "not a backup (no SHA256SUMS): $src"
  (cd "$src" && sha256sum --quiet -c SHA256SUMS) || die "backup is damaged: checksums differ"
  load_settings
  mkdir -p "$STORAGE"
  [ -z "$(ls -A "$STORAGE")" ] || die "storage directory is not empty: $STORAGE (restore into an empty one)"
  log "restoring database into $PGDATABASE@$PGHOST:$PGPORT"
  # One transaction: a restore that fails halfway leaves the database as it was, not half dropped.
  pg_restore --clean --if-exists --no-owner --exit-on-error --single-transaction \
    --dbname="$PGDATABASE" "$src/database.dump"
  log "restoring storage into $STORAGE"
  tar -C "$STORAGE" -xf "$src/storage.tar"
  if [ -f "$src/orthanc.tar" ] && [ -n "${MEDREGA_ORTHANC_DIR:-}" ]; then
    mkdir -p "$MEDREGA_ORTHANC_DIR"
    tar -C "$MEDREGA_ORTHANC_DIR" -xf "$src/orthanc.tar"
  elif [ -f "$src/orthanc.tar" ]; then
    log "orthanc.tar NOT restored: set MEDREGA_ORTHANC_DIR to the bundled Orthanc's work directory (Orthanc stopped) to restore it"
  fi
  log "restored from $src"
}

case "${1:-}" in
  backup) backup "${2:-}" ;;
  restore) restore "${2:-}" ;;
  *) echo "usage: $0 backup DIR | restore BACKUP_DIR" >&2; exit 2 ;;
esac
