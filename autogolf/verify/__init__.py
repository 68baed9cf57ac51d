"""What the harness vouches for, stage by stage of a run:

  shardstate  before the trainer: every shard is the one the cache manifest promises
              (size + mtime + inode recorded; a full sha256 only when one of them changed)
  dataview    the trainer's view of the data: train shards and only the profile's
              selection slice of validation (the holdout and the rest are not in it)
  bytecount   the harness's own byte table for bits per byte, built from the tokenizer
  score       after the trainer: the artifact scored in a separate process with the
              harness's own code, a causality probe, and the hidden holdout
"""
