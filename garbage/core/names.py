"""Names every part shares, defined once and importable without any dependency."""

#: The model's name: in the registry, on the wire, as the InferenceService and in its metadata.
MODEL_NAME = "garbage-classifier"
#: TrashNet's classes: the default of ``data.classes``. Everything downstream of training reads
#: the classes from the model's own metadata instead.
TRASHNET_CLASSES = ("cardboard", "glass", "metal", "paper", "plastic", "trash")
