"""A throwaway PostgreSQL on a free loopback port, for the tests and scripts/fleet-sim.sh.

Debian's `postgresql` package (scripts/fleet-setup.sh installs it) ships initdb and pg_ctl under
/usr/lib/postgresql/<version>/bin. PostgreSQL refuses to run as root: when we are root, the server runs as an
unprivileged user (`nobody`, or $EMOTION_EDGE_PG_USER) through runuser.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..devbroker import free_port, wait_for_port
from ..errors import UserError


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


class LocalPostgres:
    """`start()` a private cluster; `admin_dsn` is its superuser; `stop()`/`start()` keep the data, `close()` ends."""

    def __init__(self, port: int | None = None, folder: Path | None = None) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise UserError("PostgreSQL is not installed: run scripts/fleet-setup.sh (apt-get install postgresql)")
        self.bindir = bindir
        self.port = port or free_port()
        self._tmp = None if folder else tempfile.TemporaryDirectory(prefix="emotion-edge-pg-")
        self.dir = Path(folder or self._tmp.name)  # type: ignore[union-attr]
        self.data = self.dir / "data"
        self.password = secrets.token_hex(12)
        self.user = None
        if os.geteuid() == 0:
            self.user = os.environ.get("EMOTION_EDGE_PG_USER", "nobody")
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.dir.chmod(0o700)
        self._initdb()

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname=postgres user=postgres password={self.password}"

    def dsn(self, user: str, dbname: str = "postgres") -> str:
        """For another role (its password goes separately)."""
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    def _as_owner(self, *cmd: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *cmd] if self.user else list(cmd)

    def _run(self, *cmd: str) -> None:
        proc = subprocess.run(self._as_owner(*cmd), capture_output=True, text=True, cwd=self.dir)
        if proc.returncode:
            raise UserError(f"{Path(cmd[0]).name} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")

    def _initdb(self) -> None:
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password)
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", f"--pwfile={pwfile}",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")  # fmt: skip
        pwfile.unlink()
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.dir}'\n"
                "max_connections = 50\nshared_buffers = 32MB\n"
            )

    def start(self) -> LocalPostgres:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w",
                  "-t", "30", "start")  # fmt: skip
        if not wait_for_port(self.port):
            raise UserError(f"PostgreSQL did not listen on {self.port}; see {self.dir / 'server.log'}")
        return self

    def stop(self, mode: str = "fast") -> None:
        """`fast`: a clean shutdown; `immediate`: as if the power went (recovery at the next start)."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
