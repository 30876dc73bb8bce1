# The store fixtures (a migrated store on each backend, with a hand-moved clock).
from membership_pipeline_tests.storage.conftest import clock, store, store_url

__all__ = ["clock", "store", "store_url"]
