"""Hub controllers: one kopf module per kind, thin; logic in services beside them."""
