"""Front ends: the CLI, infer, serve and its page, watch, batch, the DICOM node, the ledger, verify."""
