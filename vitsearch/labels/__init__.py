"""Your own labels: the taught-label classifier (numpy only, which the indexer applies) and
``teach``, which trains it from a folder of examples."""
