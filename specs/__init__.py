"""The wire dialects as data, the codec compiled from them, framing and the transaction catalogue.

Start at ``specs/README.md``: ``specs.codec.codec_for``, ``specs.framing``, ``specs.catalogue``.
"""
