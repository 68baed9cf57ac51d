"""Stage 1 of the flow, the data cache: the shard format (shards), the cache's manifest and
fingerprint (cache), the cheap per-run shard check (shardstate), the trainer's per-run view
(dataview), caches built from local documents (corpus) or generated offline (synth), and
`just bootstrap` (bootstrap). Imports nothing from the later stages."""
