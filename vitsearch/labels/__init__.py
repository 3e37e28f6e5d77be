"""Labels: finding photos by the model's labels and by the kinds of thing they are (``search``,
over the WordNet ancestors of the ImageNet classes in ``hierarchy``), and your own labels: the
taught-label classifier (numpy only, which the indexer applies) and ``teach``, which trains it
from a folder of examples."""
