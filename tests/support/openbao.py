"""The OpenBao test servers live in ``fedcare.sandbox.openbao`` (the demo and benchmarks use them too)."""

from fedcare.sandbox.openbao import (INSTALL_HINT, BaoMissing, DevServer, FileServer, bao_binary,  # noqa: F401
                                     dev_server, file_server, free_port)
