"""Stand-in for ansible-test's downloaded get-pip bootstrap script.

ansible-test creates pip-less virtualenvs and fetches get-pip.py from a host this machine cannot
reach.  This script does the same job with what Python ships: ``ensurepip`` puts the bundled pip
in the venv, then pip installs the packages ansible-test asked for (from PyPI, which is reachable).
"""

import ensurepip
import os
import subprocess
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}


def main() -> int:
    ensurepip.bootstrap(upgrade=True)
    args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
    # ansible-test runs this with a trimmed environment; keep the machine's CA bundle for PyPI.
    for bundle in (os.environ.get("PIP_CERT"), "/etc/ssl/certs/ca-certificates.crt"):
        if bundle and os.path.exists(bundle):
            args = ["--cert", bundle] + args
            break
    return subprocess.call([sys.executable, "-m", "pip", "install"] + args)


if __name__ == "__main__":
    sys.exit(main())
