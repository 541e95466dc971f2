"""The one place configuration is read from: environment variables prefixed `MEDREGA_`, `.env`,
or one file per secret in MEDREGA_SECRETS_DIR (Compose/Docker secrets: `/run/secrets`), named like
the variable in lower case (`medrega_secret_key`); the environment wins over a file.

Nested-looking names are flat on purpose (`MEDREGA_LISTENER_PORT`) so a hospital's ops team can
see every knob in one table (README "Configuration").
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from shared.listener_peers import PeerRule, parse_peer

if TYPE_CHECKING:
    from shared.hl7.oru_header import OruHeader

REPO_ROOT = Path(__file__).resolve().parent.parent

# Values that must never reach production; refused outside development.
PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "dev", "development"}
# The web session key signs with HMAC-SHA256: production refuses anything shorter than the hash.
MIN_SECRET_KEY_BYTES = 32
PACS_OBJECTS = ("sr", "gsps", "kos")  # what a report version may send to the PACS


def split_csv(value: object) -> object:
    """'a, b,c' → ['a', 'b', 'c'] for list settings given as one environment variable."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MEDREGA_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    environment: Literal["development", "test", "production"] = "development"
    log_level: str = "INFO"

    # --- PostgreSQL (source of truth) ---
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/medrega"
    # Put into database_url when set, so the URL holds no secret (a secrets file holds this).
    database_password: SecretStr | None = None

    # --- RabbitMQ (Celery broker) ---
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    broker_password: SecretStr | None = None  # put into broker_url when set

    # Prefix for Celery queue names, so a test run never shares queues with a running stack.
    queue_prefix: str = ""

    # --- content storage for received DICOM ---
    storage_dir: Path = REPO_ROOT / "var" / "storage"
    # Associations are refused and C-STOREs answered 0xA700 below this much free space.
    storage_min_free_bytes: int = 512 * 1024 * 1024

    # --- DICOM listener (our Storage SCP) ---
    listener_ae_title: str = "MEDREGA_AI"
    listener_host: str = "127.0.0.1"
    listener_port: int = 11112
    # Who may associate: `AE@address`, `AE@network`, `AE@cn=certificate name` or `AE@*`
    # (shared/listener_peers.py); empty = refuse everyone. Test and demo senders are never here
    # by default: the demo and the tests name theirs.
    listener_allowed_peers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["ORTHANC@127.0.0.1"]
    )
    # Before peers had addresses: calling AE titles admitted from ANY address (`AE@*`), kept so
    # existing deployments still start; the listener warns about each at start.
    listener_allowed_aes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # How the PACS reaches the listener when that differs from the bind address (containers).
    listener_advertised_host: str | None = None
    listener_processes: int = 1  # >1: several processes share the port (SO_REUSEPORT)
    listener_max_associations: int = 16
    listener_max_pdu: int = 262_144
    listener_tls_cert: Path | None = None
    listener_tls_key: Path | None = None
    listener_tls_ca: Path | None = None  # when set, peers must present a certificate it signed
    # A study with no new instance for this long is 'stable' and gets a draft job.
    stable_age_s: float = 60.0
    stability_sweep_interval_s: float = 2.0

    # --- the PACS (Orthanc) ---
    pacs_ae_title: str = "ORTHANC"
    pacs_host: str = "127.0.0.1"
    pacs_port: int = 4242
    pacs_http_url: str = "http://127.0.0.1:8042"
    pacs_http_user: str = "medrega"
    pacs_http_password: SecretStr | None = None
    pacs_stable_age_s: int = 10  # Orthanc's StableAge (its own idea of "stable")
    # Orthanc's REST API beyond loopback (authenticated either way); for container networks.
    pacs_http_remote_access: bool = False
    # What this PACS gets of each report version: `sr` (TID 1500 SR), `gsps` (a presentation
    # state per key image with the findings' boxes, for viewers that do not read TID 1500),
    # `kos` (Key Object Selection of the findings' images). Any subset, e.g. "sr,kos".
    pacs_objects: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(PACS_OBJECTS))
    # Worker → PACS (the SR's C-STORE) over DICOM TLS, verified against pacs_tls_ca (None: the
    # system's CAs) and the destination's host name; our client certificate when the PACS asks.
    pacs_tls: bool = False
    pacs_tls_ca: Path | None = None
    pacs_tls_cert: Path | None = None
    pacs_tls_key: Path | None = None
    # The bundled Orthanc's DICOM TLS: with a certificate it speaks DICOM over TLS only (callers
    # must present a certificate signed by orthanc_tls_ca) and routes to the listener over TLS.
    orthanc_tls_cert: Path | None = None
    orthanc_tls_key: Path | None = None
    orthanc_tls_ca: Path | None = None
    # Orthanc's index in PostgreSQL (production: several GBs of metadata, concurrent writers):
    # this database, on the server and with the account of MEDREGA_DATABASE_URL. None or empty:
    # SQLite in Orthanc's work directory (a site upgrading keeps its index by setting it empty).
    orthanc_index_database: str | None = Field(
        default=None, pattern=r"^([A-Za-z_][A-Za-z0-9_]{0,62})?$"
    )

    # --- the RIS (HL7 over MLLP) ---
    ris_host: str = "127.0.0.1"
    ris_port: int = 2575
    ris_timeout_s: float = 10.0
    # What each negative ACK means at this RIS (vendors differ): retry (bounded by
    # ris_ack_max_attempts) or fail at once. Only AA/CA naming our control ID is ever delivered.
    ris_ack_policy: str = "AE=retry,AR=retry,CE=retry,CR=retry"
    ris_ack_max_attempts: int = 5
    # What the ORU says about itself and the RIS (shared.hl7.oru_header): MSH-3/4 sending
    # application/facility, MSH-5/6 receiving application/facility, PID-3.4 the Patient ID's
    # assigning authority, the accession's namespace in ORC-2/3 and OBR-2/3 — HL7 HD values
    # `namespace[^universal id^type]`. OBR-4 is the study's requested procedure code; this
    # `code^meaning^coding system` when the modality sent none.
    hl7_sending_application: str = "MEDREGA_PACS"
    hl7_sending_facility: str = ""
    hl7_receiving_application: str = "RIS"
    hl7_receiving_facility: str = ""
    hl7_patient_id_authority: str = ""
    hl7_accession_authority: str = "RIS"
    hl7_default_procedure: str = "18748-4^Diagnostic imaging study^LN"
    hl7_processing_id: Literal["P", "T", "D"] = "P"
    # MLLP over TLS, verified against ris_tls_ca (None: the system's CAs) and the RIS host name;
    # our client certificate when the RIS asks for one.
    ris_tls: bool = False
    ris_tls_ca: Path | None = None
    ris_tls_cert: Path | None = None
    ris_tls_key: Path | None = None

    # --- retention of received images (ops/retention.py); None = keep forever ---
    retention_max_age_days: float | None = Field(default=None, gt=0)
    retention_max_storage_bytes: int | None = Field(default=None, gt=0)

    # --- reports ---
    # Languages of the narrative in the SR and of the ORU's OBX lines.
    report_languages: Literal["en", "zh", "both"] = "both"
    institution_name: str = "medrega-pacs hospital"

    # --- the EHR's FHIR server (optional): each sent version's DiagnosticReport is PUT there
    # (conditional update by identifier); None = no FHIR push (the read endpoint still serves).
    fhir_server_url: str | None = None  # base URL, e.g. https://ehr.example/fhir/r4
    fhir_server_token: SecretStr | None = None  # sent as "Authorization: Bearer …"
    fhir_timeout_s: float = Field(default=10.0, gt=0)

    # --- web ---
    web_host: str = "127.0.0.1"
    web_port: int = 8000
    secret_key: SecretStr | None = None

    # --- single sign-on (optional): OpenID Connect, authorization code + PKCE. The identity
    # provider names the user (oidc_username_claim); the account must exist here and be active.
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_username_claim: str = "preferred_username"
    oidc_scope: str = "openid profile"
    oidc_ca: Path | None = None  # the provider's TLS CA (None: the system's CAs)

    # --- model ---
    model_backend: Literal["onnx", "mllm"] = "onnx"
    model_path: Path = REPO_ROOT / "model" / "artifacts" / "medrega-ref.onnx"
    # ONNX Runtime providers in order of preference; a GPU worker lists TensorRT/CUDA first.
    model_providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["CPUExecutionProvider"]
    )
    model_require_gpu: bool = False
    model_cache_dir: Path = REPO_ROOT / "var" / "model-cache"

    # --- mllm backend: a served MedRegA (or our medrega_server) behind an OpenAI-compatible API
    mllm_base_url: str = "http://127.0.0.1:8012/v1"
    mllm_model: str = "medrega-ref"
    mllm_model_version: str = "served"  # recorded in the SR's algorithm identification
    mllm_api_key: SecretStr | None = None
    # MedRegA writes boxes on a 0..999 grid; some fine-tunes use 1000.
    mllm_coord_scale: int = Field(default=999, ge=1)
    # The language the model is asked to write in; the other comes from the vocabulary.
    mllm_language: Literal["en", "zh"] = "en"
    mllm_system_prompt: str | None = None  # None: MedRegA's own (medrega_prompts.SYSTEM_PROMPT)
    mllm_timeout_s: float = Field(default=120.0, gt=0)
    mllm_retries: int = Field(default=2, ge=0)  # per request, on timeouts / 5xx / 429
    mllm_concurrency: int = Field(default=4, ge=1)  # requests in flight per worker process
    mllm_max_tokens: int = Field(default=1024, ge=16)
    # CT/MR: at most this many slices of the main axial series are read (evenly spaced,
    # always including the central one); 0 = every slice.
    mllm_max_slices: int = Field(default=0, ge=0)
    # Longest side of the PNG sent to the model; 0 = source size (MedRegA resizes to 448).
    mllm_image_max_side: int = Field(default=0, ge=0)
    # Send `pixel_spacing_mm` (a body extension) so the server can state lesion sizes; our
    # medrega_server reads it, vLLM/lmdeploy ignore unknown fields.
    mllm_send_pixel_spacing: bool = False
    # Where the image goes in MedRegA's human turn: `<image>` for MedRegA's own `model.chat` and
    # vLLM, `<IMAGE_TOKEN>` for lmdeploy (see medrega_prompts).
    mllm_image_placeholder: str = "<image>"
    # What a draft asks (see the README's model-backend section): phrase grounding per region
    # group always; disease localisation per finding of the domain and one plain report
    # generation when enabled. At most `mllm_max_requests` requests per study: CT/MR slices are
    # thinned further until the plan fits.
    mllm_disease_prompts: bool = True
    mllm_report_generation: bool = True
    mllm_max_requests: int = Field(default=64, ge=1)

    # --- drafting when the model server is unreachable: durable backoff on the job row ---
    draft_retry_base_s: float = Field(default=30.0, gt=0)
    draft_retry_max_s: float = Field(default=900.0, gt=0)
    draft_max_attempts: int = Field(default=6, ge=1)
    # A draft worker that takes an X-ray job drafts up to this many waiting X-ray jobs in the
    # same model pass, and drafts waiting X-rays between a CT/MR series' slice batches
    # (services/worker/drafting.py); 1 turns both off.
    draft_xray_batch: int = Field(default=8, ge=1)
    # CPU priority a Celery worker process lowers itself to at start (os.nice; 0 leaves it):
    # e.g. 10 for a draft worker sharing CPU cores with the interactive worker.
    worker_nice: int = Field(default=0, ge=0, le=19)

    # --- several machines, no shared disk (shared/storage, services/listener/file_server.py) ---
    # This node's name: the rows its listener stores carry it, and other nodes fetch those files
    # from its file endpoint. None: a single box, every process reads storage_dir.
    node_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    # How the other nodes reach this node's file endpoint (registered in storage_nodes at start).
    node_read_url: str | None = None
    node_read_host: str = "127.0.0.1"
    node_read_port: int = 8043
    # One token shared by every node (a secrets file: medrega_node_read_token), >= 32 bytes.
    node_read_token: SecretStr | None = None
    node_read_timeout_s: float = Field(default=30.0, gt=0)
    # TLS for the file endpoint: its certificate and key (MEDREGA_NODE_READ_URL is then https://),
    # and the CA the other nodes verify it with (None: the system's CAs).
    node_read_tls_cert: Path | None = None
    node_read_tls_key: Path | None = None
    node_read_tls_ca: Path | None = None
    # Files fetched from other nodes: a size-bounded LRU cache on this machine's own disk.
    instance_cache_dir: Path = REPO_ROOT / "var" / "instance-cache"
    instance_cache_max_bytes: int = Field(default=4 * 1024**3, ge=1)

    # --- observability (shared.observability) ---
    # Log lines as text or JSON (one object a line, with the study's correlation id); unset:
    # JSON in production, text elsewhere.
    log_format: Literal["text", "json"] | None = None
    # Each process serves Prometheus /metrics on its own port (0: off); the web app serves it
    # on its own port. With PROMETHEUS_MULTIPROC_DIR set (Celery prefork, several listener
    # processes) the process that owns the port reports every child.
    metrics_host: str = "127.0.0.1"
    metrics_port_listener: int = Field(default=9111, ge=0, le=65535)
    metrics_port_draft_worker: int = Field(default=9112, ge=0, le=65535)
    metrics_port_interactive_worker: int = Field(default=9113, ge=0, le=65535)
    metrics_port_delivery_worker: int = Field(default=9114, ge=0, le=65535)
    metrics_port_relay: int = Field(default=9115, ge=0, le=65535)

    # --- local stack ---
    run_dir: Path = REPO_ROOT / "var"

    @field_validator(
        "listener_allowed_peers",
        "listener_allowed_aes",
        "model_providers",
        "pacs_objects",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return split_csv(value)

    @field_validator("listener_ae_title", "pacs_ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        if not 0 < len(value) <= 16 or "\\" in value:
            raise ValueError(f"AE title {value!r} must be 1-16 characters without backslash")
        return value

    @field_validator(
        "hl7_sending_application",
        "hl7_sending_facility",
        "hl7_receiving_application",
        "hl7_receiving_facility",
        "hl7_patient_id_authority",
        "hl7_accession_authority",
    )
    @classmethod
    def _hl7_hd(cls, value: str) -> str:
        from shared.hl7.oru_header import HierarchicDesignator  # shared.hl7 imports this module

        HierarchicDesignator.parse(value)  # a malformed value stops the start, naming itself
        return value.strip()

    @field_validator("hl7_default_procedure")
    @classmethod
    def _hl7_code(cls, value: str) -> str:
        from shared.hl7.oru_header import CodedElement

        CodedElement.parse(value)
        return value.strip()

    def oru_header(self) -> OruHeader:
        """The MEDREGA_HL7_* settings as the typed value the ORU builder takes."""
        from shared.hl7.oru_header import CodedElement, HierarchicDesignator, OruHeader

        hd = HierarchicDesignator.parse
        return OruHeader(
            sending_application=hd(self.hl7_sending_application),
            sending_facility=hd(self.hl7_sending_facility),
            receiving_application=hd(self.hl7_receiving_application),
            receiving_facility=hd(self.hl7_receiving_facility),
            patient_id_authority=hd(self.hl7_patient_id_authority),
            accession_authority=hd(self.hl7_accession_authority),
            default_procedure=CodedElement.parse(self.hl7_default_procedure),
            processing_id=self.hl7_processing_id,
        )

    @property
    def effective_log_format(self) -> Literal["text", "json"]:
        if self.log_format is not None:
            return self.log_format
        return "json" if self.environment == "production" else "text"

    @field_validator("pacs_objects")
    @classmethod
    def _pacs_objects(cls, value: list[str]) -> list[str]:
        wanted = [item.lower() for item in value]
        unknown = sorted(set(wanted) - set(PACS_OBJECTS))
        if unknown:
            raise ValueError(f"unknown PACS object(s) {unknown}; choose from {list(PACS_OBJECTS)}")
        return [kind for kind in PACS_OBJECTS if kind in wanted]

    @field_validator("listener_allowed_peers")
    @classmethod
    def _peers(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_peer(entry)  # a malformed entry stops the start, naming itself
        return value

    def listener_peer_rules(self) -> tuple[PeerRule, ...]:
        """MEDREGA_LISTENER_ALLOWED_PEERS, then each legacy ALLOWED_AES title as `AE@*`."""
        rules = [parse_peer(entry) for entry in self.listener_allowed_peers]
        rules += [PeerRule(ae.strip()) for ae in self.listener_allowed_aes if ae.strip()]
        return tuple(rules)

    @model_validator(mode="after")
    def _secrets_outside_development(self) -> Settings:
        if self.environment == "production":
            for name in ("secret_key", "pacs_http_password"):
                secret = getattr(self, name)
                if secret is None or secret.get_secret_value().lower() in PLACEHOLDER_SECRETS:
                    raise ValueError(
                        f"MEDREGA_{name.upper()} must be set to a real secret in production"
                    )
            key = self.secret_key.get_secret_value().encode() if self.secret_key else b""
            if len(key) < MIN_SECRET_KEY_BYTES:
                # HMAC-SHA256 keys signing every session: at least as long as the hash.
                raise ValueError(
                    f"MEDREGA_SECRET_KEY must be at least {MIN_SECRET_KEY_BYTES} bytes in "
                    "production (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
                )
        for prefix in ("listener", "pacs", "ris", "orthanc", "node_read"):
            if (getattr(self, f"{prefix}_tls_cert") is None) != (
                getattr(self, f"{prefix}_tls_key") is None
            ):
                raise ValueError(f"MEDREGA_{prefix.upper()}_TLS_CERT and _KEY must be set together")
        if (self.oidc_issuer is None) != (self.oidc_client_id is None):
            raise ValueError("MEDREGA_OIDC_ISSUER and _CLIENT_ID must be set together")
        if self.orthanc_tls_cert is not None and self.orthanc_tls_ca is None:
            raise ValueError(
                "MEDREGA_ORTHANC_TLS_CERT needs MEDREGA_ORTHANC_TLS_CA (whom it trusts)"
            )
        if self.listener_tls_ca is None and any(
            parse_peer(entry).cert_cn for entry in self.listener_allowed_peers
        ):
            raise ValueError(
                "an allowed peer named by certificate (AE@cn=…) needs MEDREGA_LISTENER_TLS_CA: "
                "without it no client certificate is asked for"
            )
        return self

    @model_validator(mode="after")
    def _passwords_into_urls(self) -> Settings:
        if self.database_password is not None:
            url = make_url(self.database_url).set(
                password=self.database_password.get_secret_value()
            )
            self.database_url = url.render_as_string(hide_password=False)
        if self.broker_password is not None:
            self.broker_url = _with_password(self.broker_url, self.broker_password)
        return self

    def secret(self, name: Literal["secret_key", "pacs_http_password"]) -> str:
        """A secret's value; development falls back to a fixed, obviously-local value."""
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            return value.get_secret_value()
        if self.environment == "production":  # unreachable: the validator refuses it
            raise RuntimeError(f"{name} is not set")
        return "medrega-development-only"


def _with_password(url: str, password: SecretStr) -> str:
    """`url` with its user's password replaced (amqp://user@host → amqp://user:pw@host)."""
    parts = urlsplit(url)
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"{user}:{quote(password.get_secret_value(), safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def secrets_dir() -> Path | None:
    """MEDREGA_SECRETS_DIR: where one file per secret lives (Compose mounts them at /run/secrets)."""
    value = os.environ.get("MEDREGA_SECRETS_DIR")
    if not value:
        return None
    path = Path(value)
    if not path.is_dir():
        raise ValueError(f"MEDREGA_SECRETS_DIR={value} is not a directory")
    return path


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    # pydantic-settings takes the directory at construction (its init keyword is untyped).
    return Settings(_secrets_dir=secrets_dir())  # type: ignore[call-arg]
