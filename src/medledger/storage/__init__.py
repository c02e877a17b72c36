"""Off-chain content: encrypted chunks, erasure-coded into shards across institutions.

``erasure`` codes stripes of encrypted chunks into k data + m parity shards;
``manifest`` describes a stored record; ``backend`` keeps an institution's shards
(a local directory, or S3 in ``s3backend``); ``shards`` is an institution's shard
service; ``coordinator`` spreads an upload over the services and reads it back;
``audit`` derives the storage challenges from a block hash.
"""
