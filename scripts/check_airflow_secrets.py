"""Refuse to start an Airflow stack whose secrets are placeholders or unusable, with one clear message.

Run by docker-compose's airflow-init and by scripts/stack.sh before anything is migrated or started.
Reads the Airflow variables from the environment; the message names the .env variable to fix.
Standard library and ``cryptography`` only (both the apache/airflow image and the venvs have them).
"""

from __future__ import annotations

import os
import sys

# Airflow variable -> the .env.example name that fills it.
SECRETS = {
    "AIRFLOW__CORE__FERNET_KEY": "AIRFLOW_FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET": "AIRFLOW_JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY": "AIRFLOW_API_SECRET_KEY",
}
PLACEHOLDERS = {"", "change-me", "changeme"}
# Airflow signs task tokens with HS512, whose key should be at least its 64-byte block size.
MIN_JWT_SECRET_BYTES = 64
MIN_API_SECRET_BYTES = 32


def problems(env: dict[str, str]) -> list[str]:
    found = []
    for variable, env_name in SECRETS.items():
        value = env.get(variable, "")
        if value.strip().lower() in PLACEHOLDERS:
            found.append(f"{env_name} ({variable}) is {value or 'empty'!r}: set a real secret in .env")
    fernet = env.get("AIRFLOW__CORE__FERNET_KEY", "")
    if fernet.strip().lower() not in PLACEHOLDERS:
        from cryptography.fernet import Fernet

        try:
            Fernet(fernet.encode())
        except ValueError as error:
            found.append(
                f"AIRFLOW_FERNET_KEY is not a Fernet key ({error}); generate one with: python -c "
                '"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
            )
    jwt = env.get("AIRFLOW__API_AUTH__JWT_SECRET", "")
    if jwt.strip().lower() not in PLACEHOLDERS and len(jwt.encode()) < MIN_JWT_SECRET_BYTES:
        found.append(
            f"AIRFLOW_JWT_SECRET has {len(jwt.encode())} bytes; HS512 task tokens want >= {MIN_JWT_SECRET_BYTES}: "
            "python -c \"import secrets; print(secrets.token_urlsafe(64))\""
        )
    api = env.get("AIRFLOW__API__SECRET_KEY", "")
    if api.strip().lower() not in PLACEHOLDERS and len(api.encode()) < MIN_API_SECRET_BYTES:
        found.append(f"AIRFLOW_API_SECRET_KEY has {len(api.encode())} bytes; use >= {MIN_API_SECRET_BYTES}")
    return found


def main() -> int:
    found = problems(dict(os.environ))
    for problem in found:
        print(f"airflow secrets: {problem}", file=sys.stderr)
    if found:
        print("airflow secrets: refusing to start (see .env.example)", file=sys.stderr)
        return 1
    print("airflow secrets: Fernet key, JWT secret and API secret key are set and valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
