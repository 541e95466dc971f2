#!/usr/bin/env bash
# The local stack on loopback: install what is missing, start/stop the services, report status.
#
#   ops/stack.sh install        Debian packages + .venv (idempotent)
#   ops/stack.sh infra          start PostgreSQL and RabbitMQ where they are not running, make the DB
#   ops/stack.sh start          infra + Orthanc (our config + plugin) + listener (+ worker/web once present)
#   ops/stack.sh stop           stop our services (PostgreSQL/RabbitMQ are left to the machine)
#   ops/stack.sh status         what is up
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
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    # The packages' own services are not wanted: we run Orthanc with our configuration.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    for svc in orthanc nginx; do $sudo service "$svc" stop >/dev/null 2>&1 || true; done
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
  "$PY" -m alembic -c "$ROOT/alembic.ini" upgrade head 2>&1 | grep -v '^INFO' >&2 || true
}

start_rabbitmq() {
  if ! port_open 5672; then
    log "starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_port 5672 60 rabbitmq
  fi
}

# start_daemon name port command… — runs detached in its own session, pid in var/run.
start_daemon() {
  local name=$1 port=$2; shift 2
  if [ -f "$RUN/$name.pid" ] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then
    return 0
  fi
  log "starting $name"
  setsid nohup "$@" >>"$LOG/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
  [ "$port" = "-" ] || wait_port "$port" 60 "$name"
}

stop_daemon() {
  local name=$1 pidfile="$RUN/$1.pid"
  [ -f "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

settings() { "$PY" -c "from shared.config import get_settings as g; s=g(); print($1)"; }
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
  start_daemon ris-sink "$(settings s.ris_port)" "$PY" -m ops.ris_sink --port "$(settings s.ris_port)" \
    --out "$VAR/ris-inbox"
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
    start_daemon web "$(settings s.web_port)" "$PY" -m uvicorn services.web.app:app \
      --host 127.0.0.1 --port "$(settings s.web_port)"
  fi
}

stop_services() {
  for name in web relay worker-gpu worker-interactive worker-io medrega-server ris-sink listener; do
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
  for name in worker-gpu worker-interactive worker-io medrega-server relay ris-sink web; do
    if [ -f "$RUN/$name.pid" ] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then
      printf "$fmt" "$name" up "pid $(cat "$RUN/$name.pid")"
    fi
  done
  printf 'logs: %s\n' "$LOG"
}

mkdir -p "$LOG" "$RUN"
case "${1:-status}" in
  install) install_debian; install_venv ;;
  infra) start_postgres; start_rabbitmq ;;
  start) install_debian; install_venv; start_postgres; start_rabbitmq; start_services; status ;;
  stop) stop_services ;;
  restart) stop_services; start_services; status ;;
  status) status ;;
  *) echo "usage: $0 install|infra|start|stop|restart|status" >&2; exit 2 ;;
esac
