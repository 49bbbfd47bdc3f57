"""The worker side of the service: what runs on an endpoint's workers around the pure detector.

:mod:`.record` holds the tile record (:class:`~mhd.functions.worker.record.TileRecord`) that the
worker returns and the client judges, records and reports. Nothing here imports the client, and
importing this package imports no array library beyond NumPy.
"""
