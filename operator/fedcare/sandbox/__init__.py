"""The one-machine sandbox: an emulated Kubernetes API for tests and ``make demo``.

``emulator.fedcare_emulator()`` runs kmock's emulator with our realism layer and the fedcare
resources registered; ``server.serve()`` runs it standalone and writes a kubeconfig for it.
"""
