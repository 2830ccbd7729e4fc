"""fedcare training workloads: a Flower App for ultrasound image classification.

The package is importable without torch or flwr side effects; heavy imports
(torch, opacus, pydicom) happen inside the modules that need them so that a
`flwr-clientapp` process, which is started anew for every message, only pays
for what the message needs.
"""

__version__ = "0.1.0"

DEFAULT_CLASSES = ("normal", "benign", "malignant")
