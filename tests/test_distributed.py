"""``batchnorm.distributed`` in one process: local moments and Chan et al.'s merge against the
moments of the concatenated data in float64 (the multi-process SyncBN tests are in test_sync)."""
