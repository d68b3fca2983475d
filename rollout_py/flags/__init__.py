"""Feature flags in flagd's flag definition format: the model and validation (model.py) and
pure edits (edit.py). Writing the file to hosts is not here."""
