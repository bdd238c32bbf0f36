"""Names every part shares, defined once and importable without any dependency."""

from typing import Literal, get_args

#: The model's name: in the registry, on the wire, as the InferenceService and in its metadata.
MODEL_NAME = "garbage-classifier"
#: TrashNet's classes: the default of ``data.classes``. Everything downstream of training reads
#: the classes from the model's own metadata instead.
TRASHNET_CLASSES = ("cardboard", "glass", "metal", "paper", "plastic", "trash")
#: How ``garbage review`` picked an image for labelling; the label carries it to the store and
#: into the dataset versions. ``random`` picks, a uniform draw from the traffic, estimate live
#: accuracy without bias and make a site's test slice; ``uncertain`` ones teach the model most
#: and are trained on.
Selection = Literal["uncertain", "random"]
SELECTION_UNCERTAIN: Selection = "uncertain"
SELECTION_RANDOM: Selection = "random"
SELECTIONS: tuple[Selection, ...] = get_args(Selection)
