"""nginx in front of gateway replicas on loopback, configured as deploy/nginx.conf is.

The deployment's own file is the source: the replicas' names become loopback ports, the
listening port a free one, and the paths nginx writes to a folder of the run's. Used by the
benchmark's scale-out phase and by tests/test_deploy_replicas.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPLOYED = REPO / "deploy" / "nginx.conf"
_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def available() -> str | None:
    """The nginx binary, or None."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


def config(ports: Sequence[int], listen: int, folder: Path) -> str:
    """deploy/nginx.conf for two replicas on ``ports``, listening on ``listen``."""
    first, second = ports
    text = DEPLOYED.read_text(encoding="utf-8")
    text = text.replace("server ki2api-1:8989", f"server 127.0.0.1:{first}")
    text = text.replace("server ki2api-2:8989", f"server 127.0.0.1:{second}")
    text = text.replace("listen 8989;", f"listen 127.0.0.1:{listen};")
    temp = "".join(f"    {name}_temp_path {folder / name};\n" for name in _TEMP_DIRS)
    return text.replace("http {\n", "http {\n    access_log off;\n" + temp, 1)


def argv(binary: str, ports: Sequence[int], listen: int, folder: Path) -> list[str]:
    """Write the config into ``folder``; the command that runs nginx in the foreground."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in _TEMP_DIRS:
        (folder / name).mkdir(exist_ok=True)
        (folder / name).chmod(0o777)  # workers may run as another user when started as root
    conf = folder / "nginx.conf"
    conf.write_text(config(ports, listen, folder), encoding="utf-8")
    directives = f"daemon off; pid {folder / 'nginx.pid'}; error_log {folder / 'error.log'} warn;"
    return [binary, "-p", str(folder), "-c", str(conf), "-g", directives]
