"""`just bootstrap` (`python -m autogolf.data.bootstrap`, see cli.py): upstream parameter-golf at
the pinned commit and its sp1024 data cache, in four phases: fetch (git and the data host),
verify, place; common holds what they share."""
