"""Runtime settings (tracking URI, ports, tokens) from environment variables, in one pydantic-settings class.

Values in params.yaml describe the model and its gates; values here describe where things run. Secrets that look
like placeholders are refused, so a server never starts with a token copied from an example.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Words that mark a value copied from an example, found anywhere in it ("your-admin-token-here"); each is long
# enough that a random token (secrets.token_urlsafe) practically never contains one. Bare placeholders ("secret",
# "changeme", "xxx") are all shorter than MIN_SECRET_LENGTH.
PLACEHOLDER_MARKERS = frozenset(
    [
        "changethis",
        "changeme",
        "change-me",
        "change_me",
        "placeholder",
        "example",
        "your-",
        "your_",
        "-here",
        "_here",
        "replaceme",
        "replace-me",
        "replace_me",
        "dummy",
    ]
)
MIN_SECRET_LENGTH = 16
MIN_DISTINCT_CHARACTERS = 5  # "xxxxxxxxxxxxxxxx" or "abababab..." is long enough but no secret


def check_secret(name: str, value: SecretStr | None) -> SecretStr | None:
    """Refuse placeholder or short secrets; None (unset) is allowed and means the feature is off."""
    if value is None:
        return None
    raw = value.get_secret_value()
    if any(c.isspace() or not c.isprintable() for c in raw):
        # a trailing newline from a secret file: HTTP clients refuse the header and quote it, key included, in
        # their error, which would reach logs and the audit trail
        raise ValueError(f"{name} contains whitespace or control characters (a trailing newline?); strip it")
    if looks_like_placeholder(raw):
        raise ValueError(
            f"{name} is a placeholder, shorter than {MIN_SECRET_LENGTH} characters or made of fewer than "
            f"{MIN_DISTINCT_CHARACTERS} distinct characters; set a real random value, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return value


def looks_like_placeholder(raw: str) -> bool:
    """True for a value no one should use as a secret: too short, a known placeholder, an example's wording
    ("your-api-key-here"), or too few distinct characters."""
    lowered = raw.lower()
    return (
        len(raw) < MIN_SECRET_LENGTH
        or any(marker in lowered for marker in PLACEHOLDER_MARKERS)
        or len(set(raw)) < MIN_DISTINCT_CHARACTERS
    )


class Settings(BaseSettings):
    """Where things run. Every field can be set as MLRELEASE_<FIELD> (MLFLOW_TRACKING_URI is read as is)."""

    model_config = SettingsConfigDict(env_prefix="MLRELEASE_", extra="ignore", frozen=True)

    home: Path = Field(default_factory=Path.cwd, description="Workspace root: registry, state and reports live here")
    mlflow_tracking_uri: str | None = Field(
        default=None, validation_alias="MLFLOW_TRACKING_URI", description="Team MLflow server; default: sqlite"
    )
    target: str = Field("local", description="Deployment target kind (deploy.targets.make_target); default: local")

    # serving
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    torch_threads: int = Field(1, ge=1)
    api_key: SecretStr | None = None
    admin_token: SecretStr | None = None
    enable_admin: bool = False
    max_batch_size: int = Field(256, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    rate_limit_per_second: float = Field(0.0, ge=0, description="Per-client requests/s; 0 disables")
    rate_limit_burst: int = Field(100, ge=1)
    trusted_proxies: str = Field(
        "",
        description="Peers whose X-Forwarded-For names the client (comma-separated addresses); empty: no one, the "
        "rate limit keys on the connecting address",
    )
    protect_metadata: bool = Field(
        False, description="With an API key set, /metrics and /openapi.json require it too (default: open for scrapes)"
    )
    drift_window: int = Field(1000, ge=10)

    @field_validator("api_key", "admin_token")
    @classmethod
    def _no_placeholder(cls, value: SecretStr | None, info: object) -> SecretStr | None:
        return check_secret(getattr(info, "field_name", "secret"), value)

    @model_validator(mode="after")
    def _admin_needs_token(self) -> Settings:
        if self.enable_admin and self.admin_token is None:
            raise ValueError("MLRELEASE_ENABLE_ADMIN is on but MLRELEASE_ADMIN_TOKEN is not set")
        return self

    def prediction_headers(self) -> dict[str, str]:
        """What our own clients (smoke test, load gate, canary load, verification) send to servers started with
        these settings: the API key when prediction auth is on, so promotion works with it on."""
        if self.api_key is None:
            return {}
        return {"Authorization": f"Bearer {self.api_key.get_secret_value()}"}

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking and registry URI: the team server if set, else a sqlite file in the workspace."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.home / 'mlruns' / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        """Local artifact folder used with the embedded sqlite registry."""
        return (self.home / "mlruns" / "artifacts").resolve()

    @property
    def state_dir(self) -> Path:
        """Runtime state of local deployments (ports, pids, weights, audit log, locks)."""
        return (self.home / ".mlrelease").resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process from the environment."""
    return Settings()
