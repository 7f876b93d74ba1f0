"""One frozen configuration, read once from the environment (HOUSE_RULES rule 5)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ROLES = ("admin", "operator", "annotator", "client")


def _int(env: dict, name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"configuration error: {name} must be an integer, got {raw!r}") from None


def _names(env: dict, name: str) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped."""
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


@dataclass(frozen=True)
class Config:
    """Everything the services need to know about their surroundings.

    Attributes:
        data_dir: where the catalog, datasets, objects, checkpoints and uploads live.
        redis_url: a Redis to use; None means the launcher starts the embedded one.
        jwt_secret_key: None means generated once and kept in ``data_dir/jwt_secret.key`` (mode 0600).
        job_modules: extra modules whose job kinds the workers may run (``JOB_MODULES``, comma-separated).
    """

    data_dir: Path = REPO_ROOT
    redis_url: str | None = None
    redis_port: int = 6390
    api_host: str = "127.0.0.1"
    api_port: int = 5000
    ui_port: int = 8501
    jwt_secret_key: str | None = field(default=None, repr=False)
    token_minutes: int = 30
    max_upload_mb: int = 32
    max_dataset_mb: int = 4096
    max_zip_entries: int = 500_000  # entries an uploaded zip may declare; more are refused before the import job
    max_image_pixels: int = 50_000_000
    workers: int = 1
    queue_name: str = "studio"
    job_modules: tuple[str, ...] = ()
    # Sign-in throttle (services/app/sign_in.py): wrong passwords let by before waits that double from 1 s.
    sign_in_free_failures: int = 5  # from one address for one account (typos)
    sign_in_address_free_failures: int = 50  # from one address over all accounts (one password, many names)
    sign_in_account_free_failures: int = 20  # for one account from the addresses it does not know
    sign_in_max_wait_seconds: int = 900  # the longest wait (the doubling stops there)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed on Socket.IO; () means the UI's own
    max_active_jobs_per_user: int = 20  # queued + running jobs one non-admin may have
    heavy_requests: int = 4  # image-decoding requests served at once; more wait briefly, then 503
    image_budget_mb: int = 256  # decoded pixels of one image: width x height x channels x bytes per sample
    max_sample_epochs: int = 50_000_000  # epochs x training images of one non-admin run
    suggest_retrain_every: int = 20  # newly saved labels before the suggestion head retrains; 0: never

    @classmethod
    def from_env(cls, env: dict | None = None) -> Config:
        """Build the configuration from environment variables (see the README's table)."""
        env = dict(os.environ if env is None else env)
        return cls(
            data_dir=Path(env.get("DATA_DIR") or REPO_ROOT).resolve(),
            redis_url=env.get("REDIS_URL") or None,
            redis_port=_int(env, "REDIS_PORT", 6390),
            api_host=env.get("API_HOST") or "127.0.0.1",
            api_port=_int(env, "API_PORT", 5000),
            ui_port=_int(env, "UI_PORT", 8501),
            jwt_secret_key=env.get("JWT_SECRET_KEY") or None,
            token_minutes=_int(env, "TOKEN_MINUTES", 30),
            max_upload_mb=_int(env, "MAX_UPLOAD_MB", 32),
            max_dataset_mb=_int(env, "MAX_DATASET_MB", 4096),
            max_zip_entries=_int(env, "MAX_ZIP_ENTRIES", 500_000),
            max_image_pixels=_int(env, "MAX_IMAGE_PIXELS", 50_000_000),
            workers=_int(env, "WORKERS", 1),
            job_modules=_names(env, "JOB_MODULES"),
            sign_in_free_failures=_int(env, "SIGN_IN_FREE_FAILURES", 5),
            sign_in_address_free_failures=_int(env, "SIGN_IN_ADDRESS_FREE_FAILURES", 50),
            sign_in_account_free_failures=_int(env, "SIGN_IN_ACCOUNT_FREE_FAILURES", 20),
            sign_in_max_wait_seconds=_int(env, "SIGN_IN_MAX_WAIT_SECONDS", 900),
            cors_origins=_names(env, "CORS_ORIGINS"),
            max_active_jobs_per_user=_int(env, "MAX_ACTIVE_JOBS_PER_USER", 20),
            heavy_requests=_int(env, "HEAVY_REQUESTS", 4),
            image_budget_mb=_int(env, "IMAGE_BUDGET_MB", 256),
            max_sample_epochs=_int(env, "MAX_SAMPLE_EPOCHS", 50_000_000),
            suggest_retrain_every=_int(env, "SUGGEST_RETRAIN_EVERY", 20),
        )

    @property
    def effective_redis_url(self) -> str:
        """The Redis every part talks to: REDIS_URL, else the embedded server's address with its password."""
        if self.redis_url:
            return self.redis_url
        return f"redis://:{self.redis_password()}@127.0.0.1:{self.redis_port}/0"

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    @property
    def allowed_origins(self) -> list[str]:
        """Browser origins that may open a Socket.IO connection: CORS_ORIGINS, else the UI's and the API's."""
        if self.cors_origins:
            return list(self.cors_origins)
        hosts = {self.api_host, "127.0.0.1", "localhost"}
        return sorted({f"http://{h}:{p}" for h in hosts for p in (self.ui_port, self.api_port)})

    def path(self, *parts: str) -> Path:
        """A path under ``data_dir`` (folders are created by :func:`ensure_dirs`)."""
        return self.data_dir.joinpath(*parts)

    @property
    def shipped_bgs_dir(self) -> Path:
        """Backgrounds that ship with the project (``bgs/`` in the repository)."""
        return REPO_ROOT / "bgs"

    @property
    def user_bgs_dir(self) -> Path:
        """Backgrounds users add (``DATA_DIR/bgs/user``)."""
        return self.path("bgs", "user")

    def ensure_dirs(self) -> None:
        """Create the folders of ``data_dir`` that the services write to."""
        for sub in ("datasets", "objects", "checkpoints", "uploads", "exports", "redis", "logs",
                    "newdata/images", "newdata/labels", "bgs/user/train", "bgs/user/test"):
            self.path(sub).mkdir(parents=True, exist_ok=True)

    def secret_key(self) -> str:
        """The JWT signing key: JWT_SECRET_KEY, else one generated once and kept owner-only."""
        if self.jwt_secret_key:
            return self.jwt_secret_key
        return _owner_only_secret(self.path("jwt_secret.key"), 48)

    def redis_password(self) -> str:
        """The embedded Redis's password, generated once and kept owner-only in ``redis_password.key``."""
        # URL-safe and without '@', ':' or '/', so it can sit in a redis:// URL unquoted.
        return _owner_only_secret(self.path("redis_password.key"), 32)


def _owner_only_secret(key_file: Path, nbytes: int) -> str:
    """Read a secret file, creating it (mode 0600) first if absent; processes racing to create it agree."""
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = key_file.with_name(f"{key_file.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(nbytes))
        try:
            os.link(tmp, key_file)  # fails if another process got there first: its secret wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    os.chmod(key_file, 0o600)
    return key_file.read_text().strip()
