#!/usr/bin/env bash
# The local stack on loopback: install what is missing, start/stop the services, report status.
#
#   ops/stack.sh install        Debian packages + .venv (idempotent)
#   ops/stack.sh infra          start PostgreSQL and RabbitMQ where they are not running, make the DB
#   ops/stack.sh start          infra + Orthanc (our config + plugin) + listener (+ worker/web once present)
#   ops/stack.sh stop           stop our services (PostgreSQL/RabbitMQ are left to the machine)
#   ops/stack.sh status         what is up
#
#   ops/stack.sh start --production   (or MEDREGA_MODE=production) the same stack as a hospital runs
#       it: MEDREGA_ENVIRONMENT=production, nginx terminating TLS in front of the web app (HSTS,
#       HTTP only redirects), secrets from files (MEDREGA_SECRETS_DIR), DICOM TLS Orthanc ⇄
#       listener and worker → Orthanc, MLLP over TLS to the RIS sink. Certificates are the
#       operator's (MEDREGA_PROXY_TLS_CERT/_KEY, MEDREGA_{LISTENER,ORTHANC,PACS,RIS}_TLS_*) or,
#       where not given, issued by a local demo CA in var/pki (ops/demo_pki.sh); missing secrets
#       files are generated. https://localhost:${MEDREGA_HTTPS_PORT:-8443}/
#   --no-install                skip the package/venv step (tests start a stack this way)
#
# Safe to run twice: every step checks before it acts. Logs: var/log/<service>.log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VAR="${MEDREGA_RUN_DIR:-$ROOT/var}"
LOG="$VAR/log"
RUN="$VAR/run"
PY="$ROOT/.venv/bin/python"
DB_NAME="${MEDREGA_DB_NAME:-medrega}"
export MEDREGA_DATABASE_URL="${MEDREGA_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/$DB_NAME}"
export MEDREGA_STORAGE_DIR="${MEDREGA_STORAGE_DIR:-$VAR/storage}"
# DCMTK-based programs (storescu, storescp, Orthanc) crawl on loopback without it (Nagle).
export TCP_NODELAY=1

# chromium + fonts-noto-cjk: the Playwright browser test (and readable 中文 in its screenshots).
# nginx: the TLS-terminating proxy of the production mode; orthanc-postgresql: Orthanc's index
# on PostgreSQL (the production option).
DEBIAN_PACKAGES=(orthanc orthanc-python orthanc-dicomweb dcmtk dicom3tools postgresql
  rabbitmq-server chromium fonts-noto-cjk nginx orthanc-postgresql)

log() { printf '[stack] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds name
  for _ in $(seq 1 $(($2 * 5))); do port_open "$1" && return 0; sleep 0.2; done
  log "$3 did not open port $1 within $2 s (see $LOG/$3.log)"; return 1
}

install_debian() {
  local missing=()
  for p in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  # npm fetches the OHIF viewer for tests/ohif; NodeSource's nodejs ships its own npm and
  # conflicts with Debian's npm package, so only ask for them where there is no npm at all.
  command -v npm >/dev/null || missing+=(nodejs npm)
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    # The services these packages start on install are not wanted: we run Orthanc and nginx with
    # our configuration. Only those just installed here: a host's own Orthanc or nginx, there
    # before, is none of our business (installing fonts must not stop a site's web server).
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    for svc in orthanc nginx; do
      [[ " ${missing[*]} " == *" $svc "* ]] || continue
      $sudo service "$svc" stop >/dev/null 2>&1 || true
    done
  fi
}

install_venv() {
  if [ ! -x "$PY" ]; then
    log "creating .venv"
    python3.11 -m venv "$ROOT/.venv" 2>/dev/null || python3 -m venv "$ROOT/.venv"
  fi
  local stamp="$ROOT/.venv/.medrega-installed"
  if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    log "installing the project into .venv (this takes a minute the first time)"
    "$PY" -m pip install -q --upgrade pip >/dev/null
    "$PY" -m pip install -q -e "$ROOT[dev]"
    touch "$stamp"
  fi
}

start_postgres() {
  if ! port_open 5432; then
    log "starting PostgreSQL"
    local ver; ver=$(ls /etc/postgresql | sort -V | tail -1)
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start
    wait_port 5432 30 postgresql
  fi
  if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1 from pg_database where datname='$DB_NAME'" | grep -q 1; then
    log "creating database $DB_NAME"
    psql -h 127.0.0.1 -U postgres -d postgres -qc "create database \"$DB_NAME\""
  fi
  # A failed migration stops the start: nothing may run against the old schema. Only the filter
  # (grep finding no line to print) may "fail".
  local out status=0
  out="$("$PY" -m alembic -c "$ROOT/alembic.ini" upgrade head 2>&1)" || status=$?
  printf '%s\n' "$out" | grep -v '^INFO' >&2 || true
  if [ "$status" -ne 0 ]; then
    log "database migration failed (alembic exit $status): nothing started"
    exit 1
  fi
}

start_rabbitmq() {
  if ! port_open 5672; then
    log "starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_port 5672 60 rabbitmq
  fi
}

# start_daemon name port command… — runs detached in its own session, pid in var/run.
# A pid file holds "PID START": the process's start time (clock ticks after boot, /proc). After
# a reboot or a crash the bare pid may name another process by then, which `start` would take
# for ours (and not start it) and `stop` would kill; the start time tells them apart.
proc_start() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }

running() { # NAME → prints the pid while the process its pid file names is still ours
  local pid="" start="" pidfile="$RUN/$1.pid"
  [ -f "$pidfile" ] || return 1
  read -r pid start <"$pidfile" || true
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  if [ -n "$start" ] && [ "$(proc_start "$pid")" != "$start" ]; then
    return 1
  fi
  echo "$pid"
}

start_daemon() {
  local name=$1 port=$2; shift 2
  running "$name" >/dev/null && return 0
  log "starting $name"
  setsid nohup "$@" >>"$LOG/$name.log" 2>&1 </dev/null &
  echo "$! $(proc_start $!)" >"$RUN/$name.pid"
  [ "$port" = "-" ] || wait_port "$port" 60 "$name"
}

stop_daemon() {
  local name=$1 pid
  if pid=$(running "$name"); then
    log "stopping $name"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$RUN/$name.pid"  # ours and stopped, or stale
}

settings() { "$PY" -c "from shared.config import get_settings as g; s=g(); print($1)"; }

# --- production mode: TLS everywhere, secrets from files, nginx in front ----------------------
PKI="${MEDREGA_PKI_DIR:-$VAR/pki}"
HTTPS_PORT="${MEDREGA_HTTPS_PORT:-8443}"
HTTP_PORT="${MEDREGA_HTTP_PORT:-8080}"

demo_certificate() { # name → $PKI/name.crt/.key from the local demo CA, made once
  [ -f "$PKI/$1.crt" ] || "$ROOT/ops/demo_pki.sh" "$PKI" "$1" "DNS:localhost,IP:127.0.0.1"
}

# default_tls PREFIX NAME: MEDREGA_<PREFIX>_TLS_CERT/_KEY/_CA, unless the operator set them, are
# the demo certificate NAME and the demo CA.
default_tls() {
  local cert="MEDREGA_$1_TLS_CERT" key="MEDREGA_$1_TLS_KEY" ca="MEDREGA_$1_TLS_CA"
  if [ -z "${!cert:-}" ]; then
    demo_certificate "$2"
    export "$cert=$PKI/$2.crt" "$key=$PKI/$2.key"
    [ -n "${!ca:-}" ] || export "$ca=$PKI/ca.crt"
  fi
}

# A secrets file that does not exist yet gets a random value (demo); an operator's is kept.
ensure_secret() { # file
  [ -s "$1" ] && return 0
  log "generating secret $(basename "$1")"
  (umask 077; "$PY" -c 'import secrets; print(secrets.token_urlsafe(48))' >"$1")
}

production_settings() {
  export MEDREGA_ENVIRONMENT=production
  export MEDREGA_SECRETS_DIR="${MEDREGA_SECRETS_DIR:-$VAR/secrets}"
  mkdir -p "$MEDREGA_SECRETS_DIR" && chmod 700 "$MEDREGA_SECRETS_DIR"
  ensure_secret "$MEDREGA_SECRETS_DIR/medrega_secret_key"
  ensure_secret "$MEDREGA_SECRETS_DIR/medrega_pacs_http_password"
  default_tls PROXY web
  default_tls LISTENER listener
  default_tls ORTHANC orthanc
  default_tls PACS worker
  default_tls RIS worker
  export MEDREGA_PACS_TLS="${MEDREGA_PACS_TLS:-true}" MEDREGA_RIS_TLS="${MEDREGA_RIS_TLS:-true}"
  # Orthanc is admitted by its AE title AND its certificate's name (the demo CA names it so).
  export MEDREGA_LISTENER_ALLOWED_PEERS="${MEDREGA_LISTENER_ALLOWED_PEERS:-ORTHANC@cn=orthanc}"
}

# Renders ${MEDREGA_*} placeholders only: nginx's own $variables stay as they are.
render_template() { # template out
  "$PY" - "$1" "$2" <<'PYEOF'
import os, re, sys
text = open(sys.argv[1], encoding="utf-8").read()
def value(match: re.Match) -> str:
    if match.group(1) not in os.environ:
        sys.exit(f"{sys.argv[1]}: {match.group(1)} is not set")
    return os.environ[match.group(1)]
open(sys.argv[2], "w", encoding="utf-8").write(re.sub(r"\$\{(MEDREGA_[A-Z0-9_]+)\}", value, text))
PYEOF
}

start_proxy() {
  local dir="$VAR/nginx"
  mkdir -p "$dir/tmp"
  export MEDREGA_NGINX_DIR="$dir" MEDREGA_HTTPS_PORT="$HTTPS_PORT" MEDREGA_HTTP_PORT="$HTTP_PORT"
  export MEDREGA_HTTPS_REDIRECT_PORT="$HTTPS_PORT"
  export MEDREGA_WEB_UPSTREAM="127.0.0.1:$(settings s.web_port)"
  render_template "$ROOT/ops/nginx/medrega-site.conf.template" "$dir/medrega-site.conf"
  render_template "$ROOT/ops/nginx/nginx-local.conf.template" "$dir/nginx.conf"
  nginx -t -q -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
  start_daemon nginx "$HTTPS_PORT" nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" \
    -g "daemon off;"
}
qp() { settings s.queue_prefix; }  # MEDREGA_QUEUE_PREFIX, usually empty

start_services() {
  mkdir -p "$LOG" "$RUN" "$MEDREGA_STORAGE_DIR"
  local orthanc_http listener_port
  orthanc_http=$(settings "s.pacs_http_url.rsplit(':',1)[1].rstrip('/')")
  listener_port=$(settings "s.listener_port")
  if ! port_open "$orthanc_http"; then
    log "starting Orthanc"
    "$PY" -m services.pacs.local_orthanc start --workdir "$VAR/orthanc" >&2
  fi
  # The listener admits the local Orthanc by its AE title and loopback address, named here rather
  # than left to the default (MEDREGA_LISTENER_ALLOWED_PEERS; a site sets its own).
  MEDREGA_LISTENER_ALLOWED_PEERS="${MEDREGA_LISTENER_ALLOWED_PEERS:-$(settings s.pacs_ae_title)@127.0.0.1}" \
    start_daemon listener "$listener_port" "$PY" -m services.listener.main
  # A stand-in hospital RIS (MLLP, logs and ACKs) so the demo has somebody to deliver ORUs to.
  local ris_tls=()
  if [ "$PRODUCTION" = 1 ]; then  # TLS, and the worker's client certificate is asked for
    demo_certificate ris
    ris_tls=(--tls-cert "$PKI/ris.crt" --tls-key "$PKI/ris.key" --tls-client-ca "$PKI/ca.crt")
  fi
  start_daemon ris-sink "$(settings s.ris_port)" "$PY" -m ops.ris_sink --port "$(settings s.ris_port)" \
    --out "$VAR/ris-inbox" "${ris_tls[@]}"
  # One process owns the model for drafts (queue draft, a priority queue; one thread: one per
  # GPU); Locate/Identify have their own process and model session (queue interactive), so a
  # click never waits behind a draft backlog; deliveries run beside them.
  # Not the solo pool: it was seen to leave new messages unconsumed ~10 s after going idle.
  start_daemon worker-gpu - "$PY" -m celery -A services.worker.celery_app worker -Q "$(qp)draft" \
    --pool threads --concurrency 1 -n gpu@%h --loglevel INFO
  start_daemon worker-interactive - "$PY" -m celery -A services.worker.celery_app worker \
    -Q "$(qp)interactive" --pool threads --concurrency 1 -n interactive@%h --loglevel INFO
  start_daemon worker-io - "$PY" -m celery -A services.worker.celery_app worker -Q "$(qp)delivery" \
    --pool threads --concurrency 4 -n io@%h --loglevel INFO
  # MEDREGA_MODEL_BACKEND=mllm with the default loopback URL: serve our reference model over
  # MedRegA's protocol (a real MedRegA deployment sets MEDREGA_MLLM_BASE_URL instead).
  if [ "$(settings s.model_backend)" = mllm ] && \
     [ "$(settings s.mllm_base_url)" = "http://127.0.0.1:8012/v1" ]; then
    start_daemon medrega-server 8012 "$PY" -m services.medrega_server --host 127.0.0.1 --port 8012
  fi
  # Publishes what the database says is due (outbox); leader-elected, so one or more is fine.
  start_daemon relay - "$PY" -m services.worker.relay
  if [ -f "$ROOT/services/web/app.py" ]; then
    # Behind the proxy, the client's address is the proxy's X-Forwarded-For, trusted from the
    # proxy on loopback only (said explicitly; uvicorn's default today).
    local proxy_headers=() web_host web_port
    read -r web_host web_port <<<"$(settings "f'{s.web_host} {s.web_port}'")"
    if [ "$PRODUCTION" = 1 ]; then
      proxy_headers=(--proxy-headers --forwarded-allow-ips 127.0.0.1)
      # Only nginx (TLS, the trusted forwarder) may reach the app: loopback whatever is set.
      [ "$web_host" = 127.0.0.1 ] || log "production: MEDREGA_WEB_HOST=$web_host not used; the web app listens on 127.0.0.1 behind the TLS proxy"
      web_host=127.0.0.1
    fi
    start_daemon web "$web_port" "$PY" -m uvicorn services.web.app:app \
      --host "$web_host" --port "$web_port" "${proxy_headers[@]}"
  fi
  if [ "$PRODUCTION" = 1 ]; then
    # Hourly retention pass (MEDREGA_RETENTION_*; none set: images are kept).
    start_daemon retention - "$PY" -m ops.retention --every 3600
    start_proxy
  fi
  return 0
}

stop_services() {
  for name in nginx retention web relay worker-gpu worker-interactive worker-io medrega-server ris-sink listener; do
    stop_daemon "$name"
  done
  [ -x "$PY" ] && "$PY" -m services.pacs.local_orthanc stop --workdir "$VAR/orthanc" >&2 || true
}

status() {
  local fmt='%-12s %-6s %s\n'
  printf "$fmt" SERVICE STATE WHERE
  port_open 5432 && printf "$fmt" postgresql up 127.0.0.1:5432 || printf "$fmt" postgresql down 127.0.0.1:5432
  port_open 5672 && printf "$fmt" rabbitmq up 127.0.0.1:5672 || printf "$fmt" rabbitmq down 127.0.0.1:5672
  if [ -x "$PY" ]; then
    local http lp; http=$(settings "s.pacs_http_url.rsplit(':',1)[1].rstrip('/')"); lp=$(settings s.listener_port)
    port_open "$http" && printf "$fmt" orthanc up "127.0.0.1:$http" || printf "$fmt" orthanc down "127.0.0.1:$http"
    port_open "$lp" && printf "$fmt" listener up "127.0.0.1:$lp" || printf "$fmt" listener down "127.0.0.1:$lp"
  fi
  local name pid
  for name in worker-gpu worker-interactive worker-io medrega-server relay retention ris-sink web \
    nginx; do
    if pid=$(running "$name"); then
      printf "$fmt" "$name" up "pid $pid"
    fi
  done
  if running nginx >/dev/null; then
    printf 'web (production): https://localhost:%s/\n' "$HTTPS_PORT"
  fi
  printf 'logs: %s\n' "$LOG"
  # Queue depths, what the database still owes and the oldest undelivered item (ops/status.py).
  if [ -x "$PY" ] && port_open 5432; then "$PY" -m ops.status || true; fi
}

usage() { echo "usage: $0 install|infra|start|stop|restart|status [--production] [--no-install]" >&2; exit 2; }

PRODUCTION=0
INSTALL=1
[ "${MEDREGA_MODE:-}" = production ] && PRODUCTION=1
for flag in "${@:2}"; do
  case "$flag" in
    --production) PRODUCTION=1 ;;
    --no-install) INSTALL=0 ;;
    *) usage ;;
  esac
done
[ "$PRODUCTION" = 1 ] && production_settings

mkdir -p "$LOG" "$RUN"
case "${1:-status}" in
  install) install_debian; install_venv ;;
  infra) start_postgres; start_rabbitmq ;;
  start)
    if [ "$INSTALL" = 1 ]; then install_debian; install_venv; fi
    start_postgres; start_rabbitmq; start_services; status ;;
  stop) stop_services ;;
  restart) stop_services; start_services; status ;;
  status) status ;;
  *) usage ;;
esac
