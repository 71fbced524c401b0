#!/usr/bin/env python3
"""What scripts/check-k8s.sh needs to run the gateway of a rendered
overlay.

    k8s_gateway.py toml RENDERED.yaml   the gateway.toml of the overlay's
                                        ConfigMap, on stdout
    k8s_gateway.py has-libseccomp       exit 0 when libseccomp is there
    k8s_gateway.py free-port            a TCP port free on 127.0.0.1 now
    k8s_gateway.py argv-json ARG...     the arguments as a JSON array (the
                                        command deploy/checks/seccomp.py
                                        runs, SECCOMP_EXEC)
"""

import ctypes.util
import json
import socket
import sys


def toml(rendered):
    import yaml  # PyYAML: check-k8s.sh installs it

    for doc in yaml.safe_load_all(open(rendered)):
        if doc and doc["kind"] == "ConfigMap" and "gateway.toml" in doc.get("data", {}):
            sys.stdout.write(doc["data"]["gateway.toml"])


def has_libseccomp():
    sys.exit(not ctypes.util.find_library("seccomp"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])


def argv_json(*args):
    print(json.dumps(args))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"toml": toml, "has-libseccomp": has_libseccomp, "free-port": free_port, "argv-json": argv_json}[command](*args)
